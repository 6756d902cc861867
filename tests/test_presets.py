"""The six paper presets rehearsed as shipped (issue 13, item 1).

Each preset runs through ``ddo fit`` with its own callbacks, logger, evaluator, data module and fake
source; a second ``--config`` per model family kept in the repository (``configs/rehearsal/``) shrinks
sizes and steps only, and ``test_overlay_changes_only_sizes_and_steps`` proves that it touches nothing
else. The files a preset reads are written first, in their real formats, where the preset looks for
them (``tests/standins.py``): a plain path under the working directory or a ``cache:NAME`` entry under
``$DDO_CACHE``. A run then goes: 2 steps and a stop (checkpoints at step 2), a resume from ``last.ckpt``
that finishes the round at step 4 (evaluation, promotion, ``round-1.ckpt``, ``best.pt``, summary).

The Inception extractor (torch-fidelity) needs a torchvision matching torch. Where it is installed
(``make test-fid``'s ``.venv-fid``, CUDA machines) ``test_preset_rehearsal`` runs the presets with
nothing swapped, on stand-in Inception weights with torch-fidelity's names and shapes. Where it is not
(the CPU-only ``.venv``), ``test_preset_rehearsal_without_inception`` runs the same rehearsal with ONE
change, on the command line and not in the overlay: the evaluator's extractor is a 16-d random-feature
network (``conftest.RandomFeatures``) and the reference statistics are 16-d to match.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import standins
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    "edm_cifar10": "edm",
    "edm_cifar10_cond": "edm",
    "edm2_img64_s": "edm2",
    "edm2_img512_l": "edm2",
    "var_d16": "var",
    "var_d30": "var",
}
# tiny networks: intra-op threads only cost time on a loaded 2-core machine (6x slower with 2 threads)
pytestmark = pytest.mark.usefixtures("one_thread")
SWAP_EXTRACTOR = ["--model.init_args.evaluator.init_args.extractor", "conftest.RandomFeatures"]

# What an overlay may change, as keys of flatten(): callbacks by class name, ``init_args`` levels dropped.
# A key is allowed when it is listed or lies under a listed key (vae_kwargs: None -> {V: ..}).
ALLOWED = {
    # self-play length and evaluation cadence, checkpoint cadence, grid size
    "trainer.callbacks[SelfPlay].rounds",
    "trainer.callbacks[SelfPlay].kimg_per_round",
    "trainer.callbacks[SelfPlay].eval_every_kimg",
    "trainer.callbacks[ModelCheckpoint].every_n_train_steps",
    "trainer.callbacks[SampleGrids].num_samples",
    "trainer.callbacks[SampleGrids].columns",
    # network width and depth: SongUNet (EDM), EDM2 U-Net, VAR and its tokenizer
    "model.network.model.model_channels",
    "model.network.model.channel_mult",
    "model.network.model.num_blocks",
    "model.network.model_channels",
    "model.network.num_blocks",
    "model.network.channels_per_head",
    "model.network.depth",
    "model.network.embed_dim",
    "model.network.num_heads",
    "model.network.patch_nums",
    "model.network.vocab_size",
    "model.network.z_channels",
    "model.network.vae_ch",
    "model.evaluator.decoder.vae_kwargs",
    # evaluation samples, batch, pool
    "model.num_eval_samples",
    "model.eval_batch_size",
    "data.batch_size",
    "data.fake.size",
    "data.fake.generation_batch_size",
}


def flatten(node, prefix: str = "") -> dict:
    """Leaves of a resolved config as ``{dotted.key: value}``; ``init_args`` levels are dropped and list
    elements that are class specs are keyed by their class name (``trainer.callbacks[SelfPlay]``)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "init_args":
                out.update(flatten(v, prefix))
            else:
                out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    if isinstance(node, list) and node and all(isinstance(x, dict) and "class_path" in x for x in node):
        out = {}
        for x in node:
            key = f"{prefix}[{x['class_path'].rsplit('.', 1)[-1]}]"
            assert not any(k.startswith(key) for k in out), f"two {key} in {prefix}: name them apart"
            out.update(flatten(x, key))
        return out
    return {prefix: node}


def resolved(args: list[str]) -> dict:
    """The config ``ddo fit ARGS`` runs with (``--print_config``)."""
    from ddo_lightning.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    return yaml.safe_load(buf.getvalue())


def preset_args(preset: str) -> list[str]:
    return [
        "--config",
        str(ROOT / "configs" / f"{preset}.yaml"),
        "--config",
        str(ROOT / "configs" / "rehearsal" / f"{PRESETS[preset]}.yaml"),
    ]


