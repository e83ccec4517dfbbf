"""A ServerApp that plugs in PEPFedPT; the rest is this app's own business."""

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from strategies import PEPFedPT

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    c, d = int(config["num-classes"]), int(config["dim"])
    initial = ArrayRecord(
        {
            "prompt.shared": Array(np.zeros((1, d), np.float32)),
            "prompt.class.1": Array(np.zeros((c, 1, d), np.float32)),
            "head.weight": Array(np.zeros((c, d), np.float32)),
            "head.bias": Array(np.zeros(c, np.float32)),
        }
    )
    nodes = int(config["min-nodes"])
    strategy = PEPFedPT(min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes)
    # Without enough SuperNodes a round fails after this many seconds instead of waiting.
    strategy.wait_timeout = float(config["wait-timeout"])
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(config["num-server-rounds"]),
        timeout=float(config["round-timeout"]),
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
    )
    final = {k: v.numpy().tolist() for k, v in result.arrays.items()}
    out = {"arrays": final, "rounds": {str(k): v for k, v in strategy.round_metrics.items()}}
    if config["result-file"]:
        with open(str(config["result-file"]), "w") as f:
            json.dump(out, f)
    last = strategy.round_metrics.get(int(config["num-server-rounds"]), {})
    print(f"toy-prompts: global accuracy {last.get('evaluate/global-accuracy')}", flush=True)
