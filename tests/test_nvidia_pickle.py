"""Safe loading of NVIDIA's code-carrying EDM/EDM2 network pickles (ddo_lightning.checkpoints.nvidia_pickle).

The fixture pickles are written here, in the structure of NVIDIA's files but with code of our own: objects
of "persistent" classes pickle as ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = dict(type='class', version=6, module_src=..., class_name=..., state=obj.__dict__)`` and the
constructor arguments recorded in the state (``_init_args`` / ``_init_kwargs``). To make pickle record the
names ``torch_utils.persistence._reconstruct_persistent_obj`` and ``dnnlib.util.EasyDict``, stand-in
modules of those names exist in ``sys.modules`` while dumping only. The stored ``module_src`` writes a
marker file and raises if it is ever executed.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import pickle
import pickletools
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from ddo_lightning.checkpoints import (
    ArchitectureMismatch,
    NvidiaPickleError,
    PersistentRecord,
    UnsafeGlobalError,
    load_network_from_nvidia_pickle,
    load_nvidia_pickle,
    network_from_record,
)
from ddo_lightning.checkpoints.nvidia_pickle import ALLOWED_GLOBALS, EasyDict, TorchModuleRecord

# ------------------------------------------------------------------------------------------------
# NVIDIA's global names, importable only while a fixture is being dumped


def _reconstruct_persistent_obj(meta):  # recorded by pickle as torch_utils.persistence._reconstruct_persistent_obj
    raise AssertionError("the dump-time stand-in of torch_utils.persistence was used while loading")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class FakeEasyDict(dict):  # recorded by pickle as dnnlib.util.EasyDict
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


FakeEasyDict.__module__, FakeEasyDict.__name__, FakeEasyDict.__qualname__ = "dnnlib.util", "EasyDict", "EasyDict"

_NVIDIA_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")


@contextlib.contextmanager
def nvidia_names(reconstruct=_reconstruct_persistent_obj):
    assert not any(name in sys.modules for name in _NVIDIA_MODULES)
    mods = {name: types.ModuleType(name) for name in _NVIDIA_MODULES}
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = reconstruct
    mods["torch_utils"].persistence = mods["torch_utils.persistence"]
    mods["dnnlib.util"].EasyDict = FakeEasyDict
    mods["dnnlib"].util = mods["dnnlib.util"]
    sys.modules.update(mods)
    try:
        yield
    finally:
        for name in _NVIDIA_MODULES:
            sys.modules.pop(name, None)


def nvidia_names_absent() -> bool:
    return not any(name in sys.modules for name in _NVIDIA_MODULES) and not any(
        name.startswith("_imported_module_") for name in sys.modules
    )


_DUMP = {"module_src": None}  # the source stored in every persistent object of the pickle being written


def persistent(cls):
    """Our own minimal imitation of the pickling side of ``persistent_class``."""

    class Persistent(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        def __reduce__(self):
            meta = dict(
                type="class", version=6, module_src=_DUMP["module_src"], class_name=cls.__name__, state=self.__dict__
            )
            return _reconstruct_persistent_obj, (meta,), None

    Persistent.__name__ = Persistent.__qualname__ = cls.__name__
    return Persistent


# ------------------------------------------------------------------------------------------------
# A tiny network tree with the features of EDM/EDM2 networks


@persistent
class Linear(nn.Linear):
    pass


@persistent
class Conv2d(nn.Conv2d):
    pass


@persistent
class Block(nn.Module):
    def __init__(self, channels, skip_scale=1.0):
        super().__init__()
        self.conv = Conv2d(in_channels=channels, out_channels=channels, kernel_size=3, padding=1, bias=False)
        self.norm = nn.GroupNorm(num_groups=2, num_channels=channels)  # a plain torch module inside
        self.gain = nn.Parameter(torch.randn([]))  # 0-dim, like EDM2's emb_gain
        self.register_buffer("resample_filter", None)  # None buffer, like EDM without resampling
        self.register_buffer("scratch", torch.randn(channels), persistent=False)
        self.skip_scale = skip_scale


@persistent
class TinyUNet(nn.Module):
    def __init__(self, img_channels=3, channels=4, num_blocks=2, block_kwargs=None):
        super().__init__()
        self.map_noise = Linear(in_features=4, out_features=channels)
        self.enc = nn.ModuleDict()  # plain ModuleDict of persistent blocks, like EDM/EDM2
        for i in range(num_blocks):
            self.enc[f"8x8_block{i}"] = Block(channels, **(block_kwargs or {}))
        self.out = Conv2d(in_channels=channels, out_channels=img_channels, kernel_size=1)
        self.register_buffer("freqs", torch.randn(4))  # persistent buffer, like MPFourier.freqs


@persistent
class Precond(nn.Module):
    def __init__(self, img_resolution, img_channels, sigma_data=0.5, model_kwargs=None):
        super().__init__()
        self.img_resolution, self.sigma_data = img_resolution, sigma_data
        self.label_weights = np.linspace(0, 1, 3, dtype=np.float32)  # a numpy array attribute
        self.model = TinyUNet(img_channels=img_channels, **(model_kwargs or {}))


@persistent
class Loss:  # a persistent object that is not a module, like EDMLoss
    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data


@persistent
class Encoder:  # numpy arrays and scalars in the state, like EDM2's StabilityVAEEncoder
    def __init__(self, raw_mean, raw_std, final_std=0.5):
        self.scale = np.float32(final_std) / np.asarray(raw_std, dtype=np.float32)
        self.bias = -np.asarray(raw_mean, dtype=np.float32) * self.scale
        self.final_std = np.float32(final_std)


def make_net(fp16=False) -> nn.Module:
    torch.manual_seed(0)
    net = Precond(
        img_resolution=8,
        img_channels=3,
        sigma_data=np.float32(0.5),
        model_kwargs=FakeEasyDict(channels=4, num_blocks=2, block_kwargs=FakeEasyDict(skip_scale=np.sqrt(0.5))),
    )
    net = net.eval().requires_grad_(False)
    return net.to(torch.float16) if fp16 else net


def build(class_name, init_kwargs):
    return {"Precond": Precond}[class_name](**init_kwargs)


def evil_source(marker) -> str:
    return (
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('the stored code ran')\n"
        "raise RuntimeError('the stored module source was executed')\n"
    )


def dump(data, module_src, protocol=4) -> bytes:
    _DUMP["module_src"] = module_src
    with nvidia_names():
        blob = pickle.dumps(data, protocol=protocol)
    assert nvidia_names_absent()
    return blob


def edm_like(net):
    return dict(
        ema=net,
        loss_fn=Loss(),
        augment_pipe=None,
        dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="x.zip", resolution=8),
    )


def edm2_like(net):
    data = FakeEasyDict(
        encoder=Encoder(raw_mean=[0.1, 0.2], raw_std=[4.0, 5.0]),
        loss_fn=Loss(),
        dataset_kwargs=FakeEasyDict(class_name="training.dataset.ImageFolderDataset", path="y.zip"),
    )
    data.ema = net
    return data


def globals_in(blob: bytes) -> set[str]:
    """``module.name`` of every global a pickle refers to (protocols 0-5), following memoized strings."""
    names, memo, pushed = set(), {}, []
    for op, arg, _ in pickletools.genops(blob):
        top = pushed[-1] if pushed else None
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            pushed.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = top
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = top
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            names.add(f"{pushed[-2]}.{pushed[-1]}")
            pushed.append(None)
        elif op.name in ("GLOBAL", "INST"):
            names.add(arg.replace(" ", "."))
            pushed.append(None)
        else:
            pushed.append(None)  # good enough: only the two pushes before STACK_GLOBAL matter
    return names


def respell(blob: bytes, old: str, new: str) -> bytes:
    """Rewrite the module name ``old`` -> ``new`` in a pickle (frames dropped: they are optional)."""
    ops, out = list(pickletools.genops(blob)), bytearray()
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(blob)
        if op.name == "FRAME":
            continue
        if op.name == "SHORT_BINUNICODE" and arg == old:
            enc = new.encode()
            out += b"\x8c" + bytes([len(enc)]) + enc
        elif op.name == "GLOBAL" and arg.split(" ")[0] == old:
            out += b"c" + f"{new}\n{arg.split(' ')[1]}\n".encode()
        else:
            out += blob[pos:end]
    return bytes(out)


def assert_same_state(got: dict, want: dict):
    assert list(got) == list(want)
    for k in want:
        assert type(got[k]) is type(want[k]) and got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k


# ------------------------------------------------------------------------------------------------
# Round trip: records, state dict, strict load, the stored code never runs


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_edm_like_pickle_round_trip_without_running_stored_code(tmp_path, protocol):
    marker = tmp_path / "marker"
    src = evil_source(marker)
    net = make_net()
    path = tmp_path / "network-snapshot-000000.pkl"
    blob = dump(edm_like(net), src, protocol)
    path.write_bytes(blob)
    names = globals_in(blob)
    assert {
        "torch_utils.persistence._reconstruct_persistent_obj",
        "torch.storage._load_from_bytes",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_tensor_v2",
        "torch.nn.modules.container.ModuleDict",
        "torch.nn.modules.normalization.GroupNorm",
        "dnnlib.util.EasyDict",
        "numpy._core.multiarray.scalar",
        "numpy.dtype",
    } <= names

    array_global = "numpy._core.numeric._frombuffer" if protocol >= 5 else "numpy._core.multiarray._reconstruct"
    assert array_global in names

    data = load_nvidia_pickle(path)
    assert not marker.exists() and nvidia_names_absent()
    assert set(data) == {"ema", "loss_fn", "augment_pipe", "dataset_kwargs"}
    assert data["augment_pipe"] is None and data["dataset_kwargs"]["resolution"] == 8
    rec = data["ema"]
    assert isinstance(rec, PersistentRecord) and rec.class_name == "Precond" and rec.module_name is None
    assert rec.version == 6 and rec.module_src_sha256 == hashlib.sha256(src.encode()).hexdigest()
    assert rec.init_args == () and rec.init_kwargs["img_resolution"] == 8
    mk = rec.init_kwargs["model_kwargs"]
    assert type(mk) is EasyDict and mk.channels == 4 and type(mk.block_kwargs) is EasyDict
    skip = mk.block_kwargs.skip_scale
    assert type(skip) is np.float64 and skip == np.sqrt(0.5)
    assert type(rec.init_kwargs["sigma_data"]) is np.float32
    weights = rec.state["label_weights"]
    assert weights.dtype == np.float32 and np.array_equal(weights, net.label_weights)
    assert isinstance(rec.state["_modules"]["model"].state["_modules"]["enc"], TorchModuleRecord)
    assert data["loss_fn"].class_name == "Loss" and data["loss_fn"].state["P_std"] == 1.2
    assert not data["loss_fn"].is_module

    class_name, init_kwargs, sd = network_from_record(rec)
    assert class_name == "Precond" and type(init_kwargs) is dict
    want = net.state_dict()
    assert_same_state(sd, want)
    assert not any(k.endswith(("scratch", "resample_filter", "conv.bias")) for k in sd)  # skipped like torch

    loaded = load_network_from_nvidia_pickle(path, build=build)
    assert isinstance(loaded, Precond) and not loaded.training
    assert_same_state(loaded.state_dict(), want)
    assert not marker.exists() and nvidia_names_absent()


def test_edm2_like_fp16_pickle_cast_and_kept(tmp_path):
    marker = tmp_path / "marker"
    net = make_net(fp16=True)
    path = tmp_path / "edm2-img64-s-0000000-0.100.pkl"
    path.write_bytes(dump(edm2_like(net), evil_source(marker)))
    want = net.state_dict()
    assert all(v.dtype == torch.float16 for v in want.values())  # buffers too, as in EDM2's files

    data = load_nvidia_pickle(path)
    assert type(data) is EasyDict and list(data) == ["encoder", "loss_fn", "dataset_kwargs", "ema"]
    enc = data["encoder"].state
    np.testing.assert_array_equal(enc["scale"], np.float32(0.5) / np.array([4.0, 5.0], np.float32))
    assert enc["scale"].dtype == np.float32 and type(enc["final_std"]) is np.float32
    assert_same_state(network_from_record(data["ema"])[2], want)

    as_fp32 = load_network_from_nvidia_pickle(path, build=build)  # default dtype=torch.float32
    got = as_fp32.state_dict()
    assert list(got) == list(want)
    for k, v in got.items():
        assert v.dtype == torch.float32 and torch.equal(v, want[k].float()), k

    as_stored = load_network_from_nvidia_pickle(path, build=build, dtype=None)
    assert_same_state(as_stored.state_dict(), want)
    assert all(p.dtype == torch.float16 for p in as_stored.parameters())
    assert not marker.exists() and nvidia_names_absent()


def test_numpy_1x_module_names_load(tmp_path):
    net = make_net()
    blob = dump(edm2_like(net), "raise RuntimeError('never')\n")
    old = respell(
        respell(blob, "numpy._core.multiarray", "numpy.core.multiarray"), "numpy._core.numeric", "numpy.core.numeric"
    )
    names = globals_in(old)
    assert {"numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar"} <= names
    assert not any(n.startswith("numpy._core") for n in names)
    paths = {}
    for tag, b in (("np2", blob), ("np1", old)):
        paths[tag] = tmp_path / f"{tag}.pkl"
        paths[tag].write_bytes(b)
    new_data, old_data = load_nvidia_pickle(paths["np2"]), load_nvidia_pickle(paths["np1"])
    for k in ("scale", "bias", "final_std"):
        a, b = new_data["encoder"].state[k], old_data["encoder"].state[k]
        assert type(a) is type(b) and a.dtype == b.dtype and np.array_equal(a, b)
    assert_same_state(network_from_record(old_data["ema"])[2], net.state_dict())


def test_control_a_code_running_unpickle_would_trip_the_marker(tmp_path):
    """Makes sure the marker really detects execution: a reconstruct that execs module_src (as NVIDIA's
    persistence does) writes it and raises."""
    marker = tmp_path / "marker"
    blob = dump(edm_like(make_net()), evil_source(marker))

    def executing(meta):
        exec(meta["module_src"], {})

    executing.__module__ = "torch_utils.persistence"
    with nvidia_names(reconstruct=executing), pytest.raises(RuntimeError, match="stored module source was executed"):
        pickle.loads(blob)
    assert marker.exists()


# ------------------------------------------------------------------------------------------------
# Refused globals


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return eval, (f"__import__('pathlib').Path({self.marker!r}).write_text('eval ran')",)


class _EvilStorage:
    def __init__(self, payload: bytes):
        self.payload = payload

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.payload,)


def test_os_system_is_refused_and_named(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(UnsafeGlobalError, match=r"'os\.system'") as err:
        load_nvidia_pickle(path)
    assert str(path) in str(err.value) and not marker.exists()


def test_eval_inside_a_network_state_is_refused_and_named(tmp_path):
    marker = tmp_path / "marker"
    net = make_net()
    net.model.enc["8x8_block0"].payload = _Evil(marker)
    path = tmp_path / "evil.pkl"
    path.write_bytes(dump(edm_like(net), "pass\n"))
    with pytest.raises(UnsafeGlobalError, match=r"'builtins\.eval'") as err:
        load_network_from_nvidia_pickle(path, build=build)
    assert str(path) in str(err.value) and not marker.exists()


def test_storage_bytes_are_loaded_weights_only(tmp_path):
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Evil(marker), protocol=2)
    path = tmp_path / "evil-storage.pkl"
    path.write_bytes(pickle.dumps(dict(ema=_EvilStorage(payload)), protocol=4))
    with pytest.raises(NvidiaPickleError) as err:
        load_nvidia_pickle(path)
    assert str(path) in str(err.value) and not marker.exists()


def test_allow_list_has_both_numpy_spellings_and_nothing_dangerous():
    keys = {f"{m}.{n}" for m, n in ALLOWED_GLOBALS}
    for prefix in ("numpy.core", "numpy._core"):
        assert {f"{prefix}.multiarray._reconstruct", f"{prefix}.multiarray.scalar"} <= keys
    dangerous = {eval, exec, getattr, setattr, __import__, compile, open, torch.load, pickle.loads}
    assert not any(v in dangerous for v in ALLOWED_GLOBALS.values() if not isinstance(v, type))
    assert ALLOWED_GLOBALS[("torch.storage", "_load_from_bytes")] is not torch.storage._load_from_bytes


# ------------------------------------------------------------------------------------------------
# Clear errors, each naming the file


@pytest.fixture
def snapshot(tmp_path):
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(dump(edm_like(make_net()), "raise RuntimeError('never')\n"))
    return path


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pkl"
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_nvidia_pickle(path)
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_network_from_nvidia_pickle(path, build=build)


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "not-a-dict"])
def test_unreadable_files(snapshot, kind):
    blob = snapshot.read_bytes()
    content = {
        "truncated": blob[: len(blob) // 2],
        "empty": b"",
        "garbage": b"\x00\x01 this is not a pickle",
        "not-a-dict": pickle.dumps([1, 2, 3]),
    }[kind]
    snapshot.write_bytes(content)
    with pytest.raises(NvidiaPickleError) as err:
        load_nvidia_pickle(snapshot)
    assert str(snapshot) in str(err.value)


def test_wrong_key_lists_the_keys(snapshot):
    with pytest.raises(NvidiaPickleError, match="'net'") as err:
        load_network_from_nvidia_pickle(snapshot, key="net", build=build)
    msg = str(err.value)
    assert str(snapshot) in msg and all(repr(k) in msg for k in ("ema", "loss_fn", "augment_pipe", "dataset_kwargs"))


@pytest.mark.parametrize("key", ["loss_fn", "augment_pipe", "dataset_kwargs"])
def test_key_without_a_network(snapshot, key):
    with pytest.raises(NvidiaPickleError, match="not a persistent network") as err:
        load_network_from_nvidia_pickle(snapshot, key=key, build=build)
    assert str(snapshot) in str(err.value)


def test_unknown_class_and_wrong_architecture(snapshot):
    with pytest.raises(NvidiaPickleError, match="'Precond'") as err:
        load_network_from_nvidia_pickle(snapshot, build=lambda name, kw: {}[name])
    assert str(snapshot) in str(err.value)

    def smaller(name, kw):
        kw["model_kwargs"] = dict(kw["model_kwargs"], num_blocks=1)
        return build(name, kw)

    with pytest.raises(ArchitectureMismatch, match="enc.8x8_block1") as err:
        load_network_from_nvidia_pickle(snapshot, build=smaller)
    assert str(snapshot) in str(err.value)


def test_default_build_unavailable(snapshot, monkeypatch):
    monkeypatch.setitem(sys.modules, "ddo_lightning.networks.edm_factory", None)
    with pytest.raises(NvidiaPickleError, match="build") as err:
        load_network_from_nvidia_pickle(snapshot)
    assert str(snapshot) in str(err.value)


def test_init_from_a_pickle_loads_the_ema_into_a_declared_network(tmp_path):
    """`model.init_from: <file>.pkl`: DDOModule's loader reads the EMA network of an NVIDIA pickle
    (fp16 here, EDM2-like) into the network declared in the config, as fp32, strictly."""
    from ddo_lightning.checkpoints import denoiser_state_dict, load_network_weights

    marker = tmp_path / "ran"
    net = make_net(fp16=True)
    path = tmp_path / "edm2-like.pkl"
    path.write_bytes(dump(edm2_like(net), evil_source(marker)))
    state = denoiser_state_dict(str(path))
    want = net.state_dict()
    assert state.keys() == want.keys()
    assert all(state[k].dtype == torch.float32 and torch.equal(state[k], want[k].float()) for k in want)
    fresh = make_net().requires_grad_(True)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_network_weights(fresh, str(path))
    assert all(torch.equal(fresh.state_dict()[k], want[k].float()) for k in want)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        denoiser_state_dict(str(tmp_path / "missing.pkl"))


def test_ddo_convert_writes_plain_weights(tmp_path, capsys):
    """`ddo convert in.pkl out.pt`: plain tensors (weights_only-loadable), usable as init_from."""
    from ddo_lightning.checkpoints import load_network_weights
    from ddo_lightning.cli import main

    marker = tmp_path / "ran"
    net = make_net(fp16=True)
    src = tmp_path / "edm2-like.pkl"
    src.write_bytes(dump(edm2_like(net), evil_source(marker)))
    out = tmp_path / "converted.pt"
    main(["convert", str(src), str(out)])
    assert "Precond" in capsys.readouterr().out
    payload = torch.load(out, weights_only=True)
    want = net.state_dict()
    assert payload["nvidia_class"] == "Precond" and payload["state_dict"].keys() == want.keys()
    assert all(torch.equal(payload["state_dict"][k], want[k].float()) for k in want)
    assert '"img_resolution": 8' in payload["init_kwargs_json"]
    load_network_weights(make_net(), str(out))  # the converted file works as model.init_from
    main(["convert", str(src), str(tmp_path / "fp16.pt"), "--keep-dtype"])
    assert torch.load(tmp_path / "fp16.pt", weights_only=True)["state_dict"]["model.out.weight"].dtype == torch.float16
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# Import checks what it loads: the recorded class and output-changing settings vs the declared network

TINY_KW = dict(  # recorded by both EDM's and EDM2's tiny test networks
    img_resolution=8,
    img_channels=3,
    label_dim=0,
    model_channels=16,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[4],
    dropout=0.0,
)
EDM_KW = dict(TINY_KW, use_fp16=False, model_type="SongUNet", augment_dim=0)
EDM2_KW = dict(TINY_KW, use_fp16=True, channels_per_head=8)


class _Persisted:
    """Pickles as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``, the way an object of a
    ``persistent_class`` does; ``meta['state']`` is a module's ``__dict__`` plus the recorded kwargs."""

    def __init__(self, class_name, init_kwargs, module: nn.Module):
        state = dict(module.__dict__, _init_args=(), _init_kwargs=copy.deepcopy(init_kwargs))
        self.meta = dict(type="class", version=6, module_src=_DUMP["module_src"], class_name=class_name, state=state)

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


