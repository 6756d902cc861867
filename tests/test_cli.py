"""The `ddo` command: help, every preset parses, each preset runs a tiny step, bad input is named."""

import json
import logging
import pathlib

import pytest
import yaml

from ddo_lightning.cli import main
from ddo_lightning.cli import run as run_cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))  # full presets
# composable parts (a second --config); configs/rehearsal/ holds per-family size overlays (test_presets.py)
FRAGMENTS = sorted(p for p in (ROOT / "configs").glob("*/*.yaml") if p.parent.name != "rehearsal")


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["ddo"])


def run(args):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def test_help_lists_subcommands(capsys):
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("fit", "validate", "test"))


def test_module_help_documents_typed_options(capsys):
    assert run(["fit", "--model.help", "ddo_lightning.training.DDOModule"]) == 0
    out = capsys.readouterr().out
    for option in ("init_from", "objective", "ema_halflife_kimg", "num_eval_samples", "sampler"):
        assert f"--model.{option}" in out, option
    assert (
        run(
            [
                "fit",
                "--model",
                "ddo_lightning.training.DDOModule",
                "--model.objective.help",
                "ddo_lightning.objectives.DiffusionDDO",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for option in ("alpha", "beta", "P_mean", "P_std"):  # documented from the docstring, with types
        assert f"--objective.{option}" in out, option
    assert "weight of the fake term" in out


def test_presets_exist():
    names = {p.name for p in CONFIGS}
    assert {"toy2d_pretrain.yaml", "toy2d.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config, capsys):
    assert run(["fit", "--config", str(config), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["precision"] == "32-true"
    assert printed["model"]["class_path"].startswith("ddo_lightning.")


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.name)
@pytest.mark.parametrize("preset", ["toy2d.yaml", "digits.yaml", "edm_cifar10.yaml"])
def test_fragments_compose_with_presets(fragment, preset, capsys):
    assert run(["fit", "--config", str(ROOT / "configs" / preset), "--config", str(fragment), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    own = yaml.safe_load(fragment.read_text())

    def class_paths(v):
        return [x["class_path"] for x in v] if isinstance(v, list) else v["class_path"]

    for key, value in own["trainer"].items():  # what the fragment sets wins over the preset
        assert class_paths(printed["trainer"][key]) == class_paths(value)
    assert printed["trainer"]["precision"] == "32-true" and printed["model"]["class_path"].startswith("ddo_lightning.")


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _files(root):
    """{relative path: (mtime_ns, bytes)} of every file under ``root``."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_toy_presets_run_tiny_steps_and_a_rerun_keeps_their_results(tmp_path, monkeypatch, capsys, caplog):
    """Both presets, as `make demo` runs them, with sizes overridden by a second --config: every output in
    the preset's run directory, the DDO stage chained to the pretraining run's last.ckpt. Running both
    again (`make demo` twice) resumes the finished runs, trains nothing and rewrites no file."""
    monkeypatch.chdir(tmp_path)
    small_data = {
        "data": {
            "init_args": {
                "batch_size": 64,
                "real": {"class_path": "ddo_lightning.data.Toy2DDataset", "init_args": {"num_samples": 1024}},
            }
        }
    }
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"save_last": True, "every_n_train_steps": 3, "save_top_k": -1},
    }
    pre = write(
        tmp_path / "pre.yaml",
        {
            "trainer": {
                "max_steps": 3,
                "val_check_interval": 3,
                "enable_progress_bar": False,
                "callbacks": [checkpoint],
            },
            "model": {"init_args": {"num_eval_samples": 200}},
            **small_data,
        },
    )
    stage1 = ["fit", "--config", str(ROOT / "configs/toy2d_pretrain.yaml"), "--config", pre]
    main(stage1)
    assert (tmp_path / "outputs/toy2d_pretrain/checkpoints/last.ckpt").is_file()
    ddo = write(
        tmp_path / "ddo.yaml",
        {
            "trainer": {
                "enable_progress_bar": False,
                "callbacks": [
                    {
                        "class_path": "ddo_lightning.training.SelfPlay",
                        "init_args": {"rounds": 1, "kimg_per_round": 0.128, "eval_every_kimg": 0.064, "monitor": "mmd"},
                    },
                    checkpoint,
                    {"class_path": "ddo_lightning.training.ScatterFigure", "init_args": {"num_samples": 200}},
                ],
            },
            "model": {
                "init_args": {"num_eval_samples": 200, "init_from": "outputs/toy2d_pretrain/checkpoints/last.ckpt"}
            },
            "data": {
                "init_args": {
                    **small_data["data"]["init_args"],
                    "fake": {"class_path": "ddo_lightning.training.PoolFakeSource", "init_args": {"size": 256}},
                }
            },
        },
    )
    stage2 = ["fit", "--config", str(ROOT / "configs/toy2d.yaml"), "--config", ddo]
    main(stage2)
    run = tmp_path / "outputs/toy2d"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["monitor"] == "mmd" and len(summary["rounds"]) == 1
    for name in (
        "rounds/round-1.ckpt",
        "best.pt",
        "samples.png",
        "config.yaml",
        "checkpoints/last.ckpt",
        "logs/metrics.csv",
    ):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["lr"] == 5e-5  # the preset's
    # the preset's MLE control ran, so the figure has four panels of 4.5 in at 110 dpi: data, start, DDO, control
    from PIL import Image

    assert summary["control"]["finished"] and Image.open(run / "samples.png").size[0] == round(4 * 4.5 * 110)
    before = {**_files(run), **{f"pre/{k}": v for k, v in _files(tmp_path / "outputs/toy2d_pretrain").items()}}
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        main(stage1)
        main(stage2)
    out = capsys.readouterr().out + caplog.text
    assert "[run_dir] resuming outputs/toy2d_pretrain from outputs/toy2d_pretrain/checkpoints/last.ckpt (step 3)" in out
    assert "[run_dir] resuming outputs/toy2d from" in out and "already finished its 1 rounds" in out
    after = {**_files(run), **{f"pre/{k}": v for k, v in _files(tmp_path / "outputs/toy2d_pretrain").items()}}
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == ["logs/hparams.yaml", "pre/logs/hparams.yaml"], changed  # the logged config, rewritten alike
    # `ddo validate` on the round checkpoint re-evaluates the promoted EMA: the same fixed-seed numbers
    cli = run_cli(
        [
            "validate",
            "--config",
            str(ROOT / "configs/toy2d.yaml"),
            "--config",
            ddo,
            "--ckpt_path",
            "outputs/toy2d/rounds/round-1.ckpt",
        ]
    )
    promoted = summary["rounds"][0]["metrics"]
    for key in ("mmd", "precision", "recall"):
        assert float(cli.trainer.callback_metrics[f"val/{key}"]) == pytest.approx(promoted[key], rel=1e-5), key


@pytest.mark.parametrize("value", ["-1", ".nan", ".inf"])
def test_invalid_alpha_from_the_command_line(value):
    with pytest.raises(ValueError, match="alpha"):
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/toy2d.yaml"),
                "--model.init_args.objective.init_args.alpha",
                value,
                "--model.init_args.init_from",
                "null",
            ]
        )


def _print_config(path):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["fit", "--config", str(path), "--print_config"])
    return buf.getvalue()


def tiny_demo_overlays(tmp_path, steps, model, data_pre, data_ddo, selfplay, figure):
    """The second --config of each stage of a demo at a tiny size: MLE pretraining for ``steps`` steps with
    a last.ckpt, then a DDO run with SelfPlay(**selfplay) and the demo's figure callback (class, init_args)."""
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"save_last": True, "every_n_train_steps": steps},
    }
    pre = write(
        tmp_path / "pre.yaml",
        {
            "trainer": {
                "max_steps": steps,
                "val_check_interval": steps,
                "enable_progress_bar": False,
                "callbacks": [checkpoint],
            },
            "model": {"init_args": model},
            "data": data_pre,
        },
    )
    ddo = write(
        tmp_path / "ddo.yaml",
        {
            "trainer": {
                "enable_progress_bar": False,
                "callbacks": [
                    {"class_path": "ddo_lightning.training.SelfPlay", "init_args": {"rounds": 1, **selfplay}},
                    {"class_path": figure[0], "init_args": figure[1]},
                ],
            },
            "model": {"init_args": model},
            "data": data_ddo,
        },
    )
    return pre, ddo


def test_digits_presets_run_tiny_steps(tmp_path, monkeypatch):
    """`make demo-digits` at a tiny size: 2 MLE steps, then one short DDO round with a quantised pool."""
    monkeypatch.chdir(tmp_path)
    small = {
        "num_eval_samples": 40,
        "eval_batch_size": 40,
        "sampler": {"class_path": "ddo_lightning.samplers.HeunSampler", "init_args": {"num_steps": 3}},
    }
    pool = {"class_path": "ddo_lightning.training.PoolFakeSource", "init_args": {"size": 64, "quantize": True}}
    pre, ddo = tiny_demo_overlays(
        tmp_path,
        2,
        small,
        {"init_args": {"batch_size": 16}},
        {"init_args": {"batch_size": 16, "fake": pool}},
        {"kimg_per_round": 0.032, "eval_every_kimg": 0.016, "monitor": "digits_fid"},
        ("ddo_lightning.training.ImageGridFigure", {"num_samples": 20}),
    )
    main(["fit", "--config", str(ROOT / "configs/digits_pretrain.yaml"), "--config", pre])
    main(["fit", "--config", str(ROOT / "configs/digits.yaml"), "--config", ddo])
    summary = json.loads((tmp_path / "outputs/digits/summary.json").read_text())
    assert summary["monitor"] == "digits_fid" and summary["reference"]["digits_fid"] > 0
    assert (tmp_path / "outputs/digits/samples.png").stat().st_size > 1000


def test_token_presets_run_tiny_steps(tmp_path, monkeypatch):
    """`make demo-tokens` at a tiny size: 4 MLE steps, then one short DDO round with online fakes; the
    summary holds the exact KLs and the figure is drawn."""
    monkeypatch.chdir(tmp_path)
    small = {"num_eval_samples": 64, "eval_batch_size": 64}
    data = {"init_args": {"batch_size": 16, "real": {"init_args": {"num_samples": 256}}}}
    pre, ddo = tiny_demo_overlays(
        tmp_path,
        4,
        small,
        data,
        data,
        {"kimg_per_round": 0.064, "eval_every_kimg": 0.032, "monitor": "kl_sym"},
        ("ddo_lightning.training.TokenFigure", {"num_samples": 64}),
    )
    main(["fit", "--config", str(ROOT / "configs/tokens_pretrain.yaml"), "--config", pre])
    main(["fit", "--config", str(ROOT / "configs/tokens.yaml"), "--config", ddo])
    summary = json.loads((tmp_path / "outputs/tokens/summary.json").read_text())
    assert summary["monitor"] == "kl_sym" and summary["reference"]["kl_sym"] > 0
    assert summary["reference"]["kl_sym"] == pytest.approx(
        summary["reference"]["kl_data_model"] + summary["reference"]["kl_model_data"]
    )
    assert (tmp_path / "outputs/tokens/samples.png").stat().st_size > 1000


# ---- a CLI people can read ---------------------------------------------------------------------------
def _header_text(path):
    return " ".join(line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#"))


def _layered_text(path):
    """A preset's text and that of the presets it is layered on (`config: BASE.yaml`)."""
    text = path.read_text()
    base = yaml.safe_load(text).get("config")
    return text + (_layered_text(path.parent / base) if base else "")


def test_help_lists_every_preset_with_its_expected_result(capsys):
    assert run(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for config in CONFIGS:
        line = next((x for x in lines if x.split()[:1] == [config.stem]), None)
        assert line is not None, config.name
        kind = "MLE" if "MLEModule" in _layered_text(config) else "DDO"
        result = line.split(kind, 1)[1].strip().rstrip("…")
        assert result and result in _header_text(config).replace("Expected: ", ""), (config.name, result)
    cifar = next(x for x in lines if x.startswith("  edm_cifar10 "))
    assert "FID 1.97 -> 1.38" in cifar  # the paper's number, from the preset's first line


def test_fit_help_is_short_and_lists_ddo_options_first(capsys):
    assert run(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) <= 80  # a screen or two, against jsonargparse's 479 lines
    order = [
        "--model.init_from",
        "--model.objective.alpha",
        "--selfplay.rounds",
        "--data.batch_size",
        "--data.fake.size",
        "--trainer.accelerator",
    ]
    positions = [out.index(option) for option in order]
    assert positions == sorted(positions)
    # every option it shows is a key of the resolved config of a preset of those classes, under that name
    options = [
        w
        for line in out.splitlines()
        for w in line.split()
        if w.startswith("--") and "." in w and not w.endswith(".help")
    ]
    assert len(options) > 30
    assert run(["fit", "--config", str(ROOT / "configs/toy2d.yaml"), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    for option in options:
        node = printed
        for key in option[2:].split("."):
            node = node["init_args"] if isinstance(node, dict) and "class_path" in node else node
            assert isinstance(node, dict) and key in node, option
            node = node[key]
    assert run(["fit", "--help-all"]) == 0
    full = capsys.readouterr().out
    assert "--trainer.gradient_clip_val" in full and "--selfplay.kimg_per_round" in full


def test_fit_help_follows_the_config_classes(capsys):
    assert run(["fit", "--config", str(ROOT / "configs/tokens.yaml"), "--help"]) == 0
    out = capsys.readouterr().out
    assert "objective (TokenDDO;" in out and "--model.objective.label_drop" in out
    assert "fakes (OnlineFakeSource;" in out


def test_model_help_lists_the_projects_classes_not_all_of_torch_nn(capsys):
    assert run(["fit", "--model.help", "ddo_lightning.training.DDOModule"]) == 0
    out = capsys.readouterr().out
    assert "torch.nn.modules" not in out and "ddo_lightning.networks.EDMPrecond" in out
    assert len(out.splitlines()) < 150  # was 722


def test_self_play_settings_from_the_command_line(capsys):
    assert (
        run(
            [
                "fit",
                "--config",
                str(ROOT / "configs/toy2d.yaml"),
                "--selfplay.rounds",
                "5",
                "--selfplay.kimg_per_round",
                "100",
                "--selfplay.eval_every_kimg",
                "10",
                "--selfplay.monitor",
                "fid",
                "--print_config",
            ]
        )
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    sp = next(c for c in printed["trainer"]["callbacks"] if c["class_path"].endswith("SelfPlay"))
    # --print_config shows the parsed values; they reach the callback when the classes are built
    assert printed["selfplay"] == {
        "rounds": 5,
        "kimg_per_round": 100.0,
        "eval_every_kimg": 10.0,
        "monitor": "fid",
        "mode": None,
        "start_round": None,
        "candidates": None,
        "allow_large_search": None,
        "control": None,
        "report_seed_sets": None,
    }
    assert sp["init_args"]["rounds"] == 2  # the preset's, until built
    from ddo_lightning.cli import DDOCLI
    from ddo_lightning.training import SelfPlay

    class Built(DDOCLI):
        def _run_subcommand(self, subcommand):  # build everything, train nothing
            pass

    cli = Built(
        pl_module_class(),
        pl_data_class(),
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=[
            "fit",
            "--config",
            str(ROOT / "configs/toy2d.yaml"),
            "--model.init_from",
            "null",
            "--selfplay.rounds",
            "5",
            "--selfplay.kimg_per_round",
            "100",
            "--selfplay.eval_every_kimg",
            "10",
            "--selfplay.monitor",
            "energy_distance",
        ],
        auto_configure_optimizers=False,
        save_config_callback=None,
    )
    sp = next(c for c in cli.trainer.callbacks if isinstance(c, SelfPlay))
    assert (sp.rounds, sp.images_per_round, sp.eval_every_images, sp.monitor) == (5, 100_000, 10_000, "energy_distance")
    with pytest.raises(ValueError, match="--selfplay.rounds .* has none in trainer.callbacks"):
        main(["fit", "--config", str(ROOT / "configs/toy2d_pretrain.yaml"), "--selfplay.rounds", "2"])


def pl_module_class():
    from lightning.pytorch import LightningModule

    return LightningModule


def pl_data_class():
    from lightning.pytorch import LightningDataModule

    return LightningDataModule


def _ddo_cli(args, cwd):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "ddo_lightning.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _last_line(text):
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--model.objective.alpha", "-1", "ValueError: DDO alpha must be finite and >= 0, got -1.0"),
        ("--trainer.precision", "16-mixed", "trainer.precision must be '32-true', got '16-mixed'"),
        ("--selfplay.rounds", "0", "ValueError: rounds, kimg_per_round and eval_every_kimg must be positive"),
    ],
)
def test_an_error_while_the_config_is_built_is_the_last_line(tmp_path, option, value, message):
    code, out = _ddo_cli(
        ["fit", "--config", str(ROOT / "configs/toy2d.yaml"), "--model.init_from", "null", option, value], tmp_path
    )
    assert code != 0 and message in _last_line(out), out[-2000:]
    assert "Given value" not in out  # no dump of the whole config


def test_toy_rounds_agree_everywhere_and_checkpoints_carry_hyperparameters(tmp_path, monkeypatch):
    """Two short rounds through `ddo` in a subprocess (stdout a file, so the plain progress lines): the
    round numbers of console, CSV, summary.json and file names agree; a round checkpoint rebuilds the module
    without the YAML; an MLE checkpoint as --ckpt_path is named as such."""
    import csv

    import torch

    from ddo_lightning.training import DDOModule

    monkeypatch.chdir(tmp_path)
    small = {
        "num_eval_samples": 100,
        "eval_batch_size": 100,
        "sampler": {"class_path": "ddo_lightning.samplers.HeunSampler", "init_args": {"num_steps": 4}},
    }
    real = {"class_path": "ddo_lightning.data.Toy2DDataset", "init_args": {"num_samples": 1024}}
    pre = write(
        tmp_path / "pre.yaml",
        {
            "trainer": {
                "max_steps": 2,
                "val_check_interval": 2,
                "enable_progress_bar": False,
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"save_last": True, "every_n_train_steps": 2},
                    }
                ],
            },
            "model": {"init_args": small},
            "data": {"init_args": {"batch_size": 64, "real": real}},
        },
    )
    main(["fit", "--config", str(ROOT / "configs/toy2d_pretrain.yaml"), "--config", pre])
    ddo = write(
        tmp_path / "ddo.yaml",
        {
            "model": {"init_args": {**small, "init_from": "outputs/toy2d_pretrain/checkpoints/last.ckpt"}},
            "data": {
                "init_args": {
                    "batch_size": 64,
                    "real": real,
                    "fake": {
                        "class_path": "ddo_lightning.training.PoolFakeSource",
                        "init_args": {"size": 128, "progress": False},
                    },
                }
            },
        },
    )
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/toy2d.yaml"),
        "--config",
        ddo,
        "--selfplay.rounds",
        "2",
        "--selfplay.kimg_per_round",
        "0.128",
        "--selfplay.eval_every_kimg",
        "0.064",
        "--trainer.log_every_n_steps",
        "1",
    ]
    code, out = _ddo_cli(args, tmp_path)
    assert code == 0, out[-3000:]
    console = {int(m) for m in __import__("re").findall(r"\[round (\d+)", out)}
    progress = [line for line in out.splitlines() if line.startswith("step ") and " · round " in line]
    assert len(progress) >= 4 and "round 1/2 · candidate 1/4 alpha=0.5 · kimg 0.064/0.128 · last mmd " in progress[0]
    with open(tmp_path / "outputs/toy2d/logs/metrics.csv") as f:
        logged = {int(float(r["round"])) for r in csv.DictReader(f) if r.get("round")}
    summary = json.loads((tmp_path / "outputs/toy2d/summary.json").read_text())
    files = {int(p.stem.split("-")[1]) for p in (tmp_path / "outputs/toy2d/rounds").glob("round-*.ckpt")}
    assert console == logged == {r["round"] for r in summary["rounds"]} == files == {1, 2}
    assert all(r["weights_changed"] for r in summary["rounds"]) and "warnings" not in summary
    # the checkpoint rebuilds the module: same classes and settings, the same weights
    path = tmp_path / "outputs/toy2d/rounds/round-2.ckpt"
    module = DDOModule.load_from_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    # the preset's module settings (a candidate's overrides are SelfPlay's state, not the module's arguments)
    assert module.lr == 5e-5 and module.objective.alpha == 1.0 and module.sampler.num_steps == 4
    for name, value in module.target.state_dict().items():
        assert torch.equal(value, state[f"target.{name}"]), name
    # an MLE checkpoint given as --ckpt_path to a DDO run
    mle = "outputs/toy2d_pretrain/checkpoints/last.ckpt"
    with pytest.raises(ValueError, match="is an MLE checkpoint") as err:
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/toy2d.yaml"),
                "--config",
                ddo,
                "--ckpt_path",
                mle,
                "--run_dir",
                "outputs/other",
            ]
        )
    assert f"use --model.init_args.init_from {mle}" in str(err.value)


# ---- the run directory ------------------------------------------------------------------------------------
def _tiny_pretrain(tmp_path, **trainer):
    """A toy MLE run of a few steps (checkpoint every 2 steps, a CSV row every step)."""
    return write(
        tmp_path / "tiny.yaml",
        {
            "trainer": {
                "max_steps": 4,
                "val_check_interval": 100,
                "log_every_n_steps": 1,
                "enable_progress_bar": False,
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {
                            "filename": "{step}",
                            "save_last": True,
                            "every_n_train_steps": 2,
                            "save_top_k": -1,
                        },
                    }
                ],
                **trainer,
            },
            "model": {"init_args": {"num_eval_samples": 50}},
            "data": {
                "init_args": {
                    "batch_size": 32,
                    "real": {"class_path": "ddo_lightning.data.Toy2DDataset", "init_args": {"num_samples": 512}},
                }
            },
        },
    )


