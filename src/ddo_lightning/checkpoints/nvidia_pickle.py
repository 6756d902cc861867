"""Safe loading of NVIDIA's code-carrying EDM / EDM2 network pickles.

EDM's ``network-snapshot-*.pkl`` and EDM2's ``edm2-*.pkl`` are plain :mod:`pickle` files whose networks
are instances of classes decorated with the ``persistent_class`` decorator of ``torch_utils.persistence``. Such an object
pickles as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``, where ``meta`` holds the full
Python source of the module defining the class (``module_src``), the ``class_name``, a ``version`` and
the object's ``state`` (its ``__dict__``: ``_parameters``, ``_buffers``, ``_modules``, the recorded
constructor arguments ``_init_args`` / ``_init_kwargs`` and plain attributes). Unpickling them the normal
way *executes* ``module_src`` (and needs NVIDIA's ``torch_utils`` / ``dnnlib`` on the path).

This module never executes anything stored in the file. :class:`SafeNvidiaUnpickler` resolves globals
through an allow-list (:data:`ALLOWED_GLOBALS`):

* ``torch_utils.persistence._reconstruct_persistent_obj`` -> returns a :class:`PersistentRecord`
  (class name, recorded constructor arguments, state); ``module_src`` is only hashed, never run;
* plain ``torch.nn`` modules found inside (``ModuleDict`` in EDM/EDM2, a few other containers and
  layers) -> :class:`TorchModuleRecord` stand-ins that only keep their state;
* ``dnnlib.util.EasyDict`` -> :class:`EasyDict` (a plain ``dict`` subclass);
* tensors: ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` (backward hooks dropped) and
  ``torch.storage._load_from_bytes`` replaced by ``torch.load(..., weights_only=True)``;
* ``collections.OrderedDict``, ``builtins.set/frozenset`` (also as ``__builtin__``), ``_codecs.encode`` (latin-1 bytes of
  protocol-2 pickles), ``torch.Size``, ``torch.<dtype>``;
* numpy arrays/scalars/dtypes under both the numpy 1.x (``numpy.core.*``) and 2.x (``numpy._core.*``)
  module names.

Anything else is refused with :class:`UnsafeGlobalError` naming the global and the file.

The network is rebuilt from its recorded class name and constructor kwargs by
``ddo_lightning.networks.edm_factory.build_edm_network``: EDM's ``EDMPrecond``/``VPPrecond``/... and EDM2's
``Precond`` (``training.networks_edm2``, our :class:`ddo_lightning.networks.edm2.Precond`). EDM2's snapshots
hold every tensor in fp16; by default they are upcast to fp32, which is exact (every fp16 value is an fp32
value). EDM2's ``training-state-*.pt`` files are read by :func:`read_edm2_training_state` with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import NvidiaPickleError, UnsafeGlobalError
from ..unpickle import RestrictedUnpickler, numpy_globals
from .architecture import check_same_architecture

__all__ = [
    "ALLOWED_GLOBALS",
    "EasyDict",
    "NvidiaPickleError",
    "PersistentRecord",
    "SafeNvidiaUnpickler",
    "TorchModuleRecord",
    "UnsafeGlobalError",
    "load_edm2_training_state",
    "load_network_from_nvidia_pickle",
    "load_nvidia_pickle",
    "network_from_record",
    "read_edm2_training_state",
]


# ------------------------------------------------------------------------------------------------
# Stand-ins for the objects stored in the pickle


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict whose items can also be read as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


class PersistentRecord:
    """What a ``persistent_class`` object of NVIDIA's turns into here: data, no code.

    ``module_name`` is ``meta['module_name']`` when the pickle has one (EDM/EDM2 pickles, persistence
    version 6, do not store it: it is ``None`` there). ``init_args`` / ``init_kwargs`` are the constructor
    arguments the decorator recorded (``state['_init_args']`` / ``state['_init_kwargs']``). ``state`` is the
    object's ``__dict__``. ``module_src_sha256`` identifies the stored source without running it.
    """

    __slots__ = (
        "module_name",
        "class_name",
        "init_args",
        "init_kwargs",
        "state",
        "version",
        "kind",
        "module_src_sha256",
    )

    def __init__(
        self,
        module_name: str | None,
        class_name: str,
        init_args: Any,
        init_kwargs: Any,
        state: dict,
        version: Any = None,
        kind: Any = "class",
        module_src_sha256: str | None = None,
    ) -> None:
        self.module_name = module_name
        self.class_name = class_name
        self.init_args = init_args
        self.init_kwargs = init_kwargs
        self.state = state
        self.version = version
        self.kind = kind
        self.module_src_sha256 = module_src_sha256

    @property
    def is_module(self) -> bool:
        """Whether the object was an ``nn.Module`` (its state has parameters/buffers/submodules)."""
        return _looks_like_module_state(self.state)

    def __repr__(self) -> str:
        src = f", module_src_sha256={self.module_src_sha256[:12]}..." if self.module_src_sha256 else ""
        return f"PersistentRecord(class_name={self.class_name!r}, module_name={self.module_name!r}{src})"


class TorchModuleRecord:
    """Stand-in for a plain (not persistent) ``torch.nn`` module inside the pickle, e.g. ``ModuleDict``.

    The pickle rebuilds it as ``cls.__new__(cls)`` followed by ``__setstate__(state)``; this keeps the state
    and runs nothing. ``class_name`` is the fully qualified name of the torch class it stands for.
    """

    class_name = "torch.nn.modules.module.Module"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.class_name}: expected a dict state, got {type(state).__name__}")
        self.state = state

    @property
    def is_module(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"TorchModuleRecord({self.class_name})"


def _module_standin(qualified: str) -> type:
    name = qualified.rsplit(".", 1)[1]
    return type(name, (TorchModuleRecord,), {"class_name": qualified, "__module__": __name__})


# Plain torch.nn classes allowed (as stand-ins, so nothing of theirs runs). EDM and EDM2 use only
# ModuleDict; the others are there so that small variations of the networks still load.
_TORCH_MODULES = [
    "torch.nn.modules.module.Module",
    "torch.nn.modules.container.ModuleDict",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ParameterDict",
    "torch.nn.modules.container.ParameterList",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.conv.Conv1d",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.conv.Conv3d",
    "torch.nn.modules.conv.ConvTranspose2d",
    "torch.nn.modules.normalization.GroupNorm",
    "torch.nn.modules.normalization.LayerNorm",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.sparse.Embedding",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.activation.GELU",
]


def _looks_like_module_state(state: Any) -> bool:
    return isinstance(state, Mapping) and any(k in state for k in ("_parameters", "_buffers", "_modules"))


def _record_persistent_obj(meta: Any) -> PersistentRecord:
    """Replacement for ``torch_utils.persistence._reconstruct_persistent_obj``: records, never executes."""
    if not isinstance(meta, Mapping):
        raise pickle.UnpicklingError(f"persistent object: expected a dict of metadata, got {type(meta).__name__}")
    class_name = meta.get("class_name")
    if not isinstance(class_name, str):
        raise pickle.UnpicklingError(f"persistent object without a class name (meta keys: {sorted(map(str, meta))})")
    state = meta.get("state")
    if state is None:
        state = {}
    if not isinstance(state, Mapping):
        raise pickle.UnpicklingError(f"persistent object {class_name}: state is a {type(state).__name__}, not a dict")
    src = meta.get("module_src")
    digest = hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest() if isinstance(src, str) else None
    # persistence.py (version 6) keeps the constructor arguments in the state; accept them in meta as well.
    init_args = state.get("_init_args", meta.get("init_args"))
    init_kwargs = state.get("_init_kwargs", meta.get("init_kwargs"))
    return PersistentRecord(
        meta.get("module_name"),
        class_name,
        init_args,
        init_kwargs,
        dict(state),
        version=meta.get("version"),
        kind=meta.get("type", "class"),
        module_src_sha256=digest,
    )


def _load_storage_from_bytes(b: Any):
    """Replacement for ``torch.storage._load_from_bytes`` (which uses ``weights_only=False``)."""
    if not isinstance(b, (bytes, bytearray)):
        raise pickle.UnpicklingError(f"storage: expected bytes, got {type(b).__name__}")
    return torch.load(io.BytesIO(bytes(b)), map_location="cpu", weights_only=True)


_STORAGE_TYPES = (torch.TypedStorage, torch.UntypedStorage)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks=None, metadata=None):
    """``torch._utils._rebuild_tensor_v2`` with type checks; stored backward hooks are dropped."""
    if not isinstance(storage, _STORAGE_TYPES):
        raise pickle.UnpicklingError(f"tensor: expected a torch storage, got {type(storage).__name__}")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise pickle.UnpicklingError(f"tensor: metadata is a {type(metadata).__name__}, not a dict")
    return torch._utils._rebuild_tensor_v2(
        storage,
        int(storage_offset),
        tuple(size),
        tuple(stride),
        bool(requires_grad),
        collections.OrderedDict(),
        metadata or None,
    )


def _rebuild_parameter(data, requires_grad, backward_hooks=None):
    """``torch._utils._rebuild_parameter`` with a type check; stored backward hooks are dropped."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"parameter: expected a tensor, got {type(data).__name__}")
    return nn.Parameter(data, bool(requires_grad))