def plain_tree(state: dict) -> nn.Module:
    """The tensors of ``state`` as buffers of a tree of plain ``torch.nn.Module`` objects (dotted names ->
    submodules): pickled, it reads back with these names through the safe loader's Module stand-in."""
    root = nn.Module()
    for name, t in state.items():
        *path, leaf = name.split(".")
        m = root
        for part in path:
            if part not in m._modules:
                m.add_module(part, nn.Module())
            m = m._modules[part]
        m.register_buffer(leaf, t.detach().clone())
    return root


def nvidia_file(tmp_path, name, class_name, init_kwargs, net: nn.Module):
    """An EDM-format snapshot whose ``ema`` records ``class_name(**init_kwargs)`` with the weights of ``net``."""
    path = tmp_path / name
    _DUMP["module_src"] = "raise RuntimeError('never')\n"
    path.write_bytes(
        dump(
            dict(ema=_Persisted(class_name, init_kwargs, plain_tree(net.state_dict())), loss_fn=Loss()),
            _DUMP["module_src"],
        )
    )
    return str(path)


def edm_net(class_name="EDMPrecond", **changes):
    from ddo_lightning.networks import build_edm_network

    torch.manual_seed(0)
    net = build_edm_network(class_name, dict(EDM_KW, **changes))
    with torch.no_grad():  # every weight non-trivial (EDM zero-initialises output layers): F ≠ 0
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net.eval()