def test_overlays_exist_one_per_family():
    assert sorted(p.stem for p in (ROOT / "configs" / "rehearsal").glob("*.yaml")) == sorted(set(PRESETS.values()))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_overlay_changes_only_sizes_and_steps(preset, monkeypatch):
    monkeypatch.setattr("sys.argv", ["ddo"])
    shipped = flatten(resolved(["--config", str(ROOT / "configs" / f"{preset}.yaml")]))
    rehearsed = flatten(resolved(preset_args(preset)))
    changed = {
        k for k in shipped.keys() | rehearsed.keys() if shipped.get(k, "<absent>") != rehearsed.get(k, "<absent>")
    }
    outside = sorted(k for k in changed if not any(k == a or k.startswith(a + ".") for a in ALLOWED))
    assert not outside, {k: (shipped.get(k, "<absent>"), rehearsed.get(k, "<absent>")) for k in outside}
    # the overlay did shrink the run (a silently ignored overlay would pass the check above)
    assert rehearsed["trainer.callbacks[SelfPlay].rounds"] == 1
    assert rehearsed["model.num_eval_samples"] <= 8 and rehearsed["data.batch_size"] <= 8
    # the preset's callback list as shipped: its classes, and a ModelCheckpoint Lightning accepts
    assert [k for k in shipped if k.endswith("].class_path")] == [k for k in rehearsed if k.endswith("].class_path")]
    ckpt = "trainer.callbacks[ModelCheckpoint]"
    assert shipped[f"{ckpt}.monitor"] is None and shipped[f"{ckpt}.save_top_k"] == -1 and shipped[f"{ckpt}.save_last"]


