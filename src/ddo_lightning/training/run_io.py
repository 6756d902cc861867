"""A run's files through Lightning: checkpoints that are never half-written (and truncated ones that are
recognised), and a ``metrics.csv`` that continues across resumes. Both write through
:mod:`ddo_lightning.files` (temporary name, then rename).

Checkpoints. ``AtomicCheckpointIO`` (the ``ddo`` command installs it unless a config names another checkpoint plugin)
writes every Lightning checkpoint to a temporary name in the same directory, flushes it to disk and
renames it: a crash or SIGKILL leaves either the old file or the new one. ``usable_checkpoint`` checks a
checkpoint loads (``torch.load(weights_only=True)``: our checkpoints hold tensors and plain containers
only) and, when it does not, falls back to the newest good checkpoint in the same directory.

The CSV log. Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it opens its directory again (and, with
a fixed version, a resumed run loses the rows of the first segment). ``RunCSVLogger`` keeps them: it
reads the existing header and rows, appends, and rewrites the file (atomically) only when new columns
appear. The file is also flushed at every ModelCheckpoint save, so it holds every row up to the newest
checkpoint; when told the step a resumed run restarts from (``ddo fit`` does this), it drops the rows the
interrupted run logged after that checkpoint, which the resumed run logs again: one row per step, no gap.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..errors import CorruptCheckpoint
from ..files import atomic_torch_save, atomic_write_text, read_tensor_file


# ---- checkpoints ------------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with write-to-temporary-then-rename saves and a clear error for unreadable files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, str(path))  # a failed write removes its temporary file and names `path`

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise CorruptCheckpoint(
                f"checkpoint {path} cannot be read (truncated or corrupt?): {type(err).__name__}: {err}"
            ) from err


def check_checkpoint(path: str) -> None:
    """Raise :class:`CorruptCheckpoint` unless ``path`` loads with ``torch.load(weights_only=True)``."""
    read_tensor_file(path, mmap=True)


def usable_checkpoint(path: str) -> str:
    """``path`` if it loads; otherwise the newest other ``*.ckpt`` in its directory that loads (with a
    warning naming both); otherwise :class:`CorruptCheckpoint` naming ``path``."""
    try:
        check_checkpoint(path)  # a missing file: FileNotFoundError (read_tensor_file)
        return path
    except CorruptCheckpoint as err:
        first = err
    here = os.path.dirname(os.path.abspath(path))
    others = sorted(
        (p for p in glob.glob(os.path.join(here, "*.ckpt")) if os.path.abspath(p) != os.path.abspath(path)),
        key=os.path.getmtime,
        reverse=True,
    )
    for other in others:
        try:
            check_checkpoint(other)
        except CorruptCheckpoint:
            continue
        rank_zero_warn(f"{first}. Resuming from the newest good checkpoint in {here} instead: {other}")
        return other
    raise CorruptCheckpoint(f"{first}; no other readable checkpoint in {here}")


# ---- metrics.csv ------------------------------------------------------------------------------------------
def _read_rows(path: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _rows_text(fieldnames: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


EVALUATION_PREFIXES = (
    "eval/",
    "control/",
)  # evaluations' columns (report.publish_evaluation): a round's, the control's


def _before(row: dict[str, str], step: int) -> bool:
    """Whether a CSV row was logged before the checkpoint taken after ``step`` training steps. Lightning
    logs the k-th step's metrics at ``step`` k - 1; evaluations (``publish_evaluation``: ``eval/`` and the MLE
    control's ``control/``) are logged at the global step they were taken at, before that step's checkpoint
    is written."""
    if not row.get("step"):
        return True
    s = int(float(row["step"]))
    return s < step or (
        s == step and any(k.startswith(EVALUATION_PREFIXES) and v not in ("", None) for k, v in row.items())
    )


class _ContinuingWriter(ExperimentWriter):
    """ExperimentWriter that continues an existing ``metrics.csv`` instead of deleting it."""

    def __init__(self, log_dir: str, resume_step: int | None = None) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        if not os.path.isfile(self.metrics_file_path):
            return
        fieldnames, rows = _read_rows(self.metrics_file_path)
        self.metrics_keys = sorted(fieldnames)
        if self._resume_step is not None:
            # rows logged after the checkpoint the run resumes from: the resumed run logs those steps again
            kept = [r for r in rows if _before(r, self._resume_step)]
            if len(kept) < len(rows):
                atomic_write_text(self.metrics_file_path, _rows_text(self.metrics_keys, kept))
                rank_zero_info(
                    f"[logs] {self.metrics_file_path}: dropped {len(rows) - len(kept)} rows logged after "
                    f"step {self._resume_step} by the interrupted run (they are logged again)"
                )

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        _, rows = _read_rows(self.metrics_file_path)
        atomic_write_text(self.metrics_file_path, _rows_text(fieldnames, rows))


class RunCSVLogger(CSVLogger):
    """``<save_dir>/<name>/metrics.csv`` (and ``hparams.yaml``), continued when a run resumes.

    Args:
        save_dir: parent folder (``ddo fit`` fills it with the run directory when unset).
        name: subfolder of ``save_dir`` (default ``logs``: ``<run dir>/logs/metrics.csv``).
        version: subfolder of ``name``; the default ``""`` means none, so every segment of a resumed run
            writes to the same file.
        prefix: prepended to metric names.
        flush_logs_every_n_steps: write buffered rows every this many steps (and at every checkpoint).
    """

    def __init__(
        self,
        save_dir: str | None = None,
        name: str = "logs",
        version: int | str | None = "",
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ):
        super().__init__(
            save_dir if save_dir is not None else ".",
            name=name,
            version=version,
            prefix=prefix,
            flush_logs_every_n_steps=flush_logs_every_n_steps,
        )
        self.resume_step: int | None = None  # set by `ddo fit` when resuming, before anything is logged

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self.resume_step)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        # the file then holds every row up to the newest checkpoint: a kill loses none the resume cannot replay
        self.save()