def test_vp_file_into_an_edm_network_is_refused_naming_both(tmp_path):
    """A VPPrecond file and an EDMPrecond config have the same weight names and shapes: the strict load
    alone would accept it. The recorded class refuses it, naming both sides and the fix; the same for
    `ddo convert`'s .pt of it and for DDOModule's init_from (before any training)."""
    from ddo_lightning.checkpoints import RecordedNetworkMismatch, load_network_weights
    from ddo_lightning.training import DDOModule

    vp = edm_net("VPPrecond")
    declared = edm_net("EDMPrecond")
    assert declared.state_dict().keys() == vp.state_dict().keys()  # why names and shapes cannot tell
    path = nvidia_file(tmp_path, "edm-cifar10-32x32-uncond-vp.pkl", "VPPrecond", EDM_KW, vp)
    with pytest.raises(RecordedNetworkMismatch) as err:
        load_network_weights(declared, path, what=f"init_from {path}")
    msg = str(err.value)
    assert msg.startswith(
        f"init_from {path} holds a VPPrecond(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-05, "
        "img_resolution=8, img_channels=3, label_dim=0) but the config declares EDMPrecond: "
        "set model.init_args.network.class_path to ddo_lightning.networks.VPPrecond"
    )
    assert "model: ddo_lightning.networks.SongUNet" in msg
    assert isinstance(err.value, ValueError)
    # nothing was loaded into the declared network
    assert all(torch.equal(v, edm_net("EDMPrecond").state_dict()[k]) for k, v in declared.state_dict().items())

    from ddo_lightning.cli import main

    pt = tmp_path / "converted.pt"
    main(["convert", path, str(pt)])
    with pytest.raises(RecordedNetworkMismatch, match=r"converted\.pt holds a VPPrecond.*declares EDMPrecond"):
        load_network_weights(edm_net("EDMPrecond"), str(pt))
    with pytest.raises(RecordedNetworkMismatch, match=rf"^init_from {path} holds a VPPrecond"):
        DDOModule(edm_net("EDMPrecond"), init_from=path)


