"""The project's one exception family.

Every error the package raises on purpose is a :class:`DDOError`, so a caller can catch "anything
ddo_lightning refused" in one clause. Each class also keeps the built-in base it has always had
(``ValueError`` for bad input, ``OSError`` for failed writes, ...), so ``except ValueError`` keeps
working. The classes are defined here, at the bottom layer, and re-exported by the modules that raise
them (``from ddo_lightning.commands import CommandError`` still works).

Tree::

    DDOError
    ├── ConfigError            (ValueError)  a config that does not parse or build
    ├── CommandError           (ValueError)  bad input to ddo sample / ddo fid
    ├── RunDirError            (ValueError)  a run directory that cannot be used as asked
    ├── DataNetworkMismatch    (ValueError)  data and network sizes disagree
    ├── CheckpointError        (ValueError)  a checkpoint cannot be read or used
    │   ├── CorruptCheckpoint                truncated / not a checkpoint
    │   ├── ArchitectureMismatch             weights do not fit the network (names, shapes)
    │   │   ├── RecordedNetworkMismatch      recorded class/settings differ from the declared ones
    │   │   └── CheckpointMismatch           VAR tensors missing / unexpected / reshaped
    │   └── NvidiaPickleError                an NVIDIA pickle that cannot be read
    │       └── UnsafeGlobalError (+ RefusedGlobal)  a global off the NVIDIA allow-list
    ├── RefusedGlobal          (pickle.UnpicklingError)  any restricted pickle naming a global off its list
    ├── FetchError             (RuntimeError)      a download or cached file failed a check
    ├── MissingFile            (FileNotFoundError) a cache:NAME file is not in the cache
    ├── WriteError             (OSError)           writing an output file failed
    ├── SearchError            (ValueError)  a bad per-round search (candidates, sweep grid)
    ├── NonFiniteLossError     (FloatingPointError) the loss became NaN/inf
    └── WeightsNeverChangedError (RuntimeError)    no self-play round changed the weights
"""

from __future__ import annotations

import pickle


class DDOError(Exception):
    """Base of every error ddo_lightning raises on purpose; the message says what and how to fix it."""


class ConfigError(DDOError, ValueError):
    """The config does not parse or does not build as ``ddo fit`` would."""


class CommandError(DDOError, ValueError):
    """Bad input to ``ddo sample`` / ``ddo fid``; the message says what and how to fix it."""


class RunDirError(DDOError, ValueError):
    """A run directory that cannot be used as asked (nothing was written)."""


class DataNetworkMismatch(DDOError, ValueError):
    """The data's samples or labels do not fit the network's sizes (raised at setup, before any step)."""


class CheckpointError(DDOError, ValueError):
    """A checkpoint (ours, a converted file or an NVIDIA pickle) cannot be read or used."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint that cannot be read (truncated, not a checkpoint, …)."""


class ArchitectureMismatch(CheckpointError):
    """The weights do not fit the network: names or shapes differ."""


class RecordedNetworkMismatch(ArchitectureMismatch):
    """The checkpoint records another network class, or settings that change outputs, than declared."""


class CheckpointMismatch(ArchitectureMismatch):
    """A checkpoint's tensors do not fit the network: missing, unexpected or differently shaped keys."""


class NvidiaPickleError(CheckpointError):
    """An NVIDIA network pickle cannot be read or does not hold what was asked for."""


class RefusedGlobal(DDOError, pickle.UnpicklingError):
    """A pickle read by :class:`ddo_lightning.unpickle.RestrictedUnpickler` names a global off its allow-list."""


class UnsafeGlobalError(NvidiaPickleError, RefusedGlobal):
    """An NVIDIA pickle refers to a global that is not on the allow-list."""


class FetchError(DDOError, RuntimeError):
    """A download or a cached file failed a check; the message says what and what to do."""


class MissingFile(DDOError, FileNotFoundError):
    """A ``cache:NAME`` file is not in the cache; the message gives the ``ddo fetch`` command."""


class WriteError(DDOError, OSError):
    """Writing an output file failed; ``filename`` is the destination (not the temporary name)."""


class SearchError(DDOError, ValueError):
    """A per-round search that cannot run: an unknown or non-round key, a bad value, an empty, duplicated
    or too large candidate list (raised before anything trains)."""


class NonFiniteLossError(DDOError, FloatingPointError):
    """The DDO loss became NaN or infinite; training stops before the bad step changes any weight."""


class WeightsNeverChangedError(DDOError, RuntimeError):
    """No round of a self-play run changed the target's weights (the summary says which round and why)."""
