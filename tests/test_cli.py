"""The `ddo` command: help, every preset parses, each preset runs a tiny step, bad input is named."""

import json
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
    assert run(["fit", "--model", "ddo_lightning.training.DDOModule",
                "--model.objective.help", "ddo_lightning.objectives.DiffusionDDO"]) == 0
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


def test_toy_presets_run_tiny_steps(tmp_path, monkeypatch):
    """Both presets, as `make demo` runs them, with sizes overridden by a second --config."""
    monkeypatch.chdir(tmp_path)
    small_data = {"data": {"init_args": {"batch_size": 64, "real": {"class_path": "ddo_lightning.data.Toy2DDataset",
                                                                      "init_args": {"num_samples": 1024}}}}}
    pre = write(tmp_path / "pre.yaml", {
        "trainer": {"max_steps": 3, "val_check_interval": 3, "enable_progress_bar": False, "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": "outputs/demo/pretrain", "save_last": True, "every_n_train_steps": 3}}]},
        "model": {"init_args": {"num_eval_samples": 200}}, **small_data})
    main(["fit", "--config", str(ROOT / "configs/toy2d_pretrain.yaml"), "--config", pre])
    assert (tmp_path / "outputs/demo/pretrain/last.ckpt").is_file()
    ddo = write(tmp_path / "ddo.yaml", {
        "trainer": {"enable_progress_bar": False, "callbacks": [
            {"class_path": "ddo_lightning.training.SelfPlay",
             "init_args": {"rounds": 1, "kimg_per_round": 0.128, "eval_every_kimg": 0.064, "monitor": "mmd",
                           "dirpath": "outputs/demo/ddo"}}]},
        "model": {"init_args": {"num_eval_samples": 200}},
        "data": {"init_args": {**small_data["data"]["init_args"], "fake": {
            "class_path": "ddo_lightning.training.PoolFakeSource", "init_args": {"size": 256}}}}})
    main(["fit", "--config", str(ROOT / "configs/toy2d.yaml"), "--config", ddo])
    summary = json.loads((tmp_path / "outputs/demo/ddo/summary.json").read_text())
    assert summary["monitor"] == "mmd" and len(summary["rounds"]) == 1
    assert (tmp_path / "outputs/demo/ddo/round-1.ckpt").is_file()
    # `ddo validate` on the round checkpoint re-evaluates the promoted EMA: the same fixed-seed numbers
    cli = run_cli(["validate", "--config", str(ROOT / "configs/toy2d.yaml"), "--config", ddo,
                "--ckpt_path", "outputs/demo/ddo/round-1.ckpt"])
    promoted = summary["rounds"][0]["metrics"]
    for key in ("mmd", "precision", "recall"):
        assert float(cli.trainer.callback_metrics[f"val/{key}"]) == pytest.approx(promoted[key], rel=1e-5), key


@pytest.mark.parametrize("value", ["-1", ".nan", ".inf"])
def test_invalid_alpha_from_the_command_line(value):
    with pytest.raises(ValueError, match="alpha"):
        main(["fit", "--config", str(ROOT / "configs/toy2d.yaml"),
              "--model.init_args.objective.init_args.alpha", value, "--model.init_args.init_from", "null"])


def _print_config(path):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["fit", "--config", str(path), "--print_config"])
    return buf.getvalue()


def test_digits_presets_run_tiny_steps(tmp_path, monkeypatch):
    """`make demo-digits` at a tiny size: 2 MLE steps, then one short DDO round with a quantised pool."""
    monkeypatch.chdir(tmp_path)
    small = {"num_eval_samples": 40, "eval_batch_size": 40,
             "sampler": {"class_path": "ddo_lightning.samplers.HeunSampler", "init_args": {"num_steps": 3}}}
    pre = write(tmp_path / "pre.yaml", {
        "trainer": {"max_steps": 2, "val_check_interval": 2, "enable_progress_bar": False, "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": "outputs/digits/pretrain", "save_last": True, "every_n_train_steps": 2}}]},
        "model": {"init_args": small}, "data": {"init_args": {"batch_size": 16}}})
    main(["fit", "--config", str(ROOT / "configs/digits_pretrain.yaml"), "--config", pre])
    ddo = write(tmp_path / "ddo.yaml", {
        "trainer": {"enable_progress_bar": False, "callbacks": [
            {"class_path": "ddo_lightning.training.SelfPlay",
             "init_args": {"rounds": 1, "kimg_per_round": 0.032, "eval_every_kimg": 0.016, "monitor": "digits_fid",
                           "dirpath": "outputs/digits/ddo", "summary_path": "outputs/digits/summary.json"}},
            {"class_path": "ddo_lightning.training.ImageGridFigure",
             "init_args": {"path": "outputs/digits/samples.png", "num_samples": 20}}]},
        "model": {"init_args": small},
        "data": {"init_args": {"batch_size": 16, "fake": {"class_path": "ddo_lightning.training.PoolFakeSource",
                                                          "init_args": {"size": 64, "quantize": True}}}}})
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
    pre = write(tmp_path / "pre.yaml", {
        "trainer": {"max_steps": 4, "val_check_interval": 4, "enable_progress_bar": False, "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": "outputs/tokens/pretrain", "save_last": True, "every_n_train_steps": 4}}]},
        "model": {"init_args": small}, "data": data})
    main(["fit", "--config", str(ROOT / "configs/tokens_pretrain.yaml"), "--config", pre])
    ddo = write(tmp_path / "ddo.yaml", {
        "trainer": {"enable_progress_bar": False, "callbacks": [
            {"class_path": "ddo_lightning.training.SelfPlay",
             "init_args": {"rounds": 1, "kimg_per_round": 0.064, "eval_every_kimg": 0.032, "monitor": "kl_sym",
                           "dirpath": "outputs/tokens/ddo", "summary_path": "outputs/tokens/summary.json"}},
            {"class_path": "ddo_lightning.training.TokenFigure",
             "init_args": {"path": "outputs/tokens/samples.png", "num_samples": 64}}]},
        "model": {"init_args": small}, "data": data})
    main(["fit", "--config", str(ROOT / "configs/tokens.yaml"), "--config", ddo])
    summary = json.loads((tmp_path / "outputs/tokens/summary.json").read_text())
    assert summary["monitor"] == "kl_sym" and summary["reference"]["kl_sym"] > 0
    assert summary["reference"]["kl_sym"] == pytest.approx(
        summary["reference"]["kl_data_model"] + summary["reference"]["kl_model_data"])
    assert (tmp_path / "outputs/tokens/samples.png").stat().st_size > 1000