@pytest.mark.parametrize(
    "change, key, file_value, config_value, where",
    [
        (dict(sigma_data=0.6), "sigma_data", "0.6", "0.5", "model.init_args.network.init_args.sigma_data"),
        (dict(label_dim=10), "label_dim", "10", "0", "model.init_args.network.init_args.model.init_args.label_dim"),
        (
            dict(img_resolution=16),
            "img_resolution",
            "16",
            "8",
            "model.init_args.network.init_args.model.init_args.img_resolution",
        ),
    ],
)
def test_settings_that_change_outputs_are_refused(tmp_path, change, key, file_value, config_value, where):
    """Same class, another sigma_data / label width / resolution: refused, naming the setting, both values
    and where the config sets it (checked before names and shapes, which a label width also changes)."""
    from ddo_lightning.checkpoints import RecordedNetworkMismatch, load_network_weights

    src = edm_net("EDMPrecond", **change)
    path = nvidia_file(tmp_path, "snap.pkl", "EDMPrecond", dict(EDM_KW, **change), src)
    with pytest.raises(RecordedNetworkMismatch) as err:
        load_network_weights(edm_net("EDMPrecond"), path)
    assert str(err.value) == (
        f"checkpoint {path} holds an EDMPrecond whose settings differ from the declared EDMPrecond's, and they change "
        f"its outputs: {key}: file {file_value}, config {config_value} ({where}). Set them to the file's values, or "
        "choose a matching checkpoint"
    )


