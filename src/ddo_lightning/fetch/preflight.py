"""Before a run builds anything: every file the config needs, checked at once, and ``cache:NAME``
resolved to paths, so the classes only ever see plain paths.

``preflight(config, ...)`` walks a parsed config (jsonargparse ``Namespace``) or a YAML dict. It looks at
every ``cache:NAME`` string anywhere, and at the plain paths of the known path-taking keys
(``PATH_KEYS``) in the ``model`` and ``data`` sections (callbacks and loggers name outputs, not inputs).
When something is missing it returns ONE message listing each file, its config key, where it comes from
and the command that provides it; the CLI prints it and exits before any network is built.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import PREFIX, FetchError, cache_root, entry, file_path, is_ref, resolve, url_of, verify_file

__all__ = ["PATH_KEYS", "Problem", "cache_refs", "find_problems", "missing_message", "preflight", "resolve_refs"]

#: Constructor arguments that name an input file or folder (DDOModule/MLEModule, FrechetDistance,
#: InceptionFeatures, VARNetwork/VARImageDecoder, StabilityVAE, the datasets).
PATH_KEYS = frozenset(
    {"init_from", "reference_stats", "weights_path", "vae_checkpoint", "var_checkpoint", "vae_path", "root", "path"}
)
INPUT_SECTIONS = ("model", "data")

#: How to make the inputs that cannot be downloaded, by the class that reads them.
PREPARE = {
    "ImageFolderDataset": "ImageNet-derived data cannot be downloaded: make it with EDM2's `dataset_tool.py convert` "
    "(the preset's header says how)",
    "LatentFolderDataset": "ImageNet-derived latents cannot be downloaded: make them with EDM2's `dataset_tool.py convert`, "
    "then `encode` (the preset's header; docs/edm2.md, Latents)",
    "VARTokenDataset": "ImageNet-derived tokens cannot be downloaded: encode them with ddo_lightning.data.encode_dataset (docs/var.md)",
}


@dataclass
class Problem:
    """A needed file that is missing (or, for a cached one, fails its hash check)."""

    key: str  # dotted config key, e.g. model.init_args.init_from
    value: str  # as written in the config
    path: str  # where it was looked for
    origin: str  # where it comes from / how to make it
    fetchable: bool  # `ddo fetch` provides it


# ---- walking a config ---------------------------------------------------------------------------------
Leaf = tuple[str, Any, str, Callable[[Any], None]]


def _children(node: Any) -> list[tuple[str, Any, Callable[[Any], None]]]:
    if isinstance(node, argparse.Namespace):
        d = vars(node)
    elif isinstance(node, dict):
        d = node
    elif isinstance(node, list):
        return [(f"[{i}]", v, lambda x, i=i: node.__setitem__(i, x)) for i, v in enumerate(node)]
    else:
        return []
    return [(f".{k}", v, lambda x, k=k: d.__setitem__(k, x)) for k, v in list(d.items())]


def walk(node: Any, prefix: str = "", owner: str = "") -> Iterator[Leaf]:
    """Leaves of a nested config: (dotted key, value, class_path of the enclosing spec, setter)."""
    for suffix, value, setter in _children(node):
        key = (prefix + suffix).lstrip(".")
        if isinstance(value, (argparse.Namespace, dict, list)):
            cls = value.get("class_path") if isinstance(value, dict) else getattr(value, "class_path", None)
            yield from walk(value, key, cls if isinstance(cls, str) else owner)
        else:
            yield key, value, owner, setter


def cache_refs(config: Any) -> list[str]:
    """Entry names of every ``cache:NAME`` string in ``config``, in order of appearance, without repeats."""
    names = [v[len(PREFIX) :] for _, v, _, _ in walk(config) if is_ref(v)]
    return list(dict.fromkeys(names))


def resolve_refs(config: Any, check: bool = False) -> Any:
    """Replace every ``cache:NAME`` in ``config`` (in place) by its path; returns ``config``. With
    ``check``, a missing or changed file raises (``resolve``)."""
    for _, value, _, setter in walk(config):
        if is_ref(value):
            setter(resolve(value, check=check))
    return config


# ---- checking ----------------------------------------------------------------------------------------
def _producer(path: str, config_dir: Path) -> str:
    """How a file under outputs/ comes about: the preset whose run writes it, when one can be found."""
    parts = Path(os.path.normpath(path)).parts
    stem = config_dir / f"{parts[1]}.yaml" if len(parts) > 2 else None
    if stem is not None and stem.is_file():  # run directories are outputs/<preset stem>/
        return f"written by another run: run `ddo fit --config {stem}` first"
    folder = str(Path(*parts[:-1])) if len(parts) > 1 else ""
    for preset in sorted(config_dir.glob("*.yaml")):  # a preset naming this folder other than as this input
        if folder and folder in preset.read_text(errors="replace").replace(path, ""):
            return f"written by another run: run `ddo fit --config {preset}` first"
    return "written by another run (a file under outputs/): run the preset that produces it first"


def _plain_problem(key: str, value: str, owner: str, config_dir: Path, base: str) -> Problem | None:
    if os.path.exists(os.path.join(base, os.path.expanduser(value))):
        return None
    cls = owner.rsplit(".", 1)[-1]
    first = Path(os.path.normpath(value)).parts[:1]
    if first == ("outputs",):
        origin = _producer(value, config_dir)
    elif first == ("references",):
        origin = (
            "a reference shipped in the repository's references/ folder: run from the repository root, "
            "or remake it with `make references`"
        )
    else:
        origin = PREPARE.get(cls, "no such file or folder")
    return Problem(key, value, value, origin, fetchable=False)


def _cache_problems(key: str, value: str) -> list[Problem]:
    e = entry(value[len(PREFIX) :])
    out = []
    for f in e.files:
        path = file_path(e, f)
        if not path.is_file():
            out.append(Problem(key, value, str(path), f"{url_of(e, f)} (licence: {e.licence})", True))
            continue
        try:
            verify_file(e, f, path)
        except FetchError as err:
            out.append(Problem(key, value, str(path), f"CHANGED: {err}", True))
    return out


def find_problems(config: Any, config_dir: str | Path = "configs", base: str = "") -> list[Problem]:
    """Every missing (or tampered) needed file of ``config``; unknown cache names raise ``FetchError``.
    Relative plain paths are looked up from ``base`` (default: the current directory)."""
    problems: list[Problem] = []
    for key, value, owner, _ in walk(config):
        if is_ref(value):
            problems += _cache_problems(key, value)
        elif (
            isinstance(value, str)
            and value
            and key.split(".", 1)[0] in INPUT_SECTIONS
            and key.rsplit(".", 1)[-1] in PATH_KEYS
        ):
            problems += [p for p in [_plain_problem(key, value, owner, Path(config_dir), base)] if p]
    return problems


def missing_message(problems: list[Problem], configs: list[str], prog: str = "ddo fit") -> str:
    """The one message: each file once (with every key naming it), then the command(s) that provide them
    (the ``ddo fetch`` command on the last line)."""
    files: dict[str, list[Problem]] = {}
    for p in problems:
        files.setdefault(p.path, []).append(p)
    n = len(files)
    head = f"{prog}: " if prog else ""  # "" where the caller adds its own prefix
    lines = [
        f"{head}{n} file{'s' * (n != 1)} needed by this config {'are' if n != 1 else 'is'} missing; nothing was built:"
    ]
    for path, ps in files.items():
        p = ps[0]
        lines.append(f"  - {', '.join(q.key for q in ps)}: {p.value}")
        if p.value != path:
            lines.append(f"      file: {path}")
        lines.append(f"      {'from: ' if p.fetchable and not p.origin.startswith('CHANGED') else ''}{p.origin}")
    fetch = {p.value for p in problems if p.fetchable}
    by_hand = n - len({p.path for p in problems if p.fetchable})
    if by_hand:
        lines.append(f"The {by_hand} file{'s' * (by_hand != 1)} not from `ddo fetch` must be made as said above.")
    if fetch:
        args = (
            " ".join(f"--config {c}" for c in configs) if configs else " ".join(sorted(v[len(PREFIX) :] for v in fetch))
        )
        what = "the others" if by_hand else "it" if n == 1 else "them"
        lines.append(f"Download {what} into {cache_root()} ($DDO_CACHE) with: ddo fetch {args}")
    return "\n".join(lines)


def preflight(config: Any, configs: list[str], prog: str = "ddo fit") -> str | None:
    """Check ``config`` (a parsed namespace or dict); when every needed file is there, resolve its
    ``cache:NAME`` strings in place and return None, else return the message (nothing is changed)."""
    config_dir = Path(configs[0]).parent if configs else Path("configs")
    problems = find_problems(config, config_dir)
    if problems:
        return missing_message(problems, configs, prog)
    resolve_refs(config)
    return None