def _train_rows(path):
    import csv

    with open(path) as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


def test_resume_extends_the_run_continues_its_csv_and_last_ckpt_is_the_final_state(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(ROOT / "configs/toy2d_pretrain.yaml"), "--config", _tiny_pretrain(tmp_path)]
    run_cli(args)
    run = tmp_path / "outputs/toy2d_pretrain"
    first = _train_rows(run / "logs/metrics.csv")
    assert [s for s, _ in first] == [0, 1, 2, 3]  # Lightning logs the k-th step at step k - 1
    assert "[run_dir] new run in outputs/toy2d_pretrain" in capsys.readouterr().out
    run_cli(args + ["--trainer.max_steps", "6"])
    assert capsys.readouterr().out.startswith(
        "[run_dir] resuming outputs/toy2d_pretrain from outputs/toy2d_pretrain/checkpoints/last.ckpt (step 4); "
        "changed settings that do not change the result: trainer.max_steps"
    )
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 6
    rows = _train_rows(run / "logs/metrics.csv")
    assert rows[:4] == first and [s for s, _ in rows] == [0, 1, 2, 3, 4, 5]  # one file, each step once
    # a kill after step 6 whose last checkpoints are lost or truncated: the newest readable one (step 4) is
    # resumed, the rows the lost steps had logged are dropped and logged again
    (run / "checkpoints/step=6.ckpt").unlink()
    last = run / "checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[:500])
    with pytest.warns(UserWarning, match="last.ckpt cannot be read.*Resuming from the newest readable checkpoint"):
        run_cli(args + ["--trainer.max_steps", "6"])
    assert "from outputs/toy2d_pretrain/checkpoints/step=4.ckpt (step 4)" in capsys.readouterr().out
    assert torch.load(last, weights_only=True)["global_step"] == 6
    again = _train_rows(run / "logs/metrics.csv")
    assert [s for s, _ in again] == [0, 1, 2, 3, 4, 5] and again[:4] == first
    assert [l for _, l in again[4:]] == pytest.approx([l for _, l in rows[4:]], rel=1e-6)  # replayed: same losses


