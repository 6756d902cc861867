"""What the ``ddo`` command prints for people: the preset list of ``ddo --help``, the short ``ddo fit
--help`` (DDO's options first, one line each; Lightning's full help is ``ddo fit --help-all``), and a
jsonargparse parser whose help and errors stay short (no list of every ``torch.nn`` class, no 50-line
usage before an error).

The option lists are generated from the classes' signatures and docstrings (``docstring_parser``, the
library jsonargparse itself uses), so they cannot drift from what the parser accepts.
"""

from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path
from typing import Any

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

SUBCOMMANDS = ("fit", "validate", "test", "predict")
FULL_HELP_FLAG = "--help-all"

# (section title, config key prefix, default class path, how the class is chosen)
SECTIONS = (
    (
        "model",
        "--model",
        "ddo_lightning.training.DDOModule",
        "--model ddo_lightning.training.MLEModule for pretraining",
    ),
    (
        "objective",
        "--model.objective",
        "ddo_lightning.objectives.DiffusionDDO",
        "TokenDDO for token models, DenoisingScoreMatching/TokenMLE for MLE",
    ),
    ("self-play", "--selfplay", "ddo_lightning.training.SelfPlay", "sets the SelfPlay entry of trainer.callbacks"),
    ("data", "--data", "ddo_lightning.training.DDODataModule", "the real data set: --data.real CLASS"),
    ("fakes", "--data.fake", "ddo_lightning.training.PoolFakeSource", "or OnlineFakeSource (fresh every step)"),
)
SELFPLAY_OPTIONS = ("rounds", "kimg_per_round", "eval_every_kimg", "monitor", "mode")
TRAINER_OPTIONS = (
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "max_steps",
    "max_time",
    "logger",
    "callbacks",
    "log_every_n_steps",
    "enable_progress_bar",
)


def configs_dir() -> Path | None:
    """The presets' folder: ``configs/`` of the source checkout this package runs from, else of the
    working directory; None when neither exists (an installed wheel ships no presets)."""
    for d in (Path(__file__).resolve().parents[2] / "configs", Path.cwd() / "configs"):
        if d.is_dir() and any(d.glob("*.yaml")):
            return d
    return None


def preset_expectation(path: Path) -> str:
    """One line from a preset's header comment: its ``Expected:`` sentence, else the paper's result
    (the first parenthesised clause with an ``a -> b`` change), else the header's first line."""
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    for line in header:
        if line.startswith("Expected:"):
            return line[len("Expected:") :].strip().rstrip(".")
    text = " ".join(header)
    for clause in re.findall(r"\(([^()]*->[^()]*)\)", text):
        for part in clause.split(";"):
            if "->" in part:
                return part.strip()
    return header[0] if header else ""


def preset_lines(width: int) -> list[str]:
    """``ddo --help``'s preset list: one line per ``configs/*.yaml`` (empty without the folder)."""
    d = configs_dir()
    if d is None:
        return []
    out = [f"presets (ddo fit --config {d.name}/NAME.yaml; MLE = pretraining, DDO = self-play):"]
    for path in sorted(d.glob("*.yaml")):
        kind = "MLE" if "MLEModule" in _chain_text(path) else "DDO"
        out.append(_clip(f"  {path.stem:<16} {kind}  {preset_expectation(path)}", width))
    return out


def _chain_text(path: Path) -> str:
    """The text of a preset and of the bases it names (``config_files.py``), the model class among them."""
    from .config_files import ConfigIncludeError, with_bases

    try:
        paths = with_bases([str(path)])
    except ConfigIncludeError:
        paths = [str(path)]
    return "".join(Path(p).read_text(encoding="utf-8") for p in paths)


def main_help() -> str:
    """``ddo --help``: the commands, then the presets."""
    width = _width()
    lines = [
        "usage: ddo {fit,validate,test,predict,sample,fid,convert,slurm,promote} ...",
        "",
        "  ddo fit --config PRESET.yaml [--KEY VALUE ...]   train (ddo fit --help: the options)",
        "  ddo validate --config PRESET.yaml --ckpt_path FILE   evaluate a checkpoint",
        "  ddo sample --help    samples of a checkpoint to PNGs or .npz",
        "  ddo fid --help       FID of a checkpoint or image set; reference statistics of a dataset",
        "  ddo convert --help   an NVIDIA EDM/EDM2 pickle to plain weights",
        "  ddo fetch --help     download checkpoints, datasets and statistics a preset needs",
        "  ddo slurm --help     run ddo fit under SLURM (sbatch script, one task per device;",
        "                       --sweep: a per-round search, a job array per round)",
        "  ddo promote --help   pick a round's new reference among a search's candidates",
        "",
    ]
    lines += preset_lines(width)
    return "\n".join(lines) + "\n"


# ---- ddo fit --help ------------------------------------------------------------------------------------
def _width() -> int:
    return max(80, min(shutil.get_terminal_size((100, 24)).columns, 120))


def _clip(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def _short(value: Any) -> str:
    text = "null" if value is None else str(value).replace(" ", "")
    return text if len(text) <= 14 else text[:13] + "…"


def _import(class_path: str) -> type:
    module, name = class_path.rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)


def _arg_docs(cls: type) -> dict[str, str]:
    """First sentence of each ``Args:`` entry of ``cls`` and its bases (the subclass's wins)."""
    try:
        from docstring_parser import parse
    except ImportError:  # no descriptions, the options are still listed
        return {}
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        for p in parse(inspect.getdoc(klass) or "").params:
            text = " ".join((p.description or "").replace("``", "").split())
            # the first sentence: a full stop before a capital letter, not inside "e.g." / "i.e."
            docs[p.arg_name] = re.split(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".")
    return docs