# Settings of the shipped presets the rehearsal shrinks, checked as shipped (the paper's networks).
SHIPPED = {
    "edm_cifar10": {
        "model.network.model.model_channels": 128,
        "model.network.model.channel_mult": [2, 2, 2],
        "model.network.model.num_blocks": 4,
        "model.network.model.label_dim": 0,
    },
    "edm_cifar10_cond": {
        "model.network.model.model_channels": 128,
        "model.network.model.channel_mult": [2, 2, 2],
        "model.network.model.num_blocks": 4,
        "model.network.model.label_dim": 10,
    },
    "edm2_img64_s": {
        "model.network.model_channels": 192,
        "model.network.img_channels": 3,
        "model.network.num_blocks": 3,
        "model.network.label_dim": 1000,
        "model.network.use_fp16": False,
    },
    "edm2_img512_l": {
        "model.network.model_channels": 320,
        "model.network.img_channels": 4,
        "model.network.num_blocks": 3,
        "model.network.label_dim": 1000,
        "model.network.use_fp16": False,
    },
    "var_d16": {"model.network.depth": 16, "model.network.vocab_size": 4096, "model.network.num_classes": 1000},
    "var_d30": {"model.network.depth": 30, "model.network.vocab_size": 4096, "model.network.num_classes": 1000},
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_shipped_networks_are_the_papers(preset, monkeypatch):
    monkeypatch.setattr("sys.argv", ["ddo"])
    shipped = flatten(resolved(["--config", str(ROOT / "configs" / f"{preset}.yaml")]))
    assert {k: shipped[k] for k in SHIPPED[preset]} == SHIPPED[preset]


def test_flatten_names_callbacks_by_class():
    cfg = {
        "trainer": {
            "callbacks": [
                {"class_path": "a.SelfPlay", "init_args": {"rounds": 3}},
                {"class_path": "b.ModelCheckpoint", "init_args": {"dirpath": "x"}},
            ]
        },
        "model": {"class_path": "m.M", "init_args": {"network": {"class_path": "n.N", "init_args": {"depth": 2}}}},
    }
    assert flatten(cfg) == {
        "trainer.callbacks[SelfPlay].class_path": "a.SelfPlay",
        "trainer.callbacks[SelfPlay].rounds": 3,
        "trainer.callbacks[ModelCheckpoint].class_path": "b.ModelCheckpoint",
        "trainer.callbacks[ModelCheckpoint].dirpath": "x",
        "model.class_path": "m.M",
        "model.network.class_path": "n.N",
        "model.network.depth": 2,
    }


# ---- stand-in files where the resolved config looks for them -----------------------------------------------
def test_place_follows_plain_paths_and_cache_references(tmp_path, monkeypatch):
    monkeypatch.setenv("DDO_CACHE", str(tmp_path / "cache"))
    assert standins.place("data/x.npz", tmp_path / "run") == tmp_path / "run" / "data" / "x.npz"
    assert standins.place(str(tmp_path / "abs.pth"), tmp_path / "run") == tmp_path / "abs.pth"
    assert standins.place("cache:cifar10", tmp_path) == tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz"
    assert standins.place("cache:sd-vae-ft-mse", tmp_path) == tmp_path / "cache" / "sd-vae-ft-mse"  # a folder entry
    assert (tmp_path / "run" / "data").is_dir() and (tmp_path / "cache" / "cifar10").is_dir()
    with pytest.raises(KeyError, match="unknown cache entry"):
        standins.place("cache:nope", tmp_path)
    try:  # once the cache module exists, its resolver must agree with the contract's table used here
        from ddo_lightning.fetch import resolve
    except ImportError:
        return
    import inspect

    unchecked = {"check": False} if "check" in inspect.signature(resolve).parameters else {}  # no hash checks
    for name in standins.CACHE_FILES:
        assert Path(resolve(f"cache:{name}", **unchecked)) == standins.place(f"cache:{name}", tmp_path), name


def trust_standins(monkeypatch) -> None:
    """Stand-ins cannot have the published hashes of the real files: the manifest is taken as if nothing were
    published, so the cache's own rule for such files applies (the first use records the file's sha256 in the
    lock file; every later use, the resume included, is checked against it)."""
    import dataclasses

    from ddo_lightning.fetch import manifest

    unpublished = {
        name: dataclasses.replace(e, files=tuple(dataclasses.replace(f, known_hash=None, size=None) for f in e.files))
        for name, e in manifest.MANIFEST.items()
    }
    monkeypatch.setattr(manifest, "MANIFEST", unpublished)
    for module in ("ddo_lightning.fetch", "ddo_lightning.fetch.cache"):
        monkeypatch.setattr(f"{module}.MANIFEST", unpublished, raising=False)


def test_cifar10_archive_and_folder_hold_the_same_batches(tmp_path):
    import tarfile

    from ddo_lightning.data import Cifar10Dataset

    archive = standins.write_cifar10(tmp_path / "cifar-10-python.tar.gz")
    folder = standins.write_cifar10(tmp_path / "plain" / "cifar-10-batches-py")
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert names == sorted(["cifar-10-batches-py"] + [f"cifar-10-batches-py/{n}" for n in os.listdir(folder)])
    a, b = Cifar10Dataset(tmp_path / "unpacked"), Cifar10Dataset(folder)
    assert len(a) == 5 * 16 and np.array_equal(a.images, b.images) and list(a.class_names) == standins.CIFAR_CLASSES


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception weights file (names and shapes; random values), written once (91 MB)."""
    return standins.write_inception_weights(tmp_path_factory.mktemp("inception") / standins.CACHE_FILES["inception"])


def _cls(spec: dict | None) -> str:
    return (spec or {}).get("class_path", "").rsplit(".", 1)[-1]


def write_standins(cfg: dict, root: Path, inception: Path | None) -> dict[str, torch.Tensor]:
    """Write every file the resolved config ``cfg`` reads, in its real format, where it looks; return the
    weights written for ``init_from`` (the reference a run starts from)."""
    model = cfg["model"]["init_args"]
    net = model["network"]
    init_from = standins.place(model["init_from"], root)
    if _cls(net) == "EDMPrecond":
        from ddo_lightning.networks import EDMPrecond, SongUNet

        unet = net["init_args"]["model"]["init_args"]
        torch.manual_seed(0)
        module = EDMPrecond(SongUNet(**unet), sigma_data=net["init_args"]["sigma_data"])
        weights = standins.write_edm_pickle(
            init_from, module, standins.edm_init_kwargs(unet, net["init_args"]["sigma_data"])
        )
    elif _cls(net) == "EDM2Precond":
        from ddo_lightning.networks import EDM2Precond

        torch.manual_seed(0)
        module = EDM2Precond(**net["init_args"])
        with torch.no_grad():  # non-zero gains, so that every branch contributes (EDM2 starts them at 0)
            for p in module.parameters():
                if p.ndim == 0:
                    p.uniform_(0.2, 1.2)
        weights = standins.write_edm2_pickle(
            init_from, module, standins.edm2_init_kwargs(net["init_args"]), latent=net["init_args"]["img_channels"] == 4
        )
    elif _cls(net) == "VARNetwork":
        vae = standins.place(net["init_args"]["vae_checkpoint"], root)
        weights = standins.write_var_checkpoints(vae, init_from, net["init_args"])
    else:
        raise AssertionError(f"no stand-in for network {net['class_path']}")

    ev = model["evaluator"]["init_args"]
    extractor = ev["extractor"]
    if _cls(extractor) == "InceptionFeatures":
        target = standins.place(extractor["init_args"]["weights_path"], root)
        target.symlink_to(inception)
        dim = 2048
    else:
        dim = 16  # conftest.RandomFeatures
    standins.write_reference_stats(standins.place(ev["reference_stats"], root), dim)
    decoder = ev.get("decoder")
    if _cls(decoder) == "StabilityVAE":
        standins.write_sd_vae(standins.place(decoder["init_args"]["vae_path"], root))
    elif _cls(decoder) == "VARImageDecoder":  # the network's tokenizer file, written above
        assert standins.place(decoder["init_args"]["vae_checkpoint"], root).is_file()

    real = cfg["data"]["init_args"]["real"]
    args = real["init_args"]
    if _cls(real) == "Cifar10Dataset":
        standins.write_cifar10(standins.place(args["root"], root))
    elif _cls(real) == "ImageFolderDataset":
        standins.write_image_zip(standins.place(args["path"], root), 16, args["resolution"], args["num_classes"])
    elif _cls(real) == "LatentFolderDataset":
        standins.write_latent_zip(standins.place(args["path"], root), 16, net["init_args"]["img_resolution"])
    elif _cls(real) == "VARTokenDataset":
        n = net["init_args"]
        standins.write_var_tokens(
            standins.place(args["path"], root), 16, n["patch_nums"], n["vocab_size"], n["num_classes"]
        )
    else:
        raise AssertionError(f"no stand-in for dataset {real['class_path']}")
    return weights


# ---- the rehearsal ----------------------------------------------------------------------------------------
def fit(args: list[str], monkeypatch):
    """``ddo fit ARGS`` through the console script's entry point; returns the LightningCLI object."""
    import ddo_lightning.cli as cli_module

    seen = []
    real_run = cli_module.run
    monkeypatch.setattr(cli_module, "run", lambda a=None: seen.append(real_run(a)) or seen[-1])
    cli_module.main(["fit", *args])
    monkeypatch.setattr(cli_module, "run", real_run)
    return seen[-1]


def only(paths: list[Path], what: str) -> Path:
    assert len(paths) == 1, f"expected one {what}, found {paths}"
    return paths[0]


def selfplay_of(cli):
    from ddo_lightning.training import SelfPlay

    return only([c for c in cli.trainer.callbacks if isinstance(c, SelfPlay)], "SelfPlay callback")


def rehearse(preset: str, tmp_path: Path, monkeypatch, swap: bool, inception: Path | None) -> dict:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DDO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("sys.argv", ["ddo"])
    trust_standins(monkeypatch)
    args = preset_args(preset) + (SWAP_EXTRACTOR if swap else [])
    cfg = resolved(args)
    weights = write_standins(cfg, tmp_path, inception)
    times = {}

    t0 = time.perf_counter()
    first = fit([*args, "--trainer.max_steps", "2"], monkeypatch)  # a run stopped mid-round (as if preempted)
    times["run"] = time.perf_counter() - t0
    assert first.trainer.global_step == 2
    ref = first.model.reference.state_dict()
    for k, v in weights.items():  # init_from read the stand-in file into the reference (EDM2: fp16 -> fp32)
        assert torch.equal(ref[k], v.float()), k
    check_family(preset, first)
    last = only(sorted(tmp_path.rglob("last.ckpt")), "last.ckpt")
    assert last == tmp_path / "outputs" / preset / "checkpoints" / "last.ckpt"  # the run directory's layout
    assert (last.parent / "step=2.ckpt").is_file()
    from ddo_lightning.fetch.cache import lock_path, read_lock  # no published hash: the first use recorded each

    cached = {
        str(p.relative_to(tmp_path / "cache"))
        for p in (tmp_path / "cache").rglob("*")
        if p.is_file() and p != lock_path()
    }
    assert cached and cached <= set(read_lock()), (cached, read_lock())
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert not list(tmp_path.rglob("round-1.ckpt"))

    t0 = time.perf_counter()
    second = fit(args, monkeypatch)  # run again, as a user would: the run directory resumes from last.ckpt
    times["resume"] = time.perf_counter() - t0
    sp = selfplay_of(second)
    # the round's state came back: it ends after 2 more steps (not 4), and the reference was not evaluated again
    assert second.trainer.global_step == 4 and sp.round == 1
    assert (last.parent / "step=4.ckpt").is_file()
    summary = json.loads(only(sorted(tmp_path.rglob("summary.json")), "summary.json").read_text())
    kimg = sp.images_per_round / 1000
    assert [r["round"] for r in summary["rounds"]] == [1]
    assert [c["kimg_in_round"] for c in summary["rounds"][0]["curve"]] == [0.0, kimg]
    assert math.isfinite(summary["reference"]["fid"]) and math.isfinite(summary["rounds"][0]["metrics"]["fid"])
    assert only(sorted(tmp_path.rglob("round-1.ckpt")), "round-1.ckpt").stat().st_size > 0
    best = torch.load(only(sorted(tmp_path.rglob("best.pt")), "best.pt"), map_location="cpu", weights_only=True)
    promoted = second.model.reference.state_dict()  # the promotion: best.pt became the reference
    assert best.keys() == promoted.keys() and all(torch.equal(best[k], promoted[k]) for k in best)
    if summary["rounds"][0]["improved"]:
        assert any(not torch.equal(best[k], weights[k].float()) for k in weights)
    return times


def check_family(preset: str, cli) -> None:
    """The recipe settings that matter per family, on the module the preset built."""
    module = cli.model
    dropouts = [m for m in module.target.modules() if isinstance(m, torch.nn.Dropout)]
    assert all(m.p == 0 for m in dropouts)  # DDO switches dropout off (the EDM presets ship 0.13, EDM2-L 0.1)
    if PRESETS[preset] == "edm":
        assert module.label_dim == (10 if "cond" in preset else 0)
        assert not any(p.requires_grad for p in module.target.model.map_augment.parameters())  # augment label frozen
    elif PRESETS[preset] == "edm2":
        from ddo_lightning.training.ema import PowerEMA

        latent = "img512" in preset
        obj = module.objective
        assert module.lr == 5e-5 and isinstance(module.ema, PowerEMA) and module.ema.sigma_rel == 0.05
        assert module.sampler.num_steps == 32 and obj.P_mean == -0.8 and obj.P_std == 1.6  # round 1 of the schedule
        assert obj.P_std_schedule[0] == 1.6 and obj.P_std_schedule[-1] == 3.0
        assert module.label_dim == 1000 and not module.target.logvar_linear.weight.requires_grad
        from ddo_lightning.networks.edm2 import Block

        heads = {b.num_heads for b in module.target.modules() if isinstance(b, Block)}
        assert len(heads - {0}) >= 1  # the reduced width keeps attention on (at 16x16 and 8x8)
        assert module.trainer.datamodule.fake.quantize is (not latent)
        from PIL import Image

        grids = sorted(Path.cwd().rglob("samples/step-*.png"))
        assert grids  # 2x2 tiles, 1-pixel gaps, enlarged 2x: decoded 512 px for latents, else 64 px
        side = 2 * (2 * ((512 if latent else 64) + 1) + 1)
        assert Image.open(grids[-1]).size == (side, side)
    else:
        obj = module.objective
        assert (obj.alpha, obj.beta, obj.label_drop, obj.normalize) == (
            50.0 if "d16" in preset else 100.0,
            0.02,
            0.1,
            True,
        )
        assert module.lr == 2e-5 and module.target.fake_tokens == "reencode" and module.sampler.guidance_free


def _fidelity_available() -> bool:
    try:
        from ddo_lightning.metrics.inception import fidelity_inception_module

        fidelity_inception_module()
        return True
    except ImportError:
        return False


@pytest.mark.fid
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_rehearsal(preset, tmp_path, monkeypatch, request):
    """The preset as shipped, with only the overlay's sizes: stop at step 2, resume, finish the round."""
    if not _fidelity_available():
        pytest.skip(
            "torch-fidelity unavailable here; `make test-slow` runs this in .venv-fid "
            "(test_preset_rehearsal_without_inception covers the rest here)"
        )
    times = rehearse(preset, tmp_path, monkeypatch, swap=False, inception=request.getfixturevalue("inception_weights"))
    print(f"[rehearsal {preset}] {times}")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_rehearsal_without_inception(preset, tmp_path, monkeypatch):
    """As test_preset_rehearsal with one labelled change: the FID's extractor is a 16-d random-feature
    network (torch-fidelity cannot be installed next to a CPU-only torch)."""
    if _fidelity_available():
        pytest.skip("torch-fidelity is installed: test_preset_rehearsal runs the preset's own extractor")
    times = rehearse(preset, tmp_path, monkeypatch, swap=True, inception=None)
    print(f"[rehearsal {preset}, extractor swapped] {times}")
