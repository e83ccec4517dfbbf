"""ServerApp for PEP-FedPT and the baselines.

Builds the seeded initial state from the run config, runs the strategy of ``cfg.method``
(``STRATEGIES``: ``strategies.PEPFedPT``, or a ``PromptFedAvg`` subclass for a baseline),
evaluates the global state on the data set's central test split with the global prior
after every round, records each finished round on disk (with a checkpoint of the whole
server state) and prints a summary table. With ``resume-from`` set it continues a run from
its checkpoint at the next round, as if it had never stopped.
"""

from __future__ import annotations

from logging import INFO
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from pep_fedpt.ccmp import smoothed_prior
from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.data import load_central_data
from pep_fedpt.engine import (
    FeatureCache,
    WeightsFn,
    compute_query_features,
    evaluate,
    no_features,
    pick_device,
    unit_weights,
)
from pep_fedpt.methods import build_model, image_spec, initial_arrays
from pep_fedpt.methods.baselines import PRIOR_CORRECTED_METHODS
from pep_fedpt.methods.pep_fedpt import ccmp_weights_fn
from pep_fedpt.methods.sgpt import group_weights_fn
from pep_fedpt.models import cached_backbone
from pep_fedpt.state import load_trainable_arrays
from server_app.checkpoint import Checkpoint, config_differences, load_checkpoint
from server_app.results import RunRecorder, resolve_output_dir
from strategies import SGPT, LocalOnly, PEPFedPT, PFedPG, PromptFedAvg, wire

app = ServerApp()

# The server side of every method: FedAvg-style baselines differ only on the client.
STRATEGIES: dict[str, type[PromptFedAvg]] = {
    "pep-fedpt": PEPFedPT,
    "fedavg-vpt-shallow": PromptFedAvg,
    "fedavg-vpt-deep": PromptFedAvg,
    "fedprox-vpt": PromptFedAvg,
    "head-only": PromptFedAvg,
    "fedavg-vpt-prior": PromptFedAvg,
    "local": LocalOnly,
    "sgpt": SGPT,
    "pfedpg": PFedPG,
}


def build_strategy(cfg: RunConfig) -> PromptFedAvg:
    fed = cfg.fed
    common = {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": fed.fraction_evaluate,
        "min_train_nodes": fed.min_train_nodes,
        "min_evaluate_nodes": fed.min_evaluate_nodes,
        "min_available_nodes": fed.min_available_nodes,
        "seed": cfg.seed,
    }
    if cfg.method == "pep-fedpt":
        return PEPFedPT(
            class_prompt_aggregation=fed.class_prompt_aggregation,
            prototype_refresh_every=fed.prototype_refresh_every,
            **common,
        )
    if cfg.method == "sgpt":
        return SGPT(group_momentum=fed.group_momentum, **common)
    if cfg.method == "pfedpg":
        return PFedPG(
            generator_lr=fed.generator_lr, descriptor_dim=cfg.prompt.descriptor_dim, **common
        )
    return STRATEGIES[cfg.method](**common)


def load_resume_point(cfg: RunConfig) -> Checkpoint | None:
    """The checkpoint named by ``resume-from``, refused if the run config changed meaning."""
    if not cfg.resume_from:
        return None
    checkpoint = load_checkpoint(Path(cfg.resume_from))
    changed = config_differences(checkpoint.config, cfg.to_flat())
    if changed:
        raise ConfigError(
            f"resume-from = {cfg.resume_from!r}: the run config differs from the checkpoint's "
            f"in {'; '.join(changed)}; resume with the same config (only num-server-rounds, "
            "output-dir, cache-dir and fed.round-timeout may change)"
        )
    return checkpoint


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flat(context.run_config)
    resume = load_resume_point(cfg)
    if resume is not None and not cfg.output_dir:
        out = Path(cfg.resume_from)  # continue in the run's own folder
    else:
        out = resolve_output_dir(cfg, context.run_id)
    device = pick_device()
    backbone = cached_backbone(cfg.model, cfg.seed, str(device), cfg.data)
    central = load_central_data(cfg.data, image_spec(backbone))
    model = build_model(backbone, cfg, central.num_classes).to(device)
    features = FeatureCache()
    strategy = build_strategy(cfg)
    recorder = RunRecorder(out, cfg, rows=resume.rows if resume else None)
    log(INFO, "pep-fedpt: results go to %s", out)
    recorded_partitions: list[object] = [None]  # the prototype round's partition, once drawn

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Central test split, global prior π(c) ∝ Σ_k n_{k,c}; then record the round.

        PEP-FedPT mixes its class prompts with CCMP weights under the global prior; SGPT
        takes each sample's group by key matching; the other baselines have one prompt set
        (weights of one), and the prior-corrected one adds the global log prior to the
        logits.
        """
        state = {key: array.numpy() for key, array in arrays.items()}
        load_trainable_arrays(model, state)
        prior = smoothed_prior(torch.as_tensor(state[wire.PROTO_COUNT]), cfg.prompt.prior_smoothing)
        log_prior = prior.log().to(device)
        weights_fn: WeightsFn = unit_weights
        if wire.PROTO_MEAN in state:
            z = features.get("central", lambda: compute_query_features(model, central.test, device))
            weights_fn = ccmp_weights_fn(
                torch.as_tensor(state[wire.PROTO_MEAN], device=device),
                log_prior,
                cfg.prompt.tau,
                onehot_in_training=False,
            )
        elif wire.GROUP_KEYS in state:  # SGPT: the group of the nearest key, as on clients
            z = features.get("central", lambda: compute_query_features(model, central.test, device))
            weights_fn = group_weights_fn(torch.as_tensor(state[wire.GROUP_KEYS], device=device))
        else:
            z = features.get("central-none", lambda: no_features(central.test))
        shift = log_prior if cfg.method in PRIOR_CORRECTED_METHODS else None
        result = evaluate(model, central.test, z, weights_fn, device, log_prior=shift)
        metrics = MetricRecord({"accuracy": result.accuracy, "loss": result.loss})
        row = {f"server/{k}": v for k, v in metrics.items()}
        row.update(strategy.round_metrics.get(server_round, {}))
        recorder.record_round(server_round, row, state, strategy.dropped, strategy.checkpoint())
        if strategy.partitions and strategy.partitions is not recorded_partitions[0]:
            recorder.record_partition(strategy.partitions, central.classes)
            recorded_partitions[0] = strategy.partitions
        return metrics

    if resume is None:
        start: dict[str, np.ndarray] = initial_arrays(cfg, backbone, central.num_classes)
    else:
        start = resume.arrays
        strategy.restore(resume.strategy)
        log(INFO, "pep-fedpt: resuming %s after round %d", cfg.resume_from, resume.server_round)
    arrays = ArrayRecord({k: Array(v) for k, v in start.items()})
    strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=cfg.fed.num_rounds,
        timeout=cfg.fed.round_timeout,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=evaluate_global,
        start_round=1 if resume is None else resume.server_round + 1,
    )
    recorder.plot_accuracy()
    table = recorder.summary_table()
    print(
        f"\npep-fedpt summary ({cfg.method}, {cfg.data.dataset}):\n{table}\nresults: {out}\n",
        flush=True,
    )
    for line in table.splitlines():
        log(INFO, "%s", line)
    log(INFO, "pep-fedpt: results written to %s", out)
