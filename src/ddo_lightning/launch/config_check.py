"""The config of a ``ddo fit`` run, parsed and built the way ``ddo fit`` builds it, without loading weights
or reading data: what ``ddo slurm`` checks before it submits anything.

:func:`fit_config` parses (class paths, argument names and types, as ``ddo fit``'s own parser does) and
returns the merged config. :func:`dry_build` also runs the constructors — this is where value checks live,
e.g. Lightning's ``ModelCheckpoint(save_top_k=2, monitor=None)`` refusal — with three changes that keep it
cheap and free of files:

* networks are built on PyTorch's ``meta`` device: shapes only, no memory, no initialisation cost
  (a 2B-parameter VAR costs nothing);
* arguments that name weights or statistics and whose default is ``None`` (``init_from``,
  ``reference_stats``, ``vae_checkpoint``, ``var_checkpoint``) are passed as ``None``: the constructor then
  builds the same architecture without reading anything;
* a class given another input file (``weights_path``, ``vae_path``, ``root``, ``path``) is not constructed:
  a module becomes a bare instance of its class (class attributes such as ``feature_dim`` are there, its
  constructor did not run), anything else (a dataset) an :class:`Unbuilt` marker, and so does whatever
  contains it (the data module). Callbacks and loggers name output paths only and are always built.

The trainer is built on the CPU with one device and one node (a login node has no GPU); its callbacks,
logger, strategy and plugins are the config's.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from ..fetch.preflight import PATH_KEYS

# Input files a constructor may read (the values of these keys in `model` and `data`): the preflight's list.
FILE_KEYS = PATH_KEYS
# Of those, the ones that mean "weights (or statistics) to load" and may be None (built without them).
WEIGHT_KEYS = ("init_from", "reference_stats", "vae_checkpoint", "var_checkpoint")


class Unbuilt:
    """Stands for an object of ``cls`` that the dry build did not construct (it reads ``files``)."""

    def __init__(self, cls: type, files: dict[str, Any]):
        self.cls, self.files = cls, files

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.files.items())
        return f"{self.cls.__name__}({args})"


def _none_is_default(cls: type, key: str) -> bool:
    try:
        param = inspect.signature(cls).parameters.get(key)
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is None


def _dry_instantiator(unbuilt: list[Unbuilt], failures: list[tuple[type, Exception]]):
    """jsonargparse instantiator for every class: the three changes of the module docstring. A constructor's
    exception is recorded in ``failures`` (jsonargparse reports it inside a long union-type message)."""
    import torch
    from lightning.pytorch import Callback
    from lightning.pytorch.loggers import Logger
    from torch import nn

    def construct(cls: type, *args: Any, **kwargs: Any) -> Any:
        try:
            if isinstance(cls, type) and issubclass(cls, nn.Module):  # shapes only; data stay on the CPU
                with torch.device("meta"):
                    return cls(*args, **kwargs)
            return cls(*args, **kwargs)
        except Exception as err:
            failures.append((cls, err))
            raise

    def build(cls: type, *args: Any, **kwargs: Any) -> Any:
        inner = [v for v in (*args, *kwargs.values()) if isinstance(v, Unbuilt)]
        if inner:  # a container of something not built (DDODataModule of a dataset) is not built either
            marker = Unbuilt(cls, {k: v for k, v in kwargs.items() if isinstance(v, Unbuilt)})
            unbuilt.append(marker)
            return marker
        if isinstance(cls, type) and issubclass(cls, (Callback, Logger)):
            return construct(cls, *args, **kwargs)
        for key in WEIGHT_KEYS:
            if kwargs.get(key) is not None and _none_is_default(cls, key):
                kwargs[key] = None
        files = {k: kwargs[k] for k in FILE_KEYS if isinstance(kwargs.get(k), str)}
        if files:
            unbuilt.append(Unbuilt(cls, files))
            if isinstance(cls, type) and issubclass(cls, nn.Module):
                module = cls.__new__(cls)
                nn.Module.__init__(module)
                return module
            return unbuilt[-1]
        return construct(cls, *args, **kwargs)

    return build


def _cli_class(build: bool, unbuilt: list[Unbuilt], failures: list[tuple[type, Exception]]):
    from ..cli import DDOCLI

    class DryCLI(DDOCLI):
        """``ddo fit``'s CLI that parses (and with ``build`` builds dry) but runs nothing and reads no file."""

        def _parse_ckpt_path(self) -> None:  # would read the checkpoint's hyperparameters
            pass

        def _set_seed(self) -> None:
            pass

        def before_instantiate_classes(self) -> None:  # nothing may be created on disk
            pass

        def after_instantiate_classes(self) -> None:
            pass

        def _run_subcommand(self, subcommand: str | None) -> None:
            pass

        def instantiate_classes(self) -> None:
            if not build:
                return
            instantiators = [(_dry_instantiator(unbuilt, failures), object, True)]
            self.config_init = self.parser.instantiate(self.config, instantiators=instantiators)
            self.datamodule = self._get(self.config_init, "data")
            self.model = self._get(self.config_init, "model")
            self.trainer = self.instantiate_trainer(accelerator="cpu", devices=1, num_nodes=1)

    return DryCLI