@pytest.mark.parametrize(
    "class_name, changes",
    [
        ("VPPrecond", dict(beta_min=0.2)),
        ("VEPrecond", dict(sigma_max=50.0)),
        ("iDDPMPrecond", dict(C_2=0.01)),
    ],
)
def test_class_specific_settings_are_compared(tmp_path, class_name, changes):
    from ddo_lightning.checkpoints import RecordedNetworkMismatch, load_network_weights

    key, value = next(iter(changes.items()))
    path = nvidia_file(tmp_path, "snap.pkl", class_name, dict(EDM_KW, **changes), edm_net(class_name, **changes))
    with pytest.raises(RecordedNetworkMismatch, match=rf"{key}: file {value:g}, config "):
        load_network_weights(edm_net(class_name), path)


@pytest.mark.parametrize("class_name", ["EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond"])
def test_matching_file_loads_and_gives_the_files_denoiser(tmp_path, class_name):
    """Same class and settings; settings that do not change outputs (use_fp16, dropout, recorded as
    numpy float32 like EDM's) differ: it loads, and the declared network's D is the source network's."""
    from ddo_lightning.checkpoints import load_network_weights

    src = edm_net(class_name)
    recorded = dict(
        EDM_KW,
        use_fp16=True,
        dropout=np.float32(0.13),
        **({"sigma_data": np.float32(0.5)} if class_name == "EDMPrecond" else {}),
    )
    path = nvidia_file(tmp_path, "snap.pkl", class_name, recorded, src)
    declared = edm_net(class_name)
    with torch.no_grad():
        for p in declared.parameters():
            p.zero_()
    load_network_weights(declared, path)
    x, sigma = torch.randn(2, 3, 8, 8) * 5, torch.tensor([5.0, 0.3])
    assert torch.equal(declared(x, sigma), src(x, sigma))


