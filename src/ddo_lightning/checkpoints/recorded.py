"""Is the network a checkpoint records the network the config declares?

NVIDIA's EDM/EDM2 pickles (and ``ddo convert``'s ``.pt`` files, which keep ``nvidia_class`` and
``init_kwargs_json``) record the class of their network and its constructor arguments. Weights of
EDM's four preconditioners have the same names and shapes (``model.*``), so a strict load alone
cannot tell a ``VPPrecond`` file from an ``EDMPrecond`` one: read into the wrong wrapper the weights
load silently and the denoiser's outputs are wrong (c_skip, c_out, c_in and c_noise all differ).
:func:`check_recorded_network` refuses such a load, naming both sides.

Compared: the class (EDM's ``EDMPrecond``/``VPPrecond``/``VEPrecond``/``iDDPMPrecond``, EDM2's ``Precond``
↔ our class of the same name, ``EDM2Precond``) and every constructor setting that changes the denoiser's
outputs or its sampling grid without changing a weight's shape:

* all: ``img_resolution``, ``img_channels``, ``label_dim``;
* EDMPrecond: ``sigma_data``, ``sigma_min``, ``sigma_max`` (the last two bound EDM's sampling grid);
* VPPrecond: ``beta_d``, ``beta_min``, ``M``, ``epsilon_t``; VEPrecond: ``sigma_min``, ``sigma_max``;
  iDDPMPrecond: ``C_1``, ``C_2``, ``M``;
* EDM2 Precond: ``sigma_data``, the U-Net's ``label_balance``, ``concat_balance``, ``res_balance``,
  ``attn_balance``, ``clip_act`` and ``channels_per_head`` (as the number of attention heads it gives).

Settings that do not change outputs (``use_fp16``, ``dropout``, ``label_dropout``) are not compared;
those that change weight shapes (widths, blocks, attention resolutions) are left to the strict
architecture check. A setting the file does not record has EDM's/EDM2's default, read from our
classes (which keep EDM's defaults). A declared network that is none of our five preconditioners
(a test double, a custom wrapper) is not checked.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..errors import RecordedNetworkMismatch
from ..networks.precond import raw_network

__all__ = ["RecordedNetworkMismatch", "check_recorded_network", "declared_kind", "recorded_kind"]


NETWORK_PATH = "model.init_args.network"
_EDM_CLASSES = ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond")
_EDM2 = "EDM2Precond"
_COMMON = ("img_resolution", "img_channels", "label_dim")
_MISSING = object()  # "this side cannot say" (None is a real value: EDM2's clip_act=None)


def _our_classes() -> dict[str, type[nn.Module]]:
    """Our class per kind (imported here: the networks package does not import checkpoints)."""
    from ..networks import EDM2Precond, EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond

    return {
        "EDMPrecond": EDMPrecond,
        "VPPrecond": VPPrecond,
        "VEPrecond": VEPrecond,
        "iDDPMPrecond": iDDPMPrecond,
        _EDM2: EDM2Precond,
    }


def recorded_kind(class_name: str) -> str | None:
    """Our kind for a recorded class name (module path allowed), None when we have no equivalent."""
    name = str(class_name).rsplit(".", 1)[-1]
    if name == "Precond":  # EDM2's training.networks_edm2.Precond: no EDM class has this name
        return _EDM2
    return name if name in _EDM_CLASSES else None


def declared_kind(net: nn.Module) -> str | None:
    """The kind of a declared network: the nearest of our five preconditioners in its MRO, else None."""
    by_class = {cls: kind for kind, cls in _our_classes().items()}
    for cls in type(net).__mro__:
        if cls in by_class:
            return by_class[cls]
    return None


# ---- the declared side ------------------------------------------------------------------------------
def _first(net: nn.Module, attr: str) -> Any:
    """``net.attr``, else the raw network's (EDM wrappers keep image sizes on ``net.model``), else _MISSING."""
    for obj in (net, raw_network(net)):
        if hasattr(obj, attr):
            return getattr(obj, attr)
    return _MISSING


def _edm2_blocks(net: nn.Module) -> list[nn.Module]:
    from ..networks.edm2 import Block

    return [m for m in net.modules() if isinstance(m, Block)]