def test_a_changed_config_is_refused_with_its_keys_unless_forced(tmp_path, monkeypatch, capsys):
    from ddo_lightning.run_dir import RunDirError

    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/toy2d_pretrain.yaml"),
        "--config",
        _tiny_pretrain(tmp_path, max_steps=2),
    ]
    run_cli(args)
    run = tmp_path / "outputs/toy2d_pretrain"
    before = _files(run)
    changed = args + ["--model.init_args.lr", "0.01", "--data.init_args.batch_size", "16", "--trainer.max_steps", "4"]
    with pytest.raises(RunDirError) as err:
        run_cli(changed)
    message = str(err.value)
    assert message.startswith(
        "cannot resume outputs/toy2d_pretrain: the config differs from the run's "
        "(outputs/toy2d_pretrain/config.yaml) in settings that change the result:"
    )
    assert "  data.init_args.batch_size: 32 -> 16\n  model.init_args.lr: 0.002 -> 0.01\n" in message
    assert "max_steps" not in message and "--force_resume" in message and "--new_version" in message
    assert _files(run) == before  # nothing written
    with pytest.raises(SystemExit, match="ddo fit: error: cannot resume"):  # the command: a one-line error
        main(changed)
    capsys.readouterr()
    cli = run_cli(changed + ["--force_resume", "true"])
    assert cli.trainer.global_step == 4
    # the new values are the ones that ran: not the checkpoint's stored arguments, not Adam's restored rate
    assert cli.model.lr == 0.01 and cli.trainer.optimizers[0].param_groups[0]["lr"] == 0.01
    assert cli.datamodule.batch_size == 16
    out = capsys.readouterr().out
    assert "--force_resume with a changed config (data.init_args.batch_size, model.init_args.lr)" in out
    assert (run / "config.before-step-2.yaml").read_bytes() == before["config.yaml"][1]
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["lr"] == 0.01


