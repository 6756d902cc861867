"""Checks that weights fit a network before they load: recorded class and settings, then names and shapes.

Below both readers (:mod:`.load` for our files, :mod:`.nvidia_pickle` for NVIDIA's), so neither imports
the other to check a state dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureMismatch
from .recorded import check_recorded_network


def check_same_architecture(net: nn.Module, state: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Raise :class:`ArchitectureMismatch` naming every differing parameter/buffer (up to 10 of each kind)."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: network {tuple(own[k].shape)} vs {what} {tuple(state[k].shape)}"
        for k in own
        if k in state and own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (
            ("missing in " + what, missing),
            ("not in the network", unexpected),
            ("shape differs", shapes),
        ):
            if items:
                more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
                parts.append(f"{title}: {', '.join(items[:10])}{more}")
        raise ArchitectureMismatch(
            f"the {what} does not match the network's architecture ({type(net).__name__}); " + "; ".join(parts)
        )


def check_checkpoint_fits(
    net: nn.Module, state: Mapping[str, torch.Tensor], recorded: tuple[str, Mapping[str, Any]] | None, what: str
) -> None:
    """Everything checked before weights load: the recorded network class and output-changing settings
    (when the file records them, see :mod:`.recorded`), then names and shapes. ``what`` names the file."""
    if recorded is not None:
        check_recorded_network(net, recorded[0], recorded[1], what)
    check_same_architecture(net, state, what=what)
