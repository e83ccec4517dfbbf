"""Names on the wire: the contract between this strategy and any ClientApp.

Plain constants (no Flower, no torch), so that a ClientApp we did not write can follow
them and so that the library can build arrays under the same names.

Global state (one ``ArrayRecord``; float32 unless noted):

- ``prompt.shared``         (M_s, D)   shared prompt, FedAvg by n_k
- ``prompt.class.<l>``      (C, M_c, D) class prompts of CCMP block l (1-based),
                                        averaged per class by n_{k,c} (PEP-FedPT)
- ``prompt.deep.<l>``       (M_c, D)   VPT-deep prompt of block l (1-based): the
                                        baselines' one learned prompt per block, FedAvg
- ``prompt.group.<l>``      (G, M_c, D) SGPT's group prompts of block l (1-based), averaged
                                        per group by the clients' group counts n_{k,g}
- ``prompt.keys``           (G, D)     SGPT's group keys, averaged per group like them
- ``head.weight``, ``head.bias``  (C, D), (C,)  linear head, FedAvg by n_k
- ``proto.mean``            (C, D)     global class prototypes μ_c (PEP-FedPT only; never
                                        trained)
- ``proto.count``           (C,) int64 global class counts Σ_k n_{k,c} (every method)
- ``group.count``           (G,) int64 SGPT: how often each group was selected so far, Σ over
                                        rounds and clients of the replies' group counts;
                                        sent in every train/evaluate message as record
                                        ``group`` (SGPT's balanced training-time selection)
- ``pfedpg.*``              pFedPG's generator (``pfedpg.base`` (T, D), ``pfedpg.w-q``,
                                        ``pfedpg.w-k``, ``pfedpg.w-v``) and one descriptor
                                        ``pfedpg.descriptor.<partition-id>`` (d,) per
                                        training client; server-side only, never sent

Train reply: ``arrays`` (the trainable keys above) and ``metrics`` with ``num-examples``,
``class-counts`` (C ints summing to num-examples) and ``train-loss``; SGPT adds
``group-counts`` (G ints summing to num-examples: how many local train examples select
each group with the trained keys).
Prototype (QUERY) reply: ``proto`` with ``proto.sum`` (C, D) and ``proto.count`` (C,),
or only ``proto.count`` when the query's config sets ``counts-only`` (the baselines'
prototype round), and ``metrics`` with ``num-examples`` and, optionally, ``partition-id``
and ``held-out`` (1: this client never trains; its sums stay out of the prototypes).
Keep-prototypes (QUERY, task ``keep-prototypes``) reply: an empty ``metrics``; the node
keeps the query's ``proto`` record as if its next train message had carried it.
Evaluate reply: ``metrics`` with ``num-examples``, ``correct`` and ``accuracy``, and
optionally ``held-out`` (held-out clients are summarised apart) and, when the run carves a
validation split from each training split (``data.val-fraction``), ``val-num-examples`` and
``val-correct`` (both or neither): the same state scored on that split. A PEP-FedPT client
adds ``ccmp-prior-correct`` and ``ccmp-uniform-correct`` (both or neither): how many of its
``num-examples`` test examples the CCMP mixing weights get right used directly as a
classifier (argmax over c of cos(z(x), μ_c) / τ + log π(c)), with its own prior π and with
a uniform one; no prompt or head is involved.
"""

from __future__ import annotations

SHARED_PROMPT = "prompt.shared"
CLASS_PROMPT_PREFIX = "prompt.class."
HEAD_WEIGHT = "head.weight"
HEAD_BIAS = "head.bias"
PROTO_MEAN = "proto.mean"
PROTO_COUNT = "proto.count"
PROTO_SUM = "proto.sum"

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
PROTO = "proto"
GROUP = "group"

NUM_EXAMPLES = "num-examples"
CLASS_COUNTS = "class-counts"
TRAIN_LOSS = "train-loss"
TRAIN_ACCURACY = "train-accuracy"
LOSS = "loss"
GROUP_COUNTS = "group-counts"
CORRECT = "correct"
ACCURACY = "accuracy"
PARTITION_ID = "partition-id"
HELD_OUT = "held-out"
VAL_NUM_EXAMPLES = "val-num-examples"
VAL_CORRECT = "val-correct"
CCMP_PRIOR_CORRECT = "ccmp-prior-correct"
CCMP_UNIFORM_CORRECT = "ccmp-uniform-correct"

# Config keys the strategy sets in every message it sends.
CFG_SERVER_ROUND = "server-round"
CFG_TASK = "task"
CFG_PROTO_VERSION = "proto-version"
CFG_COUNTS_ONLY = "counts-only"  # in the QUERY: reply with class counts, no feature sums
TASK_PROTOTYPES = "prototypes"
# A QUERY that carries the prototypes (record ``proto``, config ``proto-version``) for the
# node to keep, in place of its next train message's ``proto`` record; answered with an
# empty ``metrics``. Sent only when the train messages must carry one ArrayRecord
# (Flower's client-side DP: ``fixedclipping_mod``, ``adaptiveclipping_mod``).
TASK_KEEP_PROTOTYPES = "keep-prototypes"

DEEP_PROMPT_PREFIX = "prompt.deep."
GROUP_PROMPT_PREFIX = "prompt.group."
GROUP_KEYS = "prompt.keys"
GROUP_COUNT = "group.count"

GLOBAL_ONLY_KEYS = (PROTO_MEAN, PROTO_COUNT, GROUP_COUNT)


def class_prompt_key(block: int) -> str:
    """Wire name of the class prompts of 0-based block ``block`` (named 1-based)."""
    return f"{CLASS_PROMPT_PREFIX}{block + 1}"


def is_class_prompt(key: str) -> bool:
    return key.startswith(CLASS_PROMPT_PREFIX)


def deep_prompt_key(block: int) -> str:
    """Wire name of the VPT-deep prompt of 0-based block ``block`` (named 1-based)."""
    return f"{DEEP_PROMPT_PREFIX}{block + 1}"


def group_prompt_key(block: int) -> str:
    """Wire name of SGPT's group prompts of 0-based block ``block`` (named 1-based)."""
    return f"{GROUP_PROMPT_PREFIX}{block + 1}"


def is_grouped(key: str) -> bool:
    """Whether ``key`` holds one row per SGPT group (group prompts or keys)."""
    return key == GROUP_KEYS or key.startswith(GROUP_PROMPT_PREFIX)


# FedMVP (method = "fedmvp"): every trainable array is ``fedmvp.*`` (PromptFormer and
# adapters). ``adapters-on`` (0 | 1) is both a train-reply metric (the client's adapter
# switch after its training) and a config key of every train/evaluate message (the switch
# the server holds for the destination's partition); train replies also carry
# ``partition-id``.
FEDMVP_PREFIX = "fedmvp."
ADAPTERS_ON = "adapters-on"
