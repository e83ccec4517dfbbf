"""The option values the strategies accept: plain constants (no Flower, no numpy).

Each is defined here once. The strategies check their arguments against them, and the run
config (``pep_fedpt.config``) checks the same keys against them before anything heavier
than this module is imported, so that a bad value fails in the launcher's preflight.
"""

from __future__ import annotations

# ``wire_dtype``: the float dtype of the arrays in train/evaluate messages, both ways.
WIRE_DTYPES = ("float32", "float16")
# ``reply_aggregation``: the weighted exact mean, or a coordinate-wise robust value.
ROBUST_AGGREGATIONS = ("mean", "median", "trimmed-mean")
# ``secure_aggregation``: in the clear, or SecAgg+ (``strategies.secagg``).
SECURE_AGGREGATIONS = ("off", "secaggplus")
# PEP-FedPT's ``class_prompt_aggregation``: per class by n_{k,c}, or FedAvg by n_k.
CLASS_PROMPT_AGGREGATIONS = ("per-class", "fedavg")
# FedMVP's ``aggregation``: every client alike (its paper), or by n_k.
FEDMVP_AGGREGATIONS = ("equal", "num-examples")
# Central differential privacy (``strategies.dp.dp_wrapper``): which of Flower's wrappers,
# clipping on the server or on each node, at a fixed or an adaptive bound.
DP_MODES = ("off", "server-fixed", "client-fixed", "server-adaptive", "client-adaptive")
