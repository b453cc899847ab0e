"""python tests/reliability/node_kill_cluster.py DATASET RUN_ROOT — trains digits on a 3-node
local cluster and removes a node holding training workers 3 steps into epoch 2.

Run by test_node_kill.py in its own process: a process joins one Ray cluster only, and the
test session's is already up. Prints the result as one JSON line.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from polymodal.train.run import fit
from tests.reliability.samples import faulted_run_config, wait_until_mid_epoch


def training_nodes() -> set[str]:
    """Nodes of the training workers: the bundles of Train's live placement group."""
    return {
        node
        for pg in ray.util.placement_group_table().values()
        if pg["state"] == "CREATED"
        for node in pg["bundles_to_node_id"].values()
    }


def remove_training_node(cluster: Cluster, samples: Path, removed: list) -> None:
    if not wait_until_mid_epoch(samples, 2):
        return
    targets = training_nodes()
    for node in cluster.worker_nodes:
        if node.node_id in targets:
            cluster.remove_node(node, allow_graceful=False)  # its raylet and workers die
            removed.append(node.node_id)
            return


def main(dataset: str, root: str) -> None:
    # The head runs the driver's actors (Train's controller, the data coordinator); the
    # two worker nodes run training and decoding, each with room for the whole run.
    # The GCS declares a silent node dead after 3 missed health checks a second apart, not
    # Ray's 5 of every 3 s: Train waits for that before it places the group again.
    checks = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": checks}
    )
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    cfg = faulted_run_config(dataset, root, "node-killed")
    removed: list[str] = []
    killer = threading.Thread(
        target=remove_training_node, args=(cluster, Path(cfg.train.sample_log_dir), removed)
    )
    killer.start()
    result = fit(cfg)  # Ray Train wants the driver's main thread
    killer.join()
    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    print(
        json.dumps(
            {
                "removed": removed,
                "alive_nodes": len(alive),
                "checkpoint": result.checkpoint,
                "epochs_run": result.epochs_run,
                "accuracy": result.metrics["val/accuracy"],
            }
        ),
        flush=True,
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