def _first_lines(text: str, n: int = 12) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[:n] + ([f"... ({len(lines) - n} more lines)"] if len(lines) > n else []))


def _run(configs: Sequence[str], fit_args: Sequence[str], build: bool, unbuilt: list[Unbuilt] | None = None):
    from jsonargparse import ArgumentError

    from ..cli import run

    args = ["fit"] + [a for c in configs for a in ("--config", c)] + list(fit_args)
    unbuilt = [] if unbuilt is None else unbuilt
    failures: list[tuple[type, Exception]] = []
    noise = io.StringIO()
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.ERROR)  # "GPU available: False ..." of the CPU stand-in trainer
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
            warnings.simplefilter("ignore")
            return run(
                args,
                cli_class=_cli_class(build, unbuilt, failures),
                parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}},
            )
    except (ArgumentError, SystemExit, Exception) as err:
        if failures:  # the innermost constructor that refused: the job would fail the same way at startup
            cls, cause = failures[0]
            raise ConfigError(
                f"the config does not build: {cls.__name__}: {type(cause).__name__}: {_first_lines(str(cause))}"
            ) from None
        if not isinstance(err, (ArgumentError, SystemExit)):
            raise ConfigError(f"the config does not build: {type(err).__name__}: {_first_lines(str(err))}") from err
        detail = str(err) if isinstance(err, ArgumentError) else noise.getvalue()
        raise ConfigError(f"the config does not parse as `ddo fit` would parse it:\n{_first_lines(detail)}") from None
    finally:
        lightning_log.setLevel(level)


def _as_dict(cli) -> dict[str, Any]:
    import yaml

    dumped = cli.parser.dump(cli.config, skip_unset=False, skip_validation=True, format="yaml")  # defaults too
    return yaml.safe_load(dumped)["fit"]


def fit_config(configs: Sequence[str], fit_args: Sequence[str] = ()) -> dict[str, Any]:
    """The merged config of ``ddo fit --config C1 --config C2 ... FIT_ARGS`` as a plain dict (parsed only).

    Raises :class:`ConfigError` with the parser's message."""
    return _as_dict(_run(configs, fit_args, build=False))


def _check_candidates(model: Any, callbacks: Sequence[Any]) -> str | None:
    """A search's candidates against the built module, as SelfPlay checks them when a fit is set up (a key
    the module lacks, e.g. P_mean on a token objective, or a value outside its domain): here, before any
    job is submitted. Raises :class:`ConfigError` naming the candidate."""
    from ..errors import SearchError
    from ..training import DDOModule, SelfPlay

    for cb in callbacks:
        if isinstance(cb, SelfPlay) and cb.searching and isinstance(model, DDOModule):
            try:
                cb.check_candidates_against(model)
            except SearchError as err:
                raise ConfigError(f"the search does not fit this model: {err}") from None
            return f"{len(cb.candidates)} candidate(s) checked against {type(model).__name__}"
    return None


def dry_build(configs: Sequence[str], fit_args: Sequence[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """Parse and build the run without weights or data (module docstring); return the merged config and
    lines describing what was checked. Raises :class:`ConfigError` naming the cause."""
    unbuilt: list[Unbuilt] = []
    cli = _run(configs, fit_args, build=True, unbuilt=unbuilt)
    model, trainer = cli.model, cli.trainer
    notes = []
    if not isinstance(model, Unbuilt):
        try:
            network = model.trained_network()
        except (AttributeError, NotImplementedError):
            network = model
        params = sum(p.numel() for p in network.parameters())
        notes.append(
            f"model {type(model).__name__}: trained network {type(network).__name__} of "
            f"{params / 1e6:.2f}M parameters (shapes only, no weights read)"
        )
    callbacks = [type(c).__name__ for c in trainer.callbacks]
    checked = _check_candidates(model, trainer.callbacks)
    if checked:
        notes.append(checked)
    notes.append(f"trainer callbacks: {', '.join(callbacks)}")
    if unbuilt:
        notes.append("not constructed (they read files when built): " + ", ".join(repr(u) for u in unbuilt))
    return _as_dict(cli), notes