def _build_allow_list() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _record_persistent_obj,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("__builtin__", "set"): set,  # protocol <= 2 pickles name builtins the Python 2 way
        ("__builtin__", "frozenset"): frozenset,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
        ("torch", "Size"): torch.Size,
        **numpy_globals(),
    }
    for name in ("float16", "bfloat16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"):
        allowed[("torch", name)] = getattr(torch, name)
    for qualified in _TORCH_MODULES:
        module, name = qualified.rsplit(".", 1)
        allowed[(module, name)] = _module_standin(qualified)
    return allowed


#: ``(module, name) -> object`` that the safe unpickler hands out; everything else is refused.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _build_allow_list()


class SafeNvidiaUnpickler(RestrictedUnpickler):
    """An unpickler for NVIDIA's EDM/EDM2 pickles that resolves globals only through :data:`ALLOWED_GLOBALS`
    (refusals raise :class:`UnsafeGlobalError`). Persistent ids are refused too."""

    def __init__(self, file, path: str = "<stream>") -> None:
        super().__init__(
            file,
            path,
            ALLOWED_GLOBALS,
            refused=UnsafeGlobalError,
            hint="it is not on the allow-list of the safe NVIDIA pickle loader "
            "(ddo_lightning.checkpoints.nvidia_pickle.ALLOWED_GLOBALS)",
        )
        self.path = path