def _edm2_block_attr(attr: str) -> Callable[[nn.Module], Any]:
    def get(net: nn.Module) -> Any:
        blocks = _edm2_blocks(net)
        return getattr(blocks[0], attr) if blocks else _MISSING

    return get


def _edm2_heads(net: nn.Module) -> Any:
    """(out_channels, heads) of the first attention block, or _MISSING without attention."""
    for b in _edm2_blocks(net):
        if b.num_heads:
            return b.out_channels, b.num_heads
    return _MISSING


def _declared_getters(kind: str) -> dict[str, Callable[[nn.Module], Any]]:
    """setting -> how to read it from a declared network of ``kind``."""
    getters: dict[str, Callable[[nn.Module], Any]] = {
        "img_resolution": lambda n: _first(n, "img_resolution"),
        "img_channels": lambda n: n.img_channels if hasattr(n, "img_channels") else _first(n, "in_channels"),
        "label_dim": lambda n: _first(n, "label_dim"),
    }
    if kind == _EDM2:
        getters["sigma_data"] = lambda n: n.sigma_data
        getters["label_balance"] = lambda n: n.unet.label_balance
        getters["concat_balance"] = lambda n: n.unet.concat_balance
        for attr in ("res_balance", "attn_balance", "clip_act"):
            getters[attr] = _edm2_block_attr(attr)
        getters["channels_per_head"] = _edm2_heads
    else:
        for key in _edm_own_defaults(kind):
            getters[key] = lambda n, key=key: getattr(n, key)
    return getters


# ---- the recorded side --------------------------------------------------------------------------------
def _edm_own_defaults(kind: str) -> dict[str, Any]:
    """EDM's own constructor settings of a preconditioner and their defaults (the factory's table)."""
    from ..networks.edm_factory import _PRECONDS

    return dict(_PRECONDS[kind][1])


def _signature_defaults(*callables: Callable) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fn in callables:
        for name, p in inspect.signature(fn).parameters.items():
            if p.default is not inspect.Parameter.empty:
                out[name] = p.default
    return out


def _recorded_defaults(kind: str) -> dict[str, Any]:
    if kind == _EDM2:
        from ..networks.edm2 import Block, Precond, UNet

        return _signature_defaults(Block.__init__, UNet.__init__, Precond.__init__)
    return {"label_dim": 0, **_edm_own_defaults(kind)}


def _recorded_value(key: str, init_kwargs: Mapping[str, Any], defaults: Mapping[str, Any]) -> Any:
    if key in init_kwargs:
        return init_kwargs[key]
    if key in defaults:
        return defaults[key]
    return _MISSING


# ---- comparison -----------------------------------------------------------------------------------------
def _plain(v: Any) -> Any:
    """numpy scalars (EDM's recorded floats) -> Python numbers, for comparison and messages."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (list, tuple, dict)) else v


def _same(a: Any, b: Any) -> bool:
    a, b = _plain(a), _plain(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        # files record float32 numbers (np.float32(19.9) != 19.9 exactly): 1e-6 relative is float32's rounding
        return a == b or math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)
    return a == b


def _fmt(v: Any) -> str:
    v = _plain(v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _config_path(kind: str, key: str) -> str:
    """Where the config sets ``key`` of a declared network of ``kind``."""
    if kind != _EDM2 and key in _COMMON:
        raw = {"img_resolution": "img_resolution", "img_channels": "in_channels/out_channels", "label_dim": "label_dim"}
        return f"{NETWORK_PATH}.init_args.model.init_args.{raw[key]}"
    return f"{NETWORK_PATH}.init_args.{key}"


def _describe(kind_name: str, values: Mapping[str, Any]) -> str:
    return f"{kind_name}({', '.join(f'{k}={_fmt(v)}' for k, v in values.items())})"


def _display(kind: str) -> str:
    return "EDM2 Precond" if kind == _EDM2 else kind


def _compare(net: nn.Module, kind: str, init_kwargs: Mapping[str, Any]) -> tuple[dict, dict, list[str]]:
    """(recorded settings, declared settings, differing keys) for a declared network of the recorded kind."""
    defaults = _recorded_defaults(kind)
    recorded, declared, differ = {}, {}, []
    for key, get in _declared_getters(kind).items():
        rec = _recorded_value(key, init_kwargs, defaults)
        try:
            dec = get(net)
        except AttributeError:
            dec = _MISSING
        if rec is _MISSING or dec is _MISSING:
            continue  # one side cannot say: nothing to compare
        if key == "channels_per_head":  # compare the number of heads it gives (what changes outputs)
            out_channels, heads = dec
            recorded[key], declared[key] = rec, f"{out_channels // heads} ({heads} heads at width {out_channels})"
            if out_channels // int(_plain(rec)) != heads:
                differ.append(key)
            continue
        recorded[key], declared[key] = _plain(rec), _plain(dec)
        if not _same(rec, dec):
            differ.append(key)
    return recorded, declared, differ


def _own_settings(kind: str, init_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The preconditioner's own settings as recorded (for the class-mismatch message)."""
    defaults = _recorded_defaults(kind)
    keys = _COMMON + ("sigma_data",) if kind == _EDM2 else tuple(_edm_own_defaults(kind)) + _COMMON
    out = {}
    for k in keys:
        v = _recorded_value(k, init_kwargs, defaults)
        if v is not _MISSING:
            out[k] = _plain(v)
    return out


