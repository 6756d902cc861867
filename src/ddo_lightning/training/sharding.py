"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for DDO under Lightning's ``ModelParallelStrategy``.

The target, the frozen reference and the EMA are sharded separately (``DDOModule.configure_model``):
the reference holds parameters only (no gradient, no optimizer state), the EMA's shards are averaged
shard by shard (no communication). A forward of a sharded network all-gathers its parameters, so every
rank must run it at the same time: evaluation, pool generation and sample grids run on all ranks with
the same number of sampler calls. Whole-network weights (``best.pt``, promotion) go through
``torch.distributed.checkpoint.state_dict`` full state dicts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def is_sharded(net: nn.Module) -> bool:
    """Whether ``net`` was sharded with FSDP2's ``fully_shard``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(net, FSDPModule)


def local_part(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly FSDP2-sharded) tensor: a DTensor's local shard, else ``t``."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed tensors
        return t
    return t.to_local() if isinstance(t, DTensor) else t


def shard_network(net: nn.Module, mesh: Any) -> nn.Module:
    """``fully_shard`` the blocks of ``net`` (the children of its ModuleLists/ModuleDicts, innermost first),
    then ``net`` itself with ``reshard_after_forward=True`` (for a root the default keeps parameters
    gathered after a no-grad forward — the reference and the EMA are only ever run without grad)."""
    from torch.distributed.fsdp import fully_shard

    containers = [m for m in net.modules() if isinstance(m, (nn.ModuleList, nn.ModuleDict))]
    for container in reversed(containers):
        for block in container.children():
            if any(True for _ in block.parameters()) and not is_sharded(block):
                fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh, reshard_after_forward=True)
    return net


def full_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """Plain full tensors of ``net`` on the CPU. Sharded: a collective (every rank must call it);
    rank 0 gets the weights, other ranks an empty dict."""
    if not is_sharded(net):
        return {k: v.detach().cpu() for k, v in net.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full (unsharded) weights into ``net``, sharded or not (sharded: every rank passes the same
    full dict and keeps its shard)."""
    if not is_sharded(net):
        net.load_state_dict(state, strict=True)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(net, dict(state), options=StateDictOptions(full_state_dict=True, strict=True))


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer, sharded: bool) -> None:
    """Forget Adam's moments (a new round). Unsharded: clear the state. Sharded: zero it in place
    (step 0, zero moments: the same update as a fresh Adam), because a distributed checkpoint written
    right after a bare ``clear()`` lacks the optimizer entries and cannot be resumed."""
    if not sharded:
        optimizer.state.clear()
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
