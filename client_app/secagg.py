"""The node's side of SecAgg+ (``strategies/secagg/`` drives the server's).

Each ``query.secagg`` message is one stage. Setup, share-keys and unmask are Flower's own
``secaggplus_mod`` steps, run as they are on its ``SecAggPlusState`` (kept in
``context.state``); the masked-vector step follows the mod's but masks this node's vector
(``vector(msg, context)``: integers, summed exactly, then floats, quantised), not a
legacy ``FitRes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

# Flower's mod steps, run as they are (the package re-exports the mod's function under the
# module's own name, hence the names, not the module).
from flwr.client.mod.secure_aggregation.secaggplus_mod import (
    SecAggPlusState,
    _setup,
    _share_keys,
    _unmask,
    check_configs,
    check_stage,
)
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from strategies import wire
from strategies.secagg import FLOATS, INTS, MASKED, RECORD, VECTOR_RECORD

STATE = "pep-fedpt.secagg"  # this node's SecAggPlusState between stages

# (integers, floats) this node contributes, from the masked-vector request (its config
# names the task; a train request also carries the arrays to train from).
Vector = Callable[[Message, Context], tuple[np.ndarray, np.ndarray]]
# This node's public facts for the server (e.g. held out), sent with its public keys.
Facts = Callable[[ConfigRecord, Context], Mapping[str, int | float]]


def _count(key: str, value: object) -> int:
    """How many integers or floats lead the vector (the setup stage's ``ints``/``floats``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"secagg setup entry {key!r} = {value!r} is not a count")
    return int(value)


def answer(msg: Message, context: Context, vector: Vector, facts: Facts | None = None) -> Message:
    """The reply to one SecAgg+ stage message."""
    state = SecAggPlusState(**context.state.config_records.get(STATE, ConfigRecord()))
    configs = ConfigRecord(dict(msg.content.config_records[RECORD]))
    task = msg.content.config_records.get(wire.CONFIG, ConfigRecord())
    check_stage(state.current_stage, configs)
    state.current_stage = cast(str, configs.pop(Key.STAGE))
    extra = {key: _count(key, configs.pop(key)) for key in (INTS, FLOATS) if key in configs}
    check_configs(state.current_stage, configs)
    out = RecordDict()
    if state.current_stage == Stage.SETUP:
        state.nid = msg.metadata.dst_node_id
        state.ints, state.floats = extra[INTS], extra[FLOATS]  # type: ignore[attr-defined]  # this app's vector sizes ride on Flower's SecAggPlusState, which does not declare them
        res = _setup(state, configs)
        if facts is not None:
            out[wire.METRICS] = MetricRecord(dict(facts(task, context)))
    elif state.current_stage == Stage.SHARE_KEYS:
        res = _share_keys(state, configs)
    elif state.current_stage == Stage.COLLECT_MASKED_VECTORS:
        ints, floats = vector(msg, context)
        masked = _masked_vector(state, configs, ints, floats)
        out[VECTOR_RECORD] = ArrayRecord({MASKED: Array(masked)})
        res = {}
    else:
        res = _unmask(state, configs)
    context.state.config_records[STATE] = ConfigRecord(state.to_dict())
    out.config_records[RECORD] = ConfigRecord(res, False)
    return Message(out, reply_to=msg)


def _masked_vector(
    state: SecAggPlusState, configs: ConfigRecord, ints: np.ndarray, floats: np.ndarray
) -> np.ndarray:
    """This node's vector quantised and masked: its own mask plus one pairwise mask per
    neighbour that shared keys (as ``secaggplus_mod._collect_masked_vectors``)."""
    want_ints, want_floats = int(state.ints), int(state.floats)  # type: ignore[attr-defined]  # this app's vector sizes ride on Flower's SecAggPlusState, which does not declare them
    ints = np.asarray(ints).reshape(-1)
    floats = np.asarray(floats, dtype=np.float64).reshape(-1)
    if ints.shape != (want_ints,) or floats.shape != (want_floats,):
        raise ValueError(
            f"the vector has {ints.size} ints and {floats.size} floats; the server expects "
            f"{want_ints} and {want_floats}"
        )
    if want_ints and not np.issubdtype(ints.dtype, np.integer):
        raise ValueError(f"the integers have dtype {ints.dtype}; expected an integer type")
    limit = int(state.max_weight)
    if want_ints and (ints.min() < 0 or ints.max() > limit):
        raise ValueError(
            f"an integer of {int(ints.min())}..{int(ints.max())} is outside 0..{limit} "
            "(the secagg max_count): it would break the sum's range"
        )
    if not np.isfinite(floats).all():
        raise ValueError("the floats hold NaN or inf; secure aggregation sums finite values")
    ciphertexts = cast(list[bytes], configs[Key.CIPHERTEXT_LIST])
    srcs = cast(list[int], configs[Key.SOURCE_LIST])
    if len(ciphertexts) + 1 < state.threshold:
        raise ValueError("Not enough available neighbour clients.")
    for src, ciphertext in zip(srcs, ciphertexts, strict=True):
        plaintext = decrypt(state.ss2_dict[src], ciphertext)
        actual_src, dst, rd_seed_share, sk1_share = share_keys_plaintext_separate(plaintext)
        if actual_src != src or dst != state.nid:
            raise ValueError(
                f"node {state.nid}: a share from node {actual_src} to node {dst} came as "
                f"one from {src}"
            )
        state.rd_seed_share_dict[src] = rd_seed_share
        state.sk1_share_dict[src] = sk1_share
    quantised = quantize([floats], state.clipping_range, state.target_range)[0]
    vector = np.concatenate([ints.astype(np.int64), quantised.astype(np.int64)])
    shape = [vector.shape]
    vector += pseudo_rand_gen(state.rd_seed, state.mod_range, shape)[0]
    own_key = bytes_to_private_key(state.sk1)
    for node in srcs:
        key = generate_shared_key(own_key, bytes_to_public_key(state.public_keys_dict[node][0]))
        mask = pseudo_rand_gen(key, state.mod_range, shape)[0]
        vector = vector + mask if state.nid > node else vector - mask
    return vector & (state.mod_range - 1)
