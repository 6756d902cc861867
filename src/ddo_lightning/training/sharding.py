"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for DDO under Lightning's ``ModelParallelStrategy``.

The target, the frozen reference and the EMA are sharded separately (``DDOModule.configure_model``):
the reference holds parameters only (no gradient, no optimizer state), the EMA's shards are averaged
shard by shard (no communication). A forward of a sharded network all-gathers its parameters, so every
rank must run it at the same time: evaluation, pool generation and sample grids run on all ranks with
the same number of sampler calls. Whole-network weights (``best.pt``, promotion) go through
``torch.distributed.checkpoint.state_dict`` full state dicts.

"All ranks sample together" has two forms, one helper each: :func:`rank_batches` splits a fixed-seed set
over the ranks in lockstep (evaluation, the fake pool; :func:`gather_shards` reunites a split set), and
:func:`on_rank_zero` runs something on rank 0 that every rank must join when a network is sharded (sample
grids, figures, the best weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn


def is_sharded(net: nn.Module) -> bool:
    """Whether ``net`` was sharded with FSDP2's ``fully_shard``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(net, FSDPModule)


T = TypeVar("T")


def rank_batches(
    total: int, batch_size: int, rank: int, world: int, lockstep: bool
) -> Iterator[tuple[torch.Tensor, int]]:
    """This rank's share (indices ``rank::world``) of the ``total`` samples of a fixed-seed set, in batches of
    at most ``batch_size``, as (indices, n real). With ``lockstep`` every rank yields the same number of
    batches of the same sizes — the last ones padded by repeating an index (drop all but the first ``n``
    outputs) — because a forward of a sharded network is a collective that all ranks must join."""
    idx = torch.arange(rank, total, world)
    longest = -(-total // world) if lockstep else len(idx)
    for start in range(0, longest, batch_size):
        chunk = idx[start : start + batch_size]
        want = min(batch_size, longest - start)
        n = len(chunk)
        if n < want:
            filler = chunk[-1:] if n else idx[:1] if len(idx) else torch.zeros(1, dtype=idx.dtype)
            chunk = torch.cat([chunk, filler.repeat(want - n)])
        yield chunk, n


def gather_shards(local: torch.Tensor, size: int, rank: int, world: int) -> torch.Tensor:
    """The full [size, ...] tensor from each rank's rows ``rank::world`` (all-gather; CPU result).
    Without a process group (one process) ``local`` is already everything."""
    if world == 1:
        return local
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"rank {rank} of {world}: gathering a sharded sample set needs an initialised process group")
    rows = -(-size // world)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros((rows, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    full = torch.empty((size, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        full[r::world] = part[: len(range(r, size, world))].cpu()
    return full


def on_rank_zero(net: nn.Module, is_global_zero: bool, fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 alone, or on every rank together when ``net`` is sharded (its forward and its full
    state dict are collectives); the result on rank 0, None on the other ranks."""
    if not (is_global_zero or is_sharded(net)):
        return None
    out = fn()
    return out if is_global_zero else None


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
