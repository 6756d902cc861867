"""Weights for a denoiser from one of our checkpoints, checked against the network's architecture.

Our checkpoints are Lightning ``.ckpt`` files holding tensors and plain containers only, so they load
with ``torch.load(weights_only=True)``: nothing stored in them can execute on load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureMismatch
from ..files import read_tensor_file
from .architecture import check_checkpoint_fits, check_same_architecture
from .nvidia_pickle import load_edm2_training_state, read_nvidia_network

__all__ = [
    "ArchitectureMismatch",
    "check_checkpoint_fits",
    "check_same_architecture",
    "denoiser_state_dict",
    "load_network_weights",
    "read_denoiser",
]

# Which weights of a training checkpoint make a denoiser, in order of preference:
# a DDO run's reference is the best promoted model; an MLE run's EMA is its best estimate.
WEIGHT_PREFIXES = ("reference.", "ema.model.", "net.", "target.")


WHICH_PREFIX = {"reference": "reference.", "ema": "ema.model.", "net": "net.", "target": "target."}


def denoiser_state_dict(path: str, which: str | None = None) -> dict[str, torch.Tensor]:
    """The denoiser weights in a checkpoint: a Lightning checkpoint of ours (``which`` of
    ``reference``/``ema``/``target``/``net``, or by default the first prefix found among
    ``WEIGHT_PREFIXES``), a plain state dict (``{name: tensor}``), or NVIDIA's EDM/EDM2 snapshot pickle
    (``.pkl``: its ``ema`` network, read without executing stored code, floats cast to fp32), or EDM2's
    ``training-state-*.pt`` (its first power-function EMA, fp32; tensors only, ``weights_only=True``)."""
    return read_denoiser(path, which)[0]


def read_denoiser(
    path: str, which: str | None = None
) -> tuple[dict[str, torch.Tensor], tuple[str, dict[str, Any]] | None]:
    """``(state_dict, recorded)``: the weights as :func:`denoiser_state_dict` reads them, and
    ``recorded = (class_name, init_kwargs)`` of the network the file records (NVIDIA's pickles, and
    ``ddo convert``'s ``.pt`` files through their ``nvidia_class``/``init_kwargs_json``), else None."""
    if which is not None and which not in WHICH_PREFIX:
        raise ValueError(f"which must be one of {sorted(WHICH_PREFIX)}, got {which!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if str(path).endswith(".pkl"):
        class_name, init_kwargs, state, _ = read_nvidia_network(path, "ema")
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, (class_name, init_kwargs)
    if os.path.basename(str(path)).startswith("training-state-"):
        return load_edm2_training_state(path, "ema"), None
    obj = read_tensor_file(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a checkpoint or a state dict")
    return _select_weights(path, obj, which), _recorded_in(path, obj)


def _recorded_in(path: str, obj: Mapping) -> tuple[str, dict[str, Any]] | None:
    """What ``ddo convert`` kept of the NVIDIA network: its class name and constructor kwargs (JSON)."""
    if not isinstance(obj.get("nvidia_class"), str):
        return None
    try:
        init_kwargs = json.loads(obj.get("init_kwargs_json") or "{}")
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: init_kwargs_json is not readable JSON: {err}") from err
    return obj["nvidia_class"], init_kwargs if isinstance(init_kwargs, dict) else {}


def _select_weights(path: str, obj: Mapping, which: str | None) -> dict[str, torch.Tensor]:
    state = obj.get("state_dict", obj)
    if which is not None:
        sub = {k[len(WHICH_PREFIX[which]) :]: v for k, v in state.items() if k.startswith(WHICH_PREFIX[which])}
        if not sub:
            raise ValueError(f"{path} has no '{which}' network (no keys starting with {WHICH_PREFIX[which]!r})")
        return sub
    for prefix in WEIGHT_PREFIXES:
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return dict(state)
    raise ValueError(f"{path} has no denoiser weights (looked for keys starting with {', '.join(WEIGHT_PREFIXES)})")


def load_network_weights(net: nn.Module, path: str, what: str | None = None, which: str | None = None) -> nn.Module:
    """Load the denoiser weights of ``path`` (any file :func:`read_denoiser` reads; ``which`` network of
    one of our checkpoints) into ``net`` strictly, after :func:`check_checkpoint_fits`: the one way
    weights enter a network (``model.init_from``, ``ddo sample``/``ddo fid``). ``what`` names the file in
    errors (default ``"checkpoint <path>"``; DDOModule: ``"init_from <path>"``)."""
    state, recorded = read_denoiser(path, which)
    check_checkpoint_fits(net, state, recorded, what or f"checkpoint {path}")
    net.load_state_dict(state, strict=True)
    return net