def _a(name: str) -> str:
    return f"an {name}" if name[:1] in "AEIOUaeiou" else f"a {name}"


def _model_hint(kind: str, init_kwargs: Mapping[str, Any]) -> str:
    """How the raw network of an EDM file is declared (EDM2's U-Net is built by the wrapper itself)."""
    if kind == _EDM2:
        return ""
    from ..networks.edm_factory import _PRECONDS

    model_type = init_kwargs.get("model_type", _PRECONDS[kind][2])
    return f", model: ddo_lightning.networks.{model_type} with the file's U-Net arguments"


def check_recorded_network(net: nn.Module, class_name: str, init_kwargs: Mapping[str, Any], what: str) -> None:
    """Refuse to load a checkpoint that records ``class_name(**init_kwargs)`` into ``net`` when the class
    or an output-changing setting differs (see the module docstring). ``what`` names the checkpoint in
    the message (e.g. ``"init_from path/to/file.pkl"``). Raises :class:`RecordedNetworkMismatch`."""
    declared = declared_kind(net)
    if declared is None:
        return  # not one of our preconditioners: nothing we know to compare
    init_kwargs = dict(init_kwargs or {})
    recorded = recorded_kind(class_name)
    if recorded is None:
        raise RecordedNetworkMismatch(
            f"{what} holds {_a(str(class_name))} network, which ddo_lightning has no equivalent of, but the config "
            f"declares {declared}: only EDM's EDMPrecond/VPPrecond/VEPrecond/iDDPMPrecond and EDM2's Precond load "
            "into our preconditioners"
        )
    if recorded != declared:
        own = _own_settings(recorded, init_kwargs)
        shown = own if recorded == _EDM2 else {k: v for k, v in own.items() if k not in _COMMON}
        settings = ", ".join(f"{k}: {_fmt(v)}" for k, v in shown.items())
        raise RecordedNetworkMismatch(
            f"{what} holds {_a(_describe(_display(recorded), own))} but the config declares {declared}: set "
            f"{NETWORK_PATH}.class_path to ddo_lightning.networks.{recorded} (init_args {settings}"
            f"{_model_hint(recorded, init_kwargs)}), or choose a checkpoint of {_a(declared)}. Read as {_a(declared)}, "
            "its weights would give other outputs (another preconditioning)"
        )
    rec, dec, differ = _compare(net, declared, init_kwargs)
    if differ:
        items = "; ".join(
            f"{k}: file {_fmt(rec[k])}, config {_fmt(dec[k])} ({_config_path(declared, k)})" for k in differ
        )
        raise RecordedNetworkMismatch(
            f"{what} holds {_a(_display(recorded))} whose settings differ from the declared {declared}'s, and they "
            f"change its outputs: {items}. Set them to the file's values, or choose a matching checkpoint"
        )
