"""``FSDP2Strategy``: Lightning's ModelParallelStrategy as pure data-parallel FSDP2.

ModelParallelStrategy's ``data_parallel_size="auto"`` means the number of *nodes* (it is built for
2-D tensor × data parallelism); for DDO we want every process in one data-parallel FSDP group whatever
the node and device counts, so the data-parallel size is set to the world size at launch and the
tensor-parallel size to 1. ``DDOModule.configure_model`` does the sharding.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy


class FSDP2Strategy(ModelParallelStrategy):
    """Data-parallel FSDP2 over all processes (CPU with gloo, GPUs with NCCL).

    Args:
        save_distributed_checkpoint: checkpoints as directories of per-rank shards (fast, scalable);
            False gathers a single full file on rank 0.
        process_group_backend: None picks gloo on CPU, NCCL on GPUs.
        timeout: collective timeout.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = timedelta(minutes=30),
        **kwargs: Any,
    ):
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
            **kwargs,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()