def test_new_version_starts_beside_the_run_and_results_without_a_checkpoint_are_refused(tmp_path, monkeypatch, capsys):
    from ddo_lightning.run_dir import RunDirError

    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/toy2d_pretrain.yaml"),
        "--config",
        _tiny_pretrain(tmp_path, max_steps=2),
        "--run_dir",
        "runs/a",
    ]
    run_cli(args)
    first = _files(tmp_path / "runs/a")
    run_cli(args + ["--new_version", "true"])
    assert (
        capsys.readouterr().out.splitlines()[-1]
        == "[run_dir] runs/a already holds a run: starting a new one in runs/a-v2 (--new_version)"
    )
    run_cli(args + ["--new_version", "true"])
    assert (tmp_path / "runs/a-v2/checkpoints/last.ckpt").is_file() and (
        tmp_path / "runs/a-v3/checkpoints/last.ckpt"
    ).is_file()
    assert _files(tmp_path / "runs/a") == first
    # killed before its first checkpoint: results but nothing to resume from
    (tmp_path / "runs/b/logs").mkdir(parents=True)
    (tmp_path / "runs/b/logs/metrics.csv").write_text("step,train/loss\n0,1.0\n")
    b = args[:-2] + ["--run_dir", "runs/b"]
    with pytest.raises(
        RunDirError,
        match=r"run directory runs/b holds results of an earlier run \(logs/metrics.csv\) "
        r"but no checkpoint to resume from: add --new_version to start runs/b-v2",
    ):
        run_cli(b)
    assert (tmp_path / "runs/b/logs/metrics.csv").read_text() == "step,train/loss\n0,1.0\n"
    # a run that failed while setting up leaves only its config.yaml: the directory is reused
    (tmp_path / "runs/c").mkdir()
    (tmp_path / "runs/c/config.yaml").write_text("stale: true\n")
    run_cli(args[:-2] + ["--run_dir", "runs/c"])
    assert "stale" not in (tmp_path / "runs/c/config.yaml").read_text()


