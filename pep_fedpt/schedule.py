"""The learning-rate schedule over server rounds: a pure function of the round number.

The round, not a counter kept by the client, drives it: every train message carries the
server round (``strategies.wire.CFG_SERVER_ROUND``), so a restarted client or a resumed
run trains each round with exactly the rate an uninterrupted run would use.

``train_seed`` fixes a local training's shuffles the same way: from the run seed, the round
and the partition, never from how often the process trained before.

Round t of T (``num-server-rounds``), W warm-up rounds (``train.warmup-rounds``):

- warm-up, t <= W: t / (W + 1), a linear rise that reaches the full rate at round W + 1;
- then ``constant``: 1; ``cosine``: (1 + cos(pi (t - W - 1) / (T - W))) / 2, which is 1 at
  round W + 1 and still above 0 at round T (the last round trains too).
"""

from __future__ import annotations

import math

from pep_fedpt.config import LR_SCHEDULES


def lr_factor(server_round: int, num_rounds: int, schedule: str, warmup_rounds: int) -> float:
    """The multiplier of the base learning rates in ``server_round`` (1-based; a round
    below 1, as in a direct call outside a run, counts as round 1)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"schedule = {schedule!r}; use one of: {', '.join(LR_SCHEDULES)}")
    if num_rounds < 1 or warmup_rounds < 0:
        raise ValueError(f"num_rounds = {num_rounds} must be >= 1, warmup_rounds >= 0")
    t = max(int(server_round), 1)
    if t <= warmup_rounds:
        return t / (warmup_rounds + 1)
    if schedule == "constant":
        return 1.0
    span = max(num_rounds - warmup_rounds, 1)
    progress = min((t - warmup_rounds - 1) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_seed(run_seed: int, server_round: int, partition_id: int) -> int:
    """Shuffling seed of one local training: fixed by run seed, round and partition."""
    return run_seed * 1_000_003 + server_round * 1_009 + partition_id