def test_edm2_file_checked_against_edm2precond(tmp_path):
    """EDM2's `Precond` is our EDM2Precond: its sigma_data and attention heads are compared, use_fp16 is not;
    into an EDMPrecond it is refused."""
    from ddo_lightning.checkpoints import RecordedNetworkMismatch, load_network_weights
    from ddo_lightning.networks import EDM2Precond

    def edm2(**changes):
        kw = dict(EDM2_KW, **changes)
        kw.pop("use_fp16")
        torch.manual_seed(0)
        return EDM2Precond(**kw, use_fp16=False).eval()

    path = nvidia_file(tmp_path, "edm2.pkl", "Precond", EDM2_KW, edm2())
    load_network_weights(edm2(), path)  # recorded use_fp16=True, declared False: fine
    with pytest.raises(
        RecordedNetworkMismatch,
        match=r"^checkpoint .* holds an EDM2 Precond\(img_resolution=8.*"
        r"declares EDMPrecond: set .*ddo_lightning.networks.EDM2Precond",
    ):
        load_network_weights(edm_net("EDMPrecond"), path)
    other = nvidia_file(tmp_path, "edm2-sd.pkl", "Precond", dict(EDM2_KW, sigma_data=0.6), edm2(sigma_data=0.6))
    with pytest.raises(RecordedNetworkMismatch, match=r"sigma_data: file 0.6, config 0.5"):
        load_network_weights(edm2(), other)
    heads = nvidia_file(
        tmp_path, "edm2-heads.pkl", "Precond", dict(EDM2_KW, channels_per_head=16), edm2(channels_per_head=16)
    )
    with pytest.raises(RecordedNetworkMismatch, match=r"channels_per_head: file 16, config 8 \(4 heads at width 32\)"):
        load_network_weights(edm2(), heads)