def test_config_differences_compare_what_changes_the_result():
    from ddo_lightning.run_dir import config_differences

    def cfg(lr=1e-3, rounds=3, kimg=64, devices=1, workers=2, steps=100, extra_callback=False, seed=0):
        callbacks = [
            {"class_path": "ddo_lightning.training.SelfPlay", "init_args": {"rounds": rounds, "kimg_per_round": kimg}},
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"every_n_train_steps": 5}},
        ]
        if extra_callback:
            callbacks.insert(0, {"class_path": "ddo_lightning.training.Preemption", "init_args": {"path": None}})
        return {
            "seed_everything": seed,
            "trainer": {"devices": devices, "max_steps": steps, "callbacks": callbacks},
            "model": {"init_args": {"lr": lr}},
            "data": {"init_args": {"num_workers": workers}},
        }

    assert config_differences(cfg(), cfg()) == ([], [])
    result, harmless = config_differences(cfg(), cfg(rounds=5, workers=0, steps=500, extra_callback=True))
    assert result == [] and harmless == [
        "data.init_args.num_workers",
        "trainer.callbacks.Preemption.class_path",
        "trainer.callbacks.Preemption.init_args.path",
        "trainer.callbacks.SelfPlay.init_args.rounds",
        "trainer.max_steps",
    ]
    result, _ = config_differences(cfg(), cfg(lr=2e-3, kimg=32, devices=2, seed=1))
    assert result == [
        ("model.init_args.lr", 1e-3, 2e-3),
        ("seed_everything", 0, 1),
        ("trainer.callbacks.SelfPlay.init_args.kimg_per_round", 64, 32),
        ("trainer.devices", 1, 2),
    ]


def test_a_run_stored_before_an_argument_existed_resumes_when_the_argument_keeps_its_default():
    """A run directory's config.yaml written by an earlier version lacks the arguments added since (here
    SelfPlay's search and control arguments and the `--selfplay.*` options). Left at their class defaults
    (or unset) they are no change; set to something else they are, by name."""
    from ddo_lightning.run_dir import config_differences

    def config(**selfplay_args):
        init = {"rounds": 3, "kimg_per_round": 512.0, "monitor": "mmd", **selfplay_args}
        return {
            "trainer": {"callbacks": [{"class_path": "ddo_lightning.training.SelfPlay", "init_args": init}]},
            "selfplay": {"rounds": None, **({"candidates": None} if selfplay_args else {})},
        }

    old = config()  # stored before `candidates`, `start_round` and `control` existed
    assert config_differences(old, config(candidates=None, start_round=1, control=False)) == ([], [])
    changes, _ = config_differences(old, config(candidates=None, start_round=1, control=True))
    key = "trainer.callbacks.SelfPlay.init_args.control"
    assert changes == [(key, "(unset)", True)]
