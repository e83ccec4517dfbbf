"""What a CLIP method costs a GPU user (issue 20, point 7): FedMVP's and PromptFL's clients
train in ``train.precision`` and read their images in ``data.num-workers`` processes from
the pixel cache, as the PromptedViT methods do; the server's Base/New sets too. The tiny
seeded CLIP on a fake image folder: the numbers mean nothing, the paths do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data import fake_image_tree

from pep_fedpt.config import RunConfig
from pep_fedpt.data.pixel_cache import CachedSubset
from pep_fedpt.methods.fedmvp import FedMVPClient, FedMVPServer, fedmvp_initial_arrays
from pep_fedpt.methods.promptfl import PromptFLClient
from pep_fedpt.methods.registry import get_method

pytestmark = pytest.mark.integration  # tiny CLIPs trained for a round, several times


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clip-folder")
    fake_image_tree(root, classes=10, train=6, test=2)
    return root


def config(folder: Path, cache: Path, method: str = "fedmvp", **keys: object) -> RunConfig:
    flat = RunConfig().to_flat() | {
        "method": method,
        "data.dataset": "imagefolder",
        "data.data-dir": str(folder),
        "cache-dir": str(cache),
        "fedmvp.classes-per-client": 2,
        "fedmvp.shots": 3,
        "fedmvp.plain-template": True,
        "train.batch-size": 2,
    }
    return RunConfig.from_flat(flat | keys)


def items(dataset: torch.utils.data.Dataset) -> list[tuple[torch.Tensor, int]]:
    return [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]  # torch's Dataset declares no __len__; every dataset here has one


def test_fedmvp_splits_come_from_the_pixel_cache_bit_for_bit(folder: Path, tmp_path: Path) -> None:
    cached = FedMVPClient(config(folder, tmp_path), 0, 2, tmp_path)
    plain = FedMVPClient(config(folder, tmp_path, **{"data.pixel-cache": False}), 0, 2, tmp_path)
    for split in ("train", "test"):
        subset, reference = getattr(cached.data, split), getattr(plain.data, split)
        assert isinstance(subset, CachedSubset) and not isinstance(reference, CachedSubset)
        assert subset.classes == reference.classes
        np.testing.assert_array_equal(subset.indices, reference.indices)
        np.testing.assert_array_equal(subset.targets, reference.targets)  # bank positions
        for (a, y), (b, z) in zip(items(subset), items(reference), strict=True):
            assert torch.equal(a, b) and y == z
        assert subset.store.path(subset.key).parent == tmp_path  # the node's cache folder
        assert subset.store.path(subset.key).is_file()
    # A fresh client (a new process in deployment) reads the pixels back from the file.
    again = FedMVPClient(config(folder, tmp_path), 0, 2, tmp_path)
    assert torch.equal(again.data.train.prepare(), cached.data.train.prepare())

    cfg = config(folder, tmp_path)
    server = FedMVPServer(get_method("fedmvp"), cfg, torch.device("cpu"))
    assert set(server.sets) == {"base", "new"}
    assert all(isinstance(subset, CachedSubset) for subset in server.sets.values())


def test_data_num_workers_reaches_every_clip_split_and_changes_nothing(
    folder: Path, tmp_path: Path
) -> None:
    none = FedMVPClient(config(folder, tmp_path), 1, 2, tmp_path)
    two = FedMVPClient(config(folder, tmp_path, **{"data.num-workers": 2}), 1, 2, tmp_path)
    assert none.data.train.loader_workers == 0
    assert two.data.train.loader_workers == two.data.test.loader_workers == 2
    arrays = fedmvp_initial_arrays(none.cfg, none.bundle)
    trained_none, _ = none.train(arrays, False, 1)
    trained_two, _ = two.train(arrays, False, 1)
    for key, value in trained_none.items():
        np.testing.assert_array_equal(trained_two[key], value, err_msg=key)


@pytest.mark.parametrize("client_type", [FedMVPClient, PromptFLClient], ids=["fedmvp", "promptfl"])
def test_clip_training_honours_train_precision(
    client_type: type[FedMVPClient], folder: Path, tmp_path: Path
) -> None:
    """On the CPU "auto" trains exactly as fp32; bf16 autocast changes the update a little
    (8 bits of mantissa in every matmul), not by its size; the reply stays float32."""
    method = "fedmvp" if client_type is FedMVPClient else "promptfl"
    trained, start = {}, None
    for precision in ("fp32", "auto", "bf16"):
        cfg = config(folder, tmp_path, method, **{"train.precision": precision})
        client = client_type(cfg, 0, 2, tmp_path)
        if start is None:
            start = get_method(method).build_server(cfg, torch.device("cpu")).initial_arrays()
        trained[precision], _ = client.train(start, False, 1)
    for key, value in trained["fp32"].items():
        np.testing.assert_array_equal(trained["auto"][key], value, err_msg=key)
        assert trained["bf16"][key].dtype == np.float32
    # The whole update as one vector: an array the round hardly moves (the adapters'
    # zero-initialised up-projection) has no relative difference worth the name.
    keys = sorted(trained["fp32"])
    update = {
        p: np.concatenate([(trained[p][k] - start[k]).ravel() for k in keys])
        for p in ("fp32", "bf16")
    }
    difference = np.linalg.norm(update["bf16"] - update["fp32"])
    assert difference > 0, "bf16 autocast changed nothing: is train.precision ignored?"
    assert difference < 0.25 * np.linalg.norm(update["fp32"])
