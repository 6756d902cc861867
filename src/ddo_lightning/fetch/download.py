"""Downloads into the cache: pooch does the hashing, the temporary file and the atomic rename; the HTTP
transfer is ``ResumableDownloader`` (requests), because pooch's own downloaders start every attempt from
byte 0 and throw a partial file away.

Flow for one file (``fetch_file``): present -> verified (``cache.verify_file``), nothing downloaded.
Missing -> ``pooch.retrieve(url, known_hash, ...)`` with our downloader: the bytes go to ``<file>.part``
(kept when the transfer breaks, so the next try sends ``Range: bytes=<size>-``), the finished part is
moved onto pooch's temporary file, pooch checks the hash (the publisher's, or the one locked by an
earlier download) and renames it into place; on a mismatch pooch deletes it, so nothing is left. Without
any known hash the file's sha256 is recorded in the lock file. Converted entries (EDM2's reference
pickles) are turned into their ``.npz`` by a pooch processor that reads the pickle without running code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .cache import FetchError, file_path, read_lock, record, url_of, verify_file
from .manifest import Entry, RemoteFile

__all__ = ["CONVERTERS", "ResumableDownloader", "fetch_entry", "fetch_file"]

CHUNK = 1 << 20


class ResumableDownloader:
    """A pooch downloader (``__call__(url, output_file, pooch)``) that resumes: HTTP GET with requests into
    ``part``, continued with a Range request from the part's size, retried while a try makes progress.

    Args:
        part: the persistent partial file (``<cached file>.part``).
        retries: further tries after a transfer that broke but added bytes (a refused connection or an
            HTTP error status is not retried: it would not help).
        progress: a tqdm bar (bytes) on stderr.
        timeout: seconds to connect and between received bytes.
    """

    def __init__(self, part: Path, retries: int = 3, progress: bool = True, timeout: float = 60.0):
        self.part, self.retries, self.progress, self.timeout = Path(part), retries, progress, timeout
        self.ranges_sent = 0  # how many tries resumed with a Range request

    def __call__(self, url: str, output_file: str, pooch: Any = None, check_only: bool = False) -> None:
        import requests

        for attempt in range(self.retries + 1):
            before = self._size()
            try:
                self._get(url)
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError):
                if attempt == self.retries or self._size() <= before:
                    raise
        os.replace(self.part, output_file)  # pooch hashes it, then renames it into place

    def _size(self) -> int:
        return self.part.stat().st_size if self.part.is_file() else 0

    def _get(self, url: str) -> None:
        import requests
        import urllib3
        from tqdm.auto import tqdm

        have = self._size()
        # identity: a compressed transfer would not be byte ranges of the file
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
        self.ranges_sent += bool(have)
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as r:
            if have and r.status_code == 416:  # the part is not a prefix the server can continue: restart
                self.part.unlink()
                return self._get(url)
            r.raise_for_status()
            if have and not (r.status_code == 206 and _range_start(r.headers.get("Content-Range")) == have):
                have = 0  # the server sent the whole file (or another range): start over
            length = r.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            # read1 hands over whatever has arrived, so bytes received before a break reach the part file
            # (read(n) of urllib3 drops a short last block when the connection dies)
            read = getattr(r.raw, "read1", None) or r.raw.read
            self.part.parent.mkdir(parents=True, exist_ok=True)
            with (
                open(self.part, "ab" if have else "wb") as out,
                tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=self.part.name[:-5],
                    disable=not self.progress,
                    leave=False,
                ) as bar,
            ):
                try:
                    while chunk := read(CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
                except urllib3.exceptions.HTTPError as err:  # raw reads raise urllib3's errors, not requests'
                    raise requests.exceptions.ChunkedEncodingError(err) from err
        if total is not None and self._size() != total:
            raise requests.exceptions.ChunkedEncodingError(f"connection closed after {self._size()} of {total} bytes")


def _range_start(content_range: str | None) -> int | None:
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (content_range or "").strip())
    return int(m.group(1)) if m else None


# ---- converters (pooch processors) -------------------------------------------------------------------
def edm2_ref_to_npz(source: str, target: str) -> None:
    """EDM2's ``dataset-refs/img*.pkl`` (a pickled dict ``{'fid': {'mu', 'sigma'}, ...}``) -> EDM's
    ``.npz`` (mu, sigma), read with the safe NVIDIA unpickler (no code in the file is executed)."""
    import numpy as np

    from ..checkpoints.nvidia_pickle import load_nvidia_pickle
    from ..metrics.fid import save_reference_stats

    try:
        stats = load_nvidia_pickle(source)["fid"]
        mu, sigma = np.asarray(stats["mu"], np.float64), np.asarray(stats["sigma"], np.float64)
    except Exception as err:  # noqa: BLE001 - unsafe global, not a dict, no 'fid': name the file
        raise FetchError(
            f"{source}: not EDM2 reference statistics with a 'fid' entry holding mu and sigma "
            f"({type(err).__name__}: {err})"
        ) from err
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise FetchError(f"{source}: 'fid' mu must be [d] and sigma [d, d], got {mu.shape} and {sigma.shape}")
    save_reference_stats(target, mu, sigma)  # atomic: temporary name, then rename


CONVERTERS = {"edm2-ref-fid": edm2_ref_to_npz}


class _Convert:
    """pooch processor: ``CONVERTERS[name](downloaded, target)`` unless the target is already there."""

    def __init__(self, name: str, target: Path):
        self.fn, self.target = CONVERTERS[name], target

    def __call__(self, fname: str, action: str, pooch: Any) -> str:
        if not self.target.is_file():
            self.fn(fname, str(self.target))
        return str(self.target)


# ---- fetching ----------------------------------------------------------------------------------------
def manual_hint(e: Entry, f: RemoteFile) -> str:
    """Where to put the file by hand (offline machines)."""
    src = file_path(e, f, download=True)
    then = f"then `ddo fetch {e.name}` {'converts and ' if f.convert else ''}checks it"
    return f"download {url_of(e, f)} on a machine with internet and put it at {src} ({then})"


def fetch_file(e: Entry, f: RemoteFile, retries: int = 3, progress: bool = True) -> tuple[Path, str]:
    """Make one file of entry ``e`` present and verified; returns (path, what happened)."""
    import pooch
    import requests

    target, source = file_path(e, f), file_path(e, f, download=True)
    if target.is_file():
        verify_file(e, f, target)
        return target, "present, verified"
    pooch.get_logger().setLevel("WARNING")  # its INFO lines suggest pasting hashes into code
    locked = read_lock().get(f"{e.name}/{source.name}", {}).get("hash")
    known = f.known_hash or locked
    url = url_of(e, f)
    downloader = ResumableDownloader(Path(f"{source}.part"), retries=retries, progress=progress)
    fresh = not source.is_file()
    try:
        pooch.retrieve(
            url,
            known_hash=known,
            fname=source.name,
            path=source.parent,
            downloader=downloader,
            processor=_Convert(f.convert, target) if f.convert else None,
        )
    except ValueError as err:  # pooch: hash mismatch (the temporary file is already deleted)
        _drop_empty(source.parent)
        raise FetchError(
            f"{e.name}: {url} downloaded, but {err.args[0].split('. ')[0]} "
            f"({'published checksum' if f.known_hash else 'sha256 recorded at its first download'}). "
            "Nothing was kept. A changed file on the server or a proxy that rewrites downloads? "
            f"If the new file is right, remove its record from {source.parent.parent / 'ddo-fetch.lock.json'}"
        ) from err
    except (requests.RequestException, OSError) as err:
        part = downloader.part
        kept = (
            (f" The {part.stat().st_size} bytes received are kept in {part}: run `ddo fetch {e.name}` again to resume.")
            if part.is_file()
            else ""
        )
        _drop_empty(source.parent)
        raise FetchError(
            f"{e.name}: cannot download {url} ({type(err).__name__}: {err}).{kept} Without network: {manual_hint(e, f)}"
        ) from err
    except FetchError:
        if fresh:
            source.unlink(missing_ok=True)
        _drop_empty(source.parent)
        raise
    if known is None:
        record(e, f, source, f"first download from {url}")
    if f.convert:
        record(e, f, target, f"converted from {source.name}")
    elif f.known_hash:
        record(e, f, target, "published checksum")
    how = "resumed" if downloader.ranges_sent else "downloaded" if fresh else "converted"
    return target, how


def _drop_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only when empty: an entry folder created for a download that failed
    except OSError:
        pass


def fetch_entry(e: Entry, retries: int = 3, progress: bool = True) -> list[tuple[Path, str]]:
    """Every file of entry ``e``, present and verified."""
    return [fetch_file(e, f, retries, progress) for f in e.files]


def entry_status(e: Entry) -> str:
    """'present' or 'missing' (no hashing: for listings)."""
    return "present" if all(file_path(e, f).is_file() for f in e.files) else "missing"


__all__ += ["entry_status", "manual_hint"]
