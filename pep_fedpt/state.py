"""The prompted model's trainable state <-> named numpy arrays (the wire format)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from pep_fedpt.models.prompted_vit import PromptedViT
from strategies import wire


def trainable_arrays(model: PromptedViT) -> dict[str, np.ndarray]:
    """What the client sends and the server aggregates, under the wire names."""
    arrays: dict[str, np.ndarray] = {}
    if model.shared_length:
        arrays[wire.SHARED_PROMPT] = _numpy(model.shared_prompt)
    if model.group_keys is not None:
        for i, block in enumerate(model.ccmp_blocks):
            arrays[wire.group_prompt_key(block)] = _numpy(model.class_prompts[i])
        arrays[wire.GROUP_KEYS] = _numpy(model.group_keys)
    elif model.class_length and model.class_conditioned:
        for i, block in enumerate(model.ccmp_blocks):
            arrays[wire.class_prompt_key(block)] = _numpy(model.class_prompts[i])
    elif model.class_length:
        if model.num_prompt_sets != 1:
            raise ValueError(
                f"{model.num_prompt_sets} prompt sets that are not classes have no wire names"
            )
        for i, block in enumerate(model.ccmp_blocks):
            arrays[wire.deep_prompt_key(block)] = _numpy(model.class_prompts[i, 0])
    arrays[wire.HEAD_WEIGHT] = _numpy(model.head.weight)
    arrays[wire.HEAD_BIAS] = _numpy(model.head.bias)
    return arrays


def load_trainable_arrays(model: PromptedViT, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy received arrays into the model; a missing key or shape is an error."""
    expected = trainable_arrays(model)
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise KeyError(f"received state lacks {missing}; it has {sorted(arrays)}")
    with torch.no_grad():
        for key, current in expected.items():
            value = np.asarray(arrays[key])
            if value.shape != current.shape:
                raise ValueError(f"{key}: received shape {value.shape}, model has {current.shape}")
            target = _parameter(model, key)
            target.copy_(torch.from_numpy(value).to(target.device, target.dtype))


def _parameter(model: PromptedViT, key: str) -> torch.Tensor:
    if key == wire.SHARED_PROMPT:
        return model.shared_prompt
    if key == wire.HEAD_WEIGHT:
        return model.head.weight
    if key == wire.HEAD_BIAS:
        return model.head.bias
    if key == wire.GROUP_KEYS and model.group_keys is not None:
        return model.group_keys
    if key.startswith(wire.GROUP_PROMPT_PREFIX):
        block = int(key.removeprefix(wire.GROUP_PROMPT_PREFIX)) - 1
        return model.class_prompts[model.ccmp_blocks.index(block)]
    if key.startswith(wire.DEEP_PROMPT_PREFIX):
        block = int(key.removeprefix(wire.DEEP_PROMPT_PREFIX)) - 1
        return model.class_prompts[model.ccmp_blocks.index(block), 0]
    block = int(key.removeprefix(wire.CLASS_PROMPT_PREFIX)) - 1
    return model.class_prompts[model.ccmp_blocks.index(block)]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy().copy()