# ------------------------------------------------------------------------------------------------
# Public API


def load_nvidia_pickle(path: str | os.PathLike) -> dict:
    """Read an NVIDIA EDM/EDM2 pickle without executing anything stored in it.

    Returns the top-level dict (an :class:`EasyDict` for EDM2) with every persistent object replaced by a
    :class:`PersistentRecord` and every plain ``torch.nn`` module by a :class:`TorchModuleRecord`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"NVIDIA network pickle not found: {path}")
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        try:
            obj = SafeNvidiaUnpickler(f, path).load()
        except UnsafeGlobalError:
            raise
        except Exception as err:  # truncated, not a pickle, malformed contents, unsafe inner storage...
            raise NvidiaPickleError(f"cannot read NVIDIA network pickle {path}: {type(err).__name__}: {err}") from err
    if not isinstance(obj, dict):
        raise NvidiaPickleError(f"{path} holds a {type(obj).__name__}, not the dict of an EDM/EDM2 network pickle")
    return obj


def _flatten(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = obj.state if isinstance(obj, (PersistentRecord, TorchModuleRecord)) else None
    if not isinstance(state, Mapping):
        where = prefix[:-1] or "<root>"
        raise NvidiaPickleError(f"submodule {where!r} is a {type(obj).__name__}, not a module of the pickle")
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    for kind, entries in (("parameter", state.get("_parameters")), ("buffer", state.get("_buffers"))):
        for name, value in (entries or {}).items():
            if value is None or (kind == "buffer" and name in non_persistent):
                continue  # what nn.Module.state_dict() skips as well
            if not isinstance(value, torch.Tensor):
                raise NvidiaPickleError(f"{kind} {prefix + name!r} is a {type(value).__name__}, not a tensor")
            out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _flatten(child, f"{prefix}{name}.", out)


def network_from_record(record: PersistentRecord) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """``(class_name, init_kwargs, state_dict)`` of a persistent network record.

    The state dict has the keys and order that ``nn.Module.state_dict()`` of the original network gives:
    parameters, then persistent buffers, then submodules depth-first; ``None`` entries and buffers listed in
    ``_non_persistent_buffers_set`` are skipped. (Extra state from ``get_extra_state`` cannot be recovered
    without running the stored code; EDM/EDM2 networks have none.)
    """
    if not isinstance(record, PersistentRecord) or not record.is_module:
        raise NvidiaPickleError(f"not a persistent network record: {record!r}")
    if record.init_args:
        raise NvidiaPickleError(
            f"{record.class_name} was constructed with positional arguments "
            f"({len(record.init_args)}); only keyword arguments can be rebuilt"
        )
    init_kwargs = dict(record.init_kwargs or {})
    state_dict: dict[str, torch.Tensor] = {}
    _flatten(record, "", state_dict)
    return record.class_name, init_kwargs, state_dict


def _default_build(path: str) -> Callable[[str, dict], nn.Module]:
    factory = "ddo_lightning.networks.edm_factory"
    try:
        from ddo_lightning.networks.edm_factory import build_edm_network
    except ImportError as err:
        if isinstance(err, ModuleNotFoundError) and err.name != factory:
            raise  # something the factory itself imports is missing: a real error
        raise NvidiaPickleError(
            f"cannot build the network of {path}: pass build=(class_name, init_kwargs) -> "
            f"nn.Module ({factory}.build_edm_network is not available: {err})"
        ) from err
    return build_edm_network


def read_nvidia_network(
    path: str | os.PathLike, key: str = "ema"
) -> tuple[str, dict, dict[str, torch.Tensor], PersistentRecord]:
    """``(class_name, init_kwargs, state_dict, record)`` of the network stored at ``key``, without
    building anything (the state dict keeps the file's dtypes)."""
    path = os.fspath(path)
    data = load_nvidia_pickle(path)
    if key not in data:
        raise NvidiaPickleError(f"{path} has no {key!r} entry; keys present: {', '.join(map(repr, data)) or 'none'}")
    record = data[key]
    if not isinstance(record, PersistentRecord) or not record.is_module:
        raise NvidiaPickleError(f"{path}[{key!r}] is not a persistent network (found {record!r})")
    try:
        class_name, init_kwargs, state_dict = network_from_record(record)
    except NvidiaPickleError as err:
        raise NvidiaPickleError(f"{path}[{key!r}]: {err}") from err
    return class_name, init_kwargs, state_dict, record


def load_network_from_nvidia_pickle(
    path: str | os.PathLike,
    key: str = "ema",
    build: Callable[[str, dict], nn.Module] | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> nn.Module:
    """Build our re-implementation of the network stored at ``key`` of an NVIDIA pickle and load its weights.

    ``build(class_name, init_kwargs)`` makes the module (default:
    ``ddo_lightning.networks.edm_factory.build_edm_network``). The weights are loaded with ``strict=True``
    and ``assign=True``: with ``dtype`` given (default fp32) floating tensors are cast to it (and the module
    moved to it first); with ``dtype=None`` the module holds the file's tensors as stored (EDM2: fp16),
    bit-identical. The module's train/eval mode is the one stored (snapshots are saved in eval mode).
    """
    path = os.fspath(path)
    class_name, init_kwargs, state_dict, record = read_nvidia_network(path, key)
    if build is None:
        build = _default_build(path)
    try:
        net = build(class_name, init_kwargs)
    except Exception as err:
        raise NvidiaPickleError(
            f"{path}[{key!r}]: cannot build network class {class_name!r}: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(net, nn.Module):
        raise NvidiaPickleError(
            f"{path}[{key!r}]: build({class_name!r}, ...) returned a {type(net).__name__}, not an nn.Module"
        )
    if dtype is not None:
        net.to(dtype)
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    check_same_architecture(net, state_dict, what=f"NVIDIA pickle {path}[{key!r}]")
    net.load_state_dict(state_dict, strict=True, assign=True)
    training = record.state.get("training")
    if isinstance(training, bool):
        net.train(training)
    return net


# ------------------------------------------------------------------------------------------------
# EDM2 training states (training-state-*.pt): torch.save zip files, read with weights_only=True

_EDM2_STATE_WHICH = ("net", "ema")


def _offending_global(message: str) -> str | None:
    import re

    m = re.search(r"GLOBAL ([\w.]+)", message)  # torch's wording varies ("Unsupported global: GLOBAL x.y", ...)
    return m.group(1) if m else None


def read_edm2_training_state(path: str | os.PathLike) -> dict:
    """The dict of an EDM2 ``training-state-*.pt`` (``state``, ``net``, ``loss_fn``, ``optimizer``, ``ema``),
    read with ``torch.load(weights_only=True)``: tensors and plain containers only, nothing executes.

    EDM2 stores ``state`` as a ``dnnlib.util.EasyDict``; that one name is admitted and read as a plain
    ``dict`` (its items only). Any other global makes it fail with :class:`NvidiaPickleError` naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EDM2 training state not found: {path}")
    import contextlib

    safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; (obj, name) pairs since 2.6
    admit = safe([(dict, "dnnlib.util.EasyDict")]) if safe is not None else contextlib.nullcontext()
    try:
        with admit:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        name = _offending_global(str(err))
        what = f"the type '{name}'" if name else "an object that is not a tensor or a plain container"
        raise NvidiaPickleError(
            f"{path} holds {what}, which torch.load(weights_only=True) refuses; only training states made of "
            "tensors and plain containers (plus EDM2's dnnlib.util.EasyDict) are read, nothing in the file is run"
        ) from err
    except Exception as err:  # not a torch zip, truncated, ...
        raise NvidiaPickleError(f"cannot read EDM2 training state {path}: {type(err).__name__}: {err}") from err
    if not isinstance(obj, Mapping):
        raise NvidiaPickleError(f"{path} holds a {type(obj).__name__}, not the dict of an EDM2 training state")
    return dict(obj)


def load_edm2_training_state(
    path: str | os.PathLike, which: str = "ema", ema_index: int = 0, dtype: torch.dtype | None = torch.float32
) -> dict[str, torch.Tensor]:
    """Network weights from an EDM2 ``training-state-*.pt``: ``which='net'`` the raw trained weights,
    ``'ema'`` the ``ema_index``-th power-function EMA (``ema['stds'][ema_index]``). Floating tensors are
    cast to ``dtype`` (None: as stored)."""
    if which not in _EDM2_STATE_WHICH:
        raise ValueError(f"which must be one of {_EDM2_STATE_WHICH}, got {which!r}")
    path = os.fspath(path)
    obj = read_edm2_training_state(path)
    if which == "net":
        state = obj.get("net")
    else:
        ema = obj.get("ema")
        emas = ema.get("emas") if isinstance(ema, Mapping) else None
        if not isinstance(emas, (list, tuple)) or not -len(emas) <= ema_index < len(emas):
            have = len(emas) if isinstance(emas, (list, tuple)) else 0
            raise NvidiaPickleError(
                f"{path}: no EMA number {ema_index} (it holds {have}; stds {ema.get('stds') if isinstance(ema, Mapping) else None})"
            )
        state = emas[ema_index]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NvidiaPickleError(f"{path}: '{which}' is not a state dict of tensors")
    return {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in state.items()}
