"""Build our equivalent of an NVIDIA EDM network object from its recorded constructor arguments.

An EDM pickle records, for its network, the class name (``training.networks.EDMPrecond`` etc.) and the
keyword arguments it was built with: ``img_resolution, img_channels, label_dim, use_fp16``, the
preconditioner's own arguments, ``model_type`` and the U-Net's arguments. ``build_edm_network`` builds
the same structure from this package's classes, so that the pickle's state_dict loads with
``strict=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .edm2 import Precond as EDM2Precond
from .edm_unets import DhariwalUNet, SongUNet
from .precond import EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond

_MODELS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}

# class name -> (our wrapper, its own keyword arguments with EDM's defaults, default model_type,
#                output-channel multiplier of the raw network)
_PRECONDS: dict[str, tuple[type[nn.Module], dict[str, Any], str, int]] = {
    "EDMPrecond": (EDMPrecond, dict(sigma_min=0.0, sigma_max=float("inf"), sigma_data=0.5), "DhariwalUNet", 1),
    "VPPrecond": (VPPrecond, dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5), "SongUNet", 1),
    "VEPrecond": (VEPrecond, dict(sigma_min=0.02, sigma_max=100.0), "SongUNet", 1),
    "iDDPMPrecond": (iDDPMPrecond, dict(C_1=0.001, C_2=0.008, M=1000), "DhariwalUNet", 2),
}


def build_edm_network(class_name: str, init_kwargs: Mapping[str, Any]) -> nn.Module:
    """Our network for an EDM preconditioner class and its constructor kwargs.

    Args:
        class_name: ``EDMPrecond``, ``VPPrecond``, ``VEPrecond`` or ``iDDPMPrecond``, optionally with a
            module path (``training.networks.EDMPrecond``).
        init_kwargs: EDM's constructor arguments: ``img_resolution``, ``img_channels``, ``label_dim``
            (default 0), ``use_fp16`` (accepted and ignored: we always run in float32), the
            preconditioner's own arguments (EDM: sigma_min/sigma_max/sigma_data; VP: beta_d/beta_min/
            M/epsilon_t; VE: sigma_min/sigma_max; iDDPM: C_1/C_2/M), ``model_type`` ('SongUNet' or
            'DhariwalUNet'; EDM's per-class default when absent) and the U-Net's arguments.

    Returns the wrapper with the U-Net as ``.model`` (``in_channels = out_channels = img_channels``;
    for iDDPM ``out_channels = 2·img_channels``), like EDM. The wrapper also gets EDM's plain
    attributes ``img_resolution``, ``img_channels``, ``label_dim``.

    Raises ValueError for an unknown preconditioner or model type; TypeError (from the U-Net) for
    an unknown U-Net argument.
    """
    name = class_name.rsplit(".", 1)[-1]
    if name == "Precond":  # EDM2 (training.networks_edm2.Precond): no EDM class has this name
        return build_edm2_network(init_kwargs)
    if name not in _PRECONDS:
        raise ValueError(
            f"unknown EDM network class {class_name!r}; expected one of {', '.join(_PRECONDS)} or Precond (EDM2)"
        )
    wrapper, own_defaults, default_model, out_mult = _PRECONDS[name]
    kwargs = dict(init_kwargs)
    try:
        img_resolution = int(kwargs.pop("img_resolution"))
        img_channels = int(kwargs.pop("img_channels"))
    except KeyError as err:
        raise ValueError(f"{name} kwargs lack {err.args[0]!r}") from err
    label_dim = int(kwargs.pop("label_dim", 0))
    kwargs.pop("use_fp16", None)  # EDM's fp16 switch: we run in float32
    own = {k: kwargs.pop(k, v) for k, v in own_defaults.items()}
    model_type = kwargs.pop("model_type", default_model)
    if model_type not in _MODELS:
        raise ValueError(f"unknown EDM model_type {model_type!r}; expected one of {', '.join(_MODELS)}")
    model = _MODELS[model_type](
        img_resolution=img_resolution,
        in_channels=img_channels,
        out_channels=img_channels * out_mult,
        label_dim=label_dim,
        **kwargs,
    )
    net = wrapper(model, **own)
    net.img_resolution = img_resolution
    net.img_channels = img_channels
    net.label_dim = label_dim
    return net


def build_edm2_network(init_kwargs: Mapping[str, Any], use_fp16: bool = False) -> EDM2Precond:
    """Our :class:`~ddo_lightning.networks.edm2.Precond` from the constructor kwargs an EDM2 pickle
    recorded (``img_resolution``, ``img_channels``, ``label_dim``, ``model_channels``, ``dropout``, ...).

    ``use_fp16`` replaces the recorded flag (EDM2 trains with True): DDO runs in fp32 (docs/method.md §2), so
    the default is False; the recorded value is kept as ``net.recorded_use_fp16``. Unknown arguments
    raise TypeError (from the U-Net/Block constructors)."""
    kwargs = dict(init_kwargs)
    recorded = kwargs.pop("use_fp16", True)
    net = EDM2Precond(**kwargs, use_fp16=use_fp16)
    net.recorded_use_fp16 = bool(recorded)
    return net
