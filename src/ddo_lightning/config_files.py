"""Presets that build on another: a config file whose top-level ``config:`` key names its base.

    # configs/edm_cifar10_cond.yaml: the class-conditional variant, only what differs
    config: edm_cifar10.yaml            # the base, relative to this file
    model:
      init_args:
        init_from: cache:edm-cifar10-cond-vp

``ddo fit --config configs/edm_cifar10_cond.yaml`` then means ``--config configs/edm_cifar10.yaml
--config configs/edm_cifar10_cond.yaml``: the base first, the variant layered on it exactly as a second
``--config`` is (partial ``init_args`` merged into the base's, a list of callbacks merged element by
element by class path). ``config`` is jsonargparse's own key for a config file inside a config file, but
jsonargparse merges the rest of that file into the base only for plain keys, not for class-path
specs given partially (their ``init_args`` are checked against the state *before* the base was read), so
the base is applied first here, as its own ``--config``; the variant's ``config:`` key then re-reads the
same base, which changes nothing. The run keeps the variant's name: ``cfg.config`` lists the files given,
so the run directory is ``outputs/<variant stem>`` as before.

Every other reader of preset files (``ddo fetch``/``sample``/``fid``, the help's class lookup) expands
the chain with :func:`with_bases`.
"""

from __future__ import annotations

import os
from typing import Any

from jsonargparse import ActionConfigFile

INCLUDE_KEY = "config"
MAX_DEPTH = 8  # a chain longer than this is a loop (a -> b -> a) or a mistake


class ConfigIncludeError(ValueError):
    """A preset's ``config:`` names a file that does not exist, is not a string, or loops."""


def base_of(path: str | os.PathLike) -> str | None:
    """The file a YAML preset's top-level ``config:`` names, resolved relative to the preset's folder;
    None without one (or when ``path`` is not a readable YAML mapping: the real parse reports that)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict) or INCLUDE_KEY not in cfg:
        return None
    base = cfg[INCLUDE_KEY]
    if not isinstance(base, str):
        raise ConfigIncludeError(f"{path}: `{INCLUDE_KEY}:` must name one base config file, got {base!r}")
    resolved = os.path.normpath(os.path.join(os.path.dirname(os.fspath(path)), os.path.expanduser(base)))
    if not os.path.isfile(resolved):
        raise ConfigIncludeError(f"{path}: its base config `{INCLUDE_KEY}: {base}` does not exist ({resolved})")
    return resolved


def chain(path: str | os.PathLike) -> list[str]:
    """``path`` preceded by its bases, the deepest first: ``[base, ..., path]``."""
    out = [os.fspath(path)]
    while (base := base_of(out[0])) is not None:
        if len(out) > MAX_DEPTH or any(os.path.samefile(base, p) for p in out if os.path.isfile(p)):
            raise ConfigIncludeError(f"{path}: the chain of `{INCLUDE_KEY}:` bases loops ({' <- '.join(out)})")
        out.insert(0, base)
    return out


def with_bases(paths: list[str]) -> list[str]:
    """Each config file of ``paths`` preceded by its bases, in order (what ``ddo fit`` reads)."""
    return [p for path in paths for p in chain(path)]


def strip_include(cfg: Any) -> Any:
    """A loaded YAML mapping without its ``config:`` key (for readers that merge the chain themselves)."""
    return {k: v for k, v in cfg.items() if k != INCLUDE_KEY} if isinstance(cfg, dict) else cfg


class PresetConfigFile(ActionConfigFile):
    """``--config FILE``: the bases FILE names (``config:``) applied first, each as its own ``--config``,
    then FILE; ``cfg.config`` lists FILE alone, as given (the run directory is named after it)."""

    def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
        if not isinstance(values, str) or not os.path.isfile(values):  # a YAML string, or a missing file:
            return super().__call__(parser, cfg, values, option_string)  # jsonargparse's handling and errors
        try:
            bases = chain(values)[:-1]
        except ConfigIncludeError as err:
            raise TypeError(f'Parser key "{self.dest}": {err}') from err
        given = cfg.get(self.dest)
        given = list(given) if isinstance(given, list) else []
        for base in bases:
            self.apply_config(parser, cfg, self.dest, base)
        self.apply_config(parser, cfg, self.dest, values)
        cfg[self.dest] = given + cfg[self.dest][-1:]  # the bases read are not files the user gave