def _type_name(annotation: Any, default: Any) -> str:
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None) or str(annotation)
    if isinstance(default, bool) or re.search(r"\bbool\b", name):
        return "BOOL"
    if "tuple" in name:
        return "[A, B]"
    if "list" in name:
        return "[LIST]"
    for t, shown in (("int", "INT"), ("float", "FLOAT"), ("str", "TEXT"), ("Literal", "TEXT")):
        if re.search(rf"\b{t}\b", name):
            return shown
    return "CLASS"


def class_option_lines(cls: type, prefix: str, width: int, only: tuple[str, ...] | None = None) -> list[str]:
    """One line per ``__init__`` argument: ``--prefix.name TYPE  doc [default]``."""
    docs = _arg_docs(cls)
    out = []
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or (only and name not in only):
            continue
        default = "" if p.default is p.empty else f" = {_short(p.default)}"
        option = f"  {prefix}.{name} {_type_name(p.annotation, p.default)}{default}"
        out.append(_clip(f"{option:<46} {docs.get(name, '')}", width))
    return out


def _config_class_paths(argv: list[str]) -> dict[str, str]:
    """The class paths the given ``--config`` files choose for the help's sections (later files win)."""
    import yaml

    from .config_files import ConfigIncludeError, with_bases

    chosen: dict[str, str] = {}
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-c", "--config")]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    try:
        paths = with_bases(paths)  # a preset's base first (config_files.py)
    except ConfigIncludeError:
        pass  # the real parse reports it
    for path in paths:
        try:
            cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue  # the real parse reports it
        model = (cfg.get("model") or {}) if isinstance(cfg, dict) else {}
        data = (cfg.get("data") or {}) if isinstance(cfg, dict) else {}
        for key, node in (
            ("--model", model),
            ("--model.objective", (model.get("init_args") or {}).get("objective")),
            ("--data", data),
            ("--data.fake", (data.get("init_args") or {}).get("fake")),
        ):
            if isinstance(node, dict) and isinstance(node.get("class_path"), str):
                chosen[key] = node["class_path"]
    return chosen


def fit_help(subcommand: str, argv: list[str]) -> str:
    """``ddo fit --help``: DDO's options (module, objective, self-play, data, fakes), then Lightning's
    most used ones; ``ddo fit --help-all`` prints jsonargparse's full help."""
    width = _width()
    chosen = _config_class_paths(argv)
    lines = [
        f"usage: ddo {subcommand} --config PRESET.yaml [--config MORE.yaml] [--KEY VALUE ...]",
        "",
        "Any option below overrides the preset (ddo --help lists the presets). A class is chosen by path,",
        "e.g. --model.objective ddo_lightning.objectives.TokenDDO; --KEY.help CLASS shows that class's options.",
        f"Everything, Lightning's Trainer included: ddo {subcommand} {FULL_HELP_FLAG}",
        "",
    ]
    for title, prefix, default, note in SECTIONS:
        class_path = chosen.get(prefix, default)
        try:
            cls = _import(class_path)
        except (ImportError, AttributeError):
            continue
        only = SELFPLAY_OPTIONS if prefix == "--selfplay" else None
        lines.append(f"{title} ({cls.__name__}; {note}):")
        lines += class_option_lines(cls, prefix, width, only)
        lines.append("")
    lines.append("Lightning Trainer (precision is always 32-true; the rest: --help-all):")
    for i in range(0, len(TRAINER_OPTIONS), 4):
        lines.append(_clip("  " + "  ".join(f"--trainer.{name}" for name in TRAINER_OPTIONS[i : i + 4]), width))
    lines += [
        "",
        "run:",
        _clip(
            f"  {'--ckpt_path FILE':<44} resume this run from a checkpoint (to start DDO from an MLE "
            "checkpoint: --model.init_from FILE)",
            width,
        ),
        _clip(f"  {'--print_config':<44} print the resolved config and exit", width),
        _clip(f"  {'-c, --config FILE':<44} a preset or any YAML fragment (several are merged in order)", width),
    ]
    return "\n".join(lines) + "\n"


# ---- the parser: short subclass lists, short errors -----------------------------------------------------
class ShortHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with each "known subclasses" list cut to the project's own classes (or its
    first 8 entries): a ``network: nn.Module`` argument no longer lists every ``torch.nn`` class."""

    def _get_help_string(self, action: Any) -> str:
        text = super()._get_help_string(action)
        marker = ", known subclasses: "
        if marker not in text:
            return text
        head, rest = text.split(marker, 1)
        tail = ")" if rest.endswith(")") else ""
        paths = [p.strip() for p in rest.rstrip(")").split(",") if p.strip()]
        own = [p for p in paths if p.startswith("ddo_lightning.")]
        keep = own or paths[:8]
        more = f", and {len(paths) - len(keep)} more" if len(paths) > len(keep) else ""
        return f"{head}{marker}{', '.join(keep)}{more}{tail}"


class DDOArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with ``ShortHelpFormatter`` (also in the parsers jsonargparse derives for
    ``--KEY.help``, which are of the same class) and a one-line usage before a parse error, so the error
    message is the last line of the output."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", ShortHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        """As jsonargparse's; ``--config`` also reads the bases a preset names (``config_files.py``)."""
        from jsonargparse import ActionConfigFile

        from .config_files import PresetConfigFile

        if kwargs.get("action") is ActionConfigFile:
            kwargs["action"] = PresetConfigFile
        return super().add_argument(*args, **kwargs)

    def format_usage(self) -> str:
        prog = re.sub(r"^\S+ (\[options\] )?", "ddo ", self.prog + " ").strip()
        return f"usage: {prog} [--config PRESET.yaml] [--KEY VALUE ...]   ({prog} --help: the options)\n"
