"""Test instrument for SLURM jobs (tests/test_slurm_two_nodes.py): where each rank of a job ran."""

import json
import os
import socket

import lightning.pytorch as pl


def tcp_connections():
    """Established IPv4 TCP connections of the caller's network namespace: [(local address, remote address)]."""
    out = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "01":  # ESTABLISHED
                out.append(
                    tuple(socket.inet_ntoa(int(end.split(":")[0], 16).to_bytes(4, "little")) for end in fields[1:3])
                )
    return out


class Placement(pl.Callback):
    """At the start of training (the process group is up) each rank writes
    ``<run dir>/placement/restart<R>-rank<K>.json``: its host name, SLURM node id and name, the master address
    it used, the global step it starts from, and the established TCP connections of its network namespace."""

    def on_train_start(self, trainer, pl_module):
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        record = {
            "rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "hostname": socket.gethostname(),
            "slurm_nodeid": os.environ.get("SLURM_NODEID"),
            "slurmd_nodename": os.environ.get("SLURMD_NODENAME"),
            "master_addr": os.environ.get("MASTER_ADDR"),
            "restart": restart,
            "start_step": trainer.global_step,
            "connections": tcp_connections(),
        }
        folder = os.path.join(trainer.default_root_dir, "placement")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"restart{restart}-rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)
