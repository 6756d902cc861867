"""Files a preset needs from elsewhere (checkpoints, datasets, reference statistics, weights): a manifest,
a verified cache (``$DDO_CACHE``), ``ddo fetch``, and ``"cache:NAME"`` in YAML (docs/fetch.md).

    from ddo_lightning.fetch import resolve
    resolve("cache:inception")   # -> ~/.cache/ddo_lightning/inception/weights-inception-2015-12-05-6726825d.pth
"""

from .cache import PREFIX, FetchError, MissingFile, cache_root, entry, entry_path, is_ref, lock_path, resolve
from .download import ResumableDownloader, fetch_entry, fetch_file
from .manifest import MANIFEST, Entry, RemoteFile
from .preflight import cache_refs, find_problems, missing_message, preflight, resolve_refs

__all__ = [
    "MANIFEST",
    "PREFIX",
    "Entry",
    "FetchError",
    "MissingFile",
    "RemoteFile",
    "ResumableDownloader",
    "cache_refs",
    "cache_root",
    "entry",
    "entry_path",
    "fetch_entry",
    "fetch_file",
    "find_problems",
    "is_ref",
    "lock_path",
    "missing_message",
    "preflight",
    "resolve",
    "resolve_refs",
]