def test_ddo_sample_refuses_a_vp_file_for_an_edm_config(tmp_path, capsys):
    """`ddo sample --ckpt vp.pkl` with a config declaring EDMPrecond: exit 2, one line naming both."""
    from ddo_lightning.commands import run_command

    unet = {k: v for k, v in EDM_KW.items() if k not in ("img_channels", "use_fp16", "model_type")}
    cfg = {
        "model": {
            "class_path": "ddo_lightning.training.DDOModule",
            "init_args": {
                "network": {
                    "class_path": "ddo_lightning.networks.EDMPrecond",
                    "init_args": {
                        "model": {
                            "class_path": "ddo_lightning.networks.SongUNet",
                            "init_args": dict(unet, in_channels=3, out_channels=3),
                        }
                    },
                }
            },
        }
    }
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    path = nvidia_file(tmp_path, "vp.pkl", "VPPrecond", EDM_KW, edm_net("VPPrecond"))
    with pytest.raises(SystemExit) as ex:
        run_command(
            "sample",
            [
                "--config",
                str(tmp_path / "c.yaml"),
                "--ckpt",
                path,
                "--out",
                str(tmp_path / "o.npz"),
                "--device",
                "cpu",
                "--quiet",
            ],
        )
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert f"ddo sample: error: --ckpt {path} holds a VPPrecond(" in err and "declares EDMPrecond" in err
    assert not (tmp_path / "o.npz").exists()
