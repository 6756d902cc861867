"""The cache of fetched files: where entries live, the lock file, and ``resolve("cache:NAME")``.

Layout (docs/fetch.md)::

    $DDO_CACHE (default ~/.cache/ddo_lightning)/
        ddo-fetch.lock.json          hash + (size, mtime) stamp of every file in use
        NAME/<file>                  one folder per manifest entry
        NAME/<file>.part             an interrupted download, resumed by the next `ddo fetch NAME`

Every use of a cached file is checked against its hash: the publisher's where there is one, else the
sha256 recorded in the lock file at its first download (or first use, for a file put there by hand).
Hashing a multi-GB checkpoint on every run would cost seconds, so the lock also keeps the file's size
and mtime when it was last verified: an unchanged stamp skips the hash, any change (rewritten,
truncated, replaced file) re-hashes it. The lock is written atomically; if the cache is read-only the
stamp is not saved and the file is simply hashed again next time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import FetchError, MissingFile
from ..files import atomic_write_text
from .manifest import MANIFEST, Entry, RemoteFile

__all__ = [
    "PREFIX",
    "FetchError",
    "MissingFile",
    "cache_root",
    "entry",
    "entry_path",
    "file_path",
    "is_ref",
    "lock_path",
    "resolve",
    "url_of",
    "verify_file",
]

PREFIX = "cache:"
LOCK_NAME = "ddo-fetch.lock.json"


def cache_root() -> Path:
    """``$DDO_CACHE``, default ``~/.cache/ddo_lightning`` (not created here)."""
    return Path(os.environ.get("DDO_CACHE") or Path.home() / ".cache" / "ddo_lightning").expanduser()


def lock_path() -> Path:
    return cache_root() / LOCK_NAME


def is_ref(value: Any) -> bool:
    """True for a ``"cache:NAME"`` string."""
    return isinstance(value, str) and value.startswith(PREFIX)


def entry(name: str) -> Entry:
    """The manifest entry ``name``; an unknown name is an error listing the known ones."""
    try:
        return MANIFEST[name]
    except KeyError:
        raise FetchError(f"unknown cache entry {name!r}; known: {', '.join(MANIFEST)} (`ddo fetch --list`)") from None


def entry_path(e: Entry) -> Path:
    """What ``cache:NAME`` stands for: the single file, or the folder of a several-file entry."""
    folder = cache_root() / e.name
    return folder if e.folder else folder / e.files[0].name


def file_path(e: Entry, f: RemoteFile, download: bool = False) -> Path:
    """The cached file (``download``: the downloaded file, which differs for converted entries)."""
    return cache_root() / e.name / (f.source_name if download else f.name)


def url_of(e: Entry, f: RemoteFile) -> str:
    """The file's URL, or ``$DDO_FETCH_MIRROR/NAME/<file>`` when a mirror laid out like the cache is set."""
    mirror = os.environ.get("DDO_FETCH_MIRROR")
    return f"{mirror.rstrip('/')}/{e.name}/{f.source_name}" if mirror else f.url


# ---- lock file ----------------------------------------------------------------------------------------
def read_lock() -> dict[str, dict[str, Any]]:
    """``{"NAME/file": {"hash", "origin", "size", "mtime_ns"}}`` ({} when there is no lock file yet)."""
    path = lock_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        assert isinstance(files, dict)
        return files
    except Exception as err:  # noqa: BLE001 - any damage: say which file and how to recover
        raise FetchError(
            f"cannot read the lock file {path} ({type(err).__name__}: {err}); repair it, or delete it "
            "to record every cached file's sha256 again from the files as they are now"
        ) from err


def update_lock(key: str, record: dict[str, Any] | None) -> bool:
    """Set (or, with None, drop) one record; atomic write. False when the cache is not writable."""
    try:
        files = read_lock()
        if record is None:
            files.pop(key, None)
        else:
            files[key] = record
        atomic_write_text(
            lock_path(), json.dumps({"version": 1, "files": dict(sorted(files.items()))}, indent=1) + "\n"
        )
        return True
    except OSError:
        return False


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_hash(path: Path, alg: str) -> str:
    import pooch

    return pooch.file_hash(str(path), alg=alg)


def record(e: Entry, f: RemoteFile, path: Path, origin: str, digest: str | None = None) -> str:
    """Lock ``path`` (a file of entry ``e``) with its hash (computed unless given); returns the hash."""
    digest = digest or (
        f.known_hash if f.known_hash and path.name == f.source_name else f"sha256:{file_hash(path, 'sha256')}"
    )
    update_lock(
        f"{e.name}/{path.name}",
        {"hash": digest, "origin": origin, **_stamp(path), "recorded": time.strftime("%Y-%m-%d %H:%M:%S")},
    )
    return digest


def verify_file(e: Entry, f: RemoteFile, path: Path) -> None:
    """Check a present cached file against its published hash or its lock record (recording it on its
    first use when it has neither: a file put there by hand). Raises ``FetchError`` on a mismatch."""
    key = f"{e.name}/{path.name}"
    rec = read_lock().get(key)
    published = f.known_hash if path.name == f.source_name else None
    expected = published or (rec or {}).get("hash")
    if rec and rec.get("hash") == expected and all(rec.get(k) == v for k, v in _stamp(path).items()):
        return  # verified before and unchanged since
    if expected is None:
        record(e, f, path, "first use (file present before any recorded download)")
        return
    if published and f.size is not None and path.stat().st_size != f.size:
        actual = f"{path.stat().st_size} bytes, published size {f.size}"
    else:
        alg, want = expected.split(":", 1)
        got = file_hash(path, alg)
        if got == want:
            record(e, f, path, (rec or {}).get("origin", "published checksum"), expected)
            return
        actual = f"{alg} {got}, expected {want}"
    against = "published checksum" if published else f"recorded hash (lock file {lock_path()})"
    raise FetchError(
        f"{path} does not match its {against} ({actual}): the file changed since it was checked. "
        f"Delete it and run `ddo fetch {e.name}`"
    )


def resolve(ref: str, check: bool = True) -> str:
    """``"cache:NAME"`` -> the cached file (or folder) as a string; any other string is returned as it is.

    With ``check`` the files must be present (else ``MissingFile``, whose message gives the ``ddo fetch``
    command) and match their hashes (else ``FetchError``)."""
    if not is_ref(ref):
        return ref
    e = entry(ref[len(PREFIX) :])
    target = entry_path(e)
    if check:
        for f in e.files:
            path = file_path(e, f)
            if not path.is_file():
                raise MissingFile(
                    f"{ref}: {path} is missing ({e.description}; from {url_of(e, f)}). "
                    f"Download it with `ddo fetch {e.name}`"
                )
            verify_file(e, f, path)
    return str(target)
