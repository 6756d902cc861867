"""Presets as base + overlay (``config: BASE.yaml``, ``ddo_lightning/config_files.py``) and the declared
network types.

Oracle for the overlays: the full variant files as shipped before they became overlays
(``tests/data/presets_full/``), resolved by the same ``ddo fit --print_config``: an overlay must resolve
to exactly the same config, key for key.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from test_presets import flatten, resolved

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))
FRAGMENTS = sorted((CONFIGS / "strategy").glob("*.yaml")) + sorted((CONFIGS / "trainer").glob("*.yaml"))
FULL = ROOT / "tests" / "data" / "presets_full"
VARIANTS = {"edm_cifar10_cond": "edm_cifar10", "var_d30": "var_d16"}  # overlay: its base


def test_the_variants_name_their_bases():
    for variant, base in VARIANTS.items():
        assert yaml.safe_load((CONFIGS / f"{variant}.yaml").read_text())["config"] == f"{base}.yaml"
    assert sorted(p.stem for p in FULL.glob("*.yaml")) == sorted(VARIANTS)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_overlay_resolves_as_the_full_file_did(variant, monkeypatch):
    monkeypatch.setattr("sys.argv", ["ddo"])
    overlay = flatten(resolved(["--config", str(CONFIGS / f"{variant}.yaml")]))
    full = flatten(resolved(["--config", str(FULL / f"{variant}.yaml")]))
    assert overlay == full
    # and as the base with the variant as a second --config (what `config:` means)
    base = VARIANTS[variant]
    assert (
        flatten(resolved(["--config", str(CONFIGS / f"{base}.yaml"), "--config", str(CONFIGS / f"{variant}.yaml")]))
        == full
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_overlay_holds_only_what_differs(variant):
    """Every setting the overlay states differs from its base's (class paths restated in a callback list,
    which jsonargparse merges element by element, excepted): the file stays an overlay."""
    own = flatten(yaml.safe_load((CONFIGS / f"{variant}.yaml").read_text()))
    base = flatten(yaml.safe_load((CONFIGS / f"{VARIANTS[variant]}.yaml").read_text()))
    restated = [k for k in own if k != "config" and not k.endswith("class_path") and base.get(k, "<absent>") == own[k]]
    assert restated == []
    assert len(own) <= 12, own


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.name)  # alone: test_cli.test_every_config_parses
@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_parses_with_every_fragment(preset, fragment, monkeypatch):
    monkeypatch.setattr("sys.argv", ["ddo"])
    printed = resolved(["--config", str(preset), "--config", str(fragment)])
    assert printed["trainer"]["precision"] == "32-true" and printed["model"]["class_path"].startswith("ddo_lightning.")
    for key, value in yaml.safe_load(fragment.read_text())["trainer"].items():  # the fragment wins over the preset
        want = [v["class_path"] for v in value] if isinstance(value, list) else value["class_path"]
        got = printed["trainer"][key]
        assert ([v["class_path"] for v in got] if isinstance(got, list) else got["class_path"]) == want


# ---- the include mechanism on small files -----------------------------------------------------------------
def _parser():
    from jsonargparse import ActionConfigFile

    from ddo_lightning.cli_help import DDOArgumentParser
    from ddo_lightning.networks import Backbone

    p = DDOArgumentParser(exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--net", type=Backbone)
    return p


def _write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


TOY = {"class_path": "ddo_lightning.networks.ToyMLP", "init_args": {"hidden": 32, "depth": 3}}


def test_a_base_is_read_first_and_the_run_is_named_after_the_variant(tmp_path):
    from ddo_lightning.run_dir import default_run_dir

    (tmp_path / "sub").mkdir()
    _write(tmp_path / "base.yaml", {"steps": 5, "net": TOY})
    variant = _write(tmp_path / "sub" / "v.yaml", {"config": "../base.yaml", "net": {"init_args": {"depth": 7}}})
    cfg = _parser().parse_args(["--config", variant])
    assert cfg.steps == 5 and cfg.net.class_path == TOY["class_path"]
    assert (cfg.net.init_args.hidden, cfg.net.init_args.depth) == (32, 7)
    assert [str(c) for c in cfg.config] == [variant] and default_run_dir(cfg.config) == "outputs/v"


def test_a_missing_or_looping_base_is_named(tmp_path):
    missing = _write(tmp_path / "m.yaml", {"config": "nowhere.yaml", "steps": 1})
    with pytest.raises(Exception, match=r"nowhere\.yaml"):
        _parser().parse_args(["--config", missing])
    _write(tmp_path / "a.yaml", {"config": "b.yaml"})
    loop = _write(tmp_path / "b.yaml", {"config": "a.yaml"})
    with pytest.raises(Exception, match="loops"):
        _parser().parse_args(["--config", loop])


def test_ddo_fetch_and_sample_read_the_chain(tmp_path):
    from ddo_lightning.commands import read_configs

    for variant in VARIANTS:
        assert (
            read_configs([str(CONFIGS / f"{variant}.yaml")])["model"]
            == read_configs([str(FULL / f"{variant}.yaml")])["model"]
        )


# ---- network types ----------------------------------------------------------------------------------------
OUR_NETWORKS = {
    "Network",
    "Precond",
    "EDMPrecond",
    "VPPrecond",
    "VEPrecond",
    "iDDPMPrecond",
    "TokenGPT",
    "VARTokenModel",
    "VARNetwork",
}


def _known_subclasses(help_text: str, option: str) -> set[str]:
    text = " ".join(help_text.split())
    block = text[text.index(f"{option} ") :]
    listed = re.search(r"known subclasses: ([^)]*)\)", block).group(1)
    return {p.strip().rsplit(".", 1)[-1] for p in listed.split(",")}


def test_model_help_lists_our_networks_only(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["ddo"])
    from ddo_lightning.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "ddo_lightning.training.DDOModule"])
    out = capsys.readouterr().out
    assert _known_subclasses(out, "--model.network NETWORK") == OUR_NETWORKS  # no layers (Linear, UNetBlock, ...)
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "edm_cifar10.yaml"),
                "--model.network.help",
                "ddo_lightning.networks.EDMPrecond",
            ]
        )
    assert _known_subclasses(capsys.readouterr().out, "--network.model MODEL") == {
        "Backbone",
        "SongUNet",
        "DhariwalUNet",
        "ToyMLP",
    }


def test_a_torch_layer_is_refused_as_the_network(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["ddo"])
    from ddo_lightning.cli import main

    with pytest.raises(SystemExit) as ex:
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "toy2d.yaml"),
                "--model.init_args.network",
                "torch.nn.Linear",
                "--print_config",
            ]
        )
    assert ex.value.code == 2
    assert "Network" in capsys.readouterr().err
