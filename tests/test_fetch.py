"""`ddo fetch`, the cache and the preflight of missing files. No test touches the internet: downloads come
from an HTTP server on 127.0.0.1 started here (with Range support and a mode that breaks a transfer)."""

import hashlib
import http.server
import os
import pathlib
import pickle
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml

from ddo_lightning.cli import main
from ddo_lightning.fetch import (
    MANIFEST,
    Entry,
    FetchError,
    MissingFile,
    RemoteFile,
    fetch_entry,
    find_problems,
    resolve,
)
from ddo_lightning.fetch.cache import read_lock

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER_PRESETS = ["edm_cifar10", "edm_cifar10_cond", "edm2_img64_s", "edm2_img512_l", "var_d16", "var_d30"]
PAYLOAD = bytes(range(256)) * 400 + b"tail"  # 102,404 bytes: several chunks, not a round size


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> bytes); honours ``Range: bytes=N-``; ``server.cut[path] = n`` sends
    only n bytes of the next response to ``path`` (with the full Content-Length) and drops the connection."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.log.append((self.path, self.headers.get("Range")))
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, m = 0, re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m:
            start = int(m.group(1))
            if start >= len(data):
                self.send_error(416)
                return
        self.send_response(206 if m else 200)
        if m:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.cut.pop(self.path, None)
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.cut, srv.log = {}, {}, []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("DDO_CACHE", str(root))
    monkeypatch.delenv("DDO_FETCH_MIRROR", raising=False)
    monkeypatch.setattr("sys.argv", ["ddo"])
    return root


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def toy_entry(monkeypatch, url, known_hash=None, name="toy-file", file="toy.bin"):
    e = Entry(name, (RemoteFile(url, file, known_hash=known_hash),), "test licence", "a test file")
    monkeypatch.setitem(MANIFEST, name, e)
    return e


def listing(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ---- downloads ---------------------------------------------------------------------------------------
def test_download_checks_sha256_and_leaves_no_temporary_files(server, cache, monkeypatch):
    server.files["/toy.bin"] = PAYLOAD
    e = toy_entry(monkeypatch, server.url + "/toy.bin", known_hash=f"sha256:{sha256(PAYLOAD)}")
    [(path, how)] = fetch_entry(e, progress=False)
    assert how == "downloaded" and path == cache / "toy-file" / "toy.bin"
    assert path.read_bytes() == PAYLOAD
    assert listing(cache / "toy-file") == ["toy.bin"]  # no .part, no pooch temporary file
    assert resolve("cache:toy-file") == str(path)
    assert read_lock()["toy-file/toy.bin"]["hash"] == f"sha256:{sha256(PAYLOAD)}"
    # present: verified, not downloaded again
    n = len(server.log)
    assert fetch_entry(e, progress=False)[0][1] == "present, verified" and len(server.log) == n


def test_wrong_checksum_is_an_error_and_nothing_is_kept(server, cache, monkeypatch):
    server.files["/toy.bin"] = PAYLOAD
    toy_entry(monkeypatch, server.url + "/toy.bin", known_hash=f"sha256:{sha256(b'another file')}")
    with pytest.raises(SystemExit) as info:
        main(["fetch", "toy-file", "--quiet"])
    assert info.value.code == 2
    assert not (cache / "toy-file").exists()
    assert "toy-file/toy.bin" not in read_lock()


def test_wrong_checksum_message(server, cache, monkeypatch):
    server.files["/toy.bin"] = PAYLOAD
    e = toy_entry(monkeypatch, server.url + "/toy.bin", known_hash=f"sha256:{sha256(b'another file')}")
    with pytest.raises(
        FetchError,
        match=r"(?s)toy-file: http://127\.0\.0\.1:\d+/toy\.bin downloaded, but .*hash.*"
        r"does not match.*published checksum.*Nothing was kept",
    ):
        fetch_entry(e, progress=False)


def test_a_broken_transfer_is_resumed_with_a_range_request(server, cache, monkeypatch):
    server.files["/toy.bin"] = PAYLOAD
    server.cut["/toy.bin"] = 40_000
    e = toy_entry(monkeypatch, server.url + "/toy.bin", known_hash=f"sha256:{sha256(PAYLOAD)}")
    [(path, how)] = fetch_entry(e, progress=False)
    assert server.log == [("/toy.bin", None), ("/toy.bin", "bytes=40000-")]
    assert how == "resumed" and sha256(path.read_bytes()) == sha256(PAYLOAD)
    assert listing(cache / "toy-file") == ["toy.bin"]


def test_a_partial_download_is_kept_and_resumed_by_the_next_run(server, cache, monkeypatch, capsys):
    server.files["/toy.bin"] = PAYLOAD
    server.cut["/toy.bin"] = 30_000
    toy_entry(monkeypatch, server.url + "/toy.bin")  # no published hash: the lock-file rule
    with pytest.raises(SystemExit):
        main(["fetch", "toy-file", "--retries", "0", "--quiet"])
    err = capsys.readouterr().err
    assert "30000 bytes received are kept" in err and "again to resume" in err
    assert (cache / "toy-file" / "toy.bin.part").read_bytes() == PAYLOAD[:30_000]
    main(["fetch", "toy-file", "--quiet"])  # returns: exit status 0
    assert server.log[-1] == ("/toy.bin", "bytes=30000-")
    assert (cache / "toy-file" / "toy.bin").read_bytes() == PAYLOAD
    assert listing(cache / "toy-file") == ["toy.bin"]
    assert read_lock()["toy-file/toy.bin"]["hash"] == f"sha256:{sha256(PAYLOAD)}"


def test_server_down_names_the_url_and_where_to_put_the_file(cache, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/toy.bin"
    e = toy_entry(monkeypatch, url)
    t0 = time.perf_counter()
    with pytest.raises(FetchError) as info:
        fetch_entry(e, progress=False)
    msg = str(info.value)
    assert f"cannot download {url}" in msg and "Without network" in msg
    assert f"put it at {cache / 'toy-file' / 'toy.bin'}" in msg and "`ddo fetch toy-file`" in msg
    assert time.perf_counter() - t0 < 10  # a refused connection is not retried
    assert not (cache / "toy-file").exists()


def test_lock_file_records_the_first_download_and_refuses_a_changed_file(server, cache, monkeypatch):
    server.files["/toy.bin"] = PAYLOAD
    e = toy_entry(monkeypatch, server.url + "/toy.bin")
    [(path, _)] = fetch_entry(e, progress=False)
    record = read_lock()["toy-file/toy.bin"]
    assert record["hash"] == f"sha256:{sha256(PAYLOAD)}" and record["size"] == len(PAYLOAD)
    assert "first download" in record["origin"]
    path.write_bytes(PAYLOAD[:-1] + b"X")  # tampered after the download
    with pytest.raises(
        FetchError, match=r"toy\.bin does not match its recorded hash.*Delete it and run `ddo fetch toy-file`"
    ):
        resolve("cache:toy-file")
    assert find_problems({"model": {"init_from": "cache:toy-file"}})[0].origin.startswith("CHANGED")
    # deleted and downloaded again while the server now sends other bytes: the locked hash refuses them
    path.unlink()
    server.files["/toy.bin"] = PAYLOAD[::-1]
    with pytest.raises(FetchError, match="sha256 recorded at its first download"):
        fetch_entry(e, progress=False)
    assert not path.exists()


def test_a_file_placed_by_hand_is_recorded_at_first_use_then_checked(cache, monkeypatch):
    toy_entry(monkeypatch, "http://127.0.0.1:9/never-requested")
    with pytest.raises(MissingFile, match="ddo fetch toy-file"):
        resolve("cache:toy-file")
    path = cache / "toy-file" / "toy.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(PAYLOAD)
    assert resolve("cache:toy-file") == str(path)
    assert read_lock()["toy-file/toy.bin"]["hash"] == f"sha256:{sha256(PAYLOAD)}"
    path.write_bytes(b"changed")
    with pytest.raises(FetchError, match="does not match"):
        resolve("cache:toy-file")
    assert resolve("plain/path.pkl") == "plain/path.pkl"
    with pytest.raises(FetchError, match="unknown cache entry 'nope'.*cifar10"):
        resolve("cache:nope")


def _edm2_refs(mu, sigma) -> bytes:
    """A pickle shaped as EDM2's dataset-refs/img64.pkl: a plain dict of metric -> {'mu', 'sigma'}."""
    return pickle.dumps({"fid": {"mu": mu, "sigma": sigma}, "fd_dinov2": {"mu": mu[:2], "sigma": sigma[:2, :2]}})


def test_edm2_reference_pickle_is_converted_to_npz_through_a_mirror(server, cache, monkeypatch, capsys):
    from ddo_lightning.metrics.fid import load_reference_stats

    rng = np.random.default_rng(0)
    mu, a = rng.normal(size=4), rng.normal(size=(4, 4))
    sigma = a @ a.T
    server.files["/fid-ref-img64/img64.pkl"] = _edm2_refs(mu, sigma)
    monkeypatch.setenv("DDO_FETCH_MIRROR", server.url + "/")
    main(["fetch", "fid-ref-img64", "--quiet"])
    assert server.log == [("/fid-ref-img64/img64.pkl", None)]  # the manifest's nvidia.com URL is never used
    path = resolve("cache:fid-ref-img64")
    assert path.endswith("img64.npz")
    got_mu, got_sigma = load_reference_stats(path)
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)
    assert {"fid-ref-img64/img64.pkl", "fid-ref-img64/img64.npz"} <= set(read_lock())


def test_a_reference_pickle_with_code_is_refused_and_nothing_is_kept(server, cache, monkeypatch, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    server.files["/fid-ref-img64/img64.pkl"] = pickle.dumps({"fid": {"mu": Evil()}})
    monkeypatch.setenv("DDO_FETCH_MIRROR", server.url)
    with pytest.raises(FetchError, match=r"img64\.pkl.*refusing the global '(posix|os)\.system'"):
        fetch_entry(MANIFEST["fid-ref-img64"], progress=False)
    assert not marker.exists() and not (cache / "fid-ref-img64").exists()


def test_fetch_config_downloads_every_cache_entry_and_names_the_rest(server, cache, monkeypatch, tmp_path, capsys):
    server.files["/toy.bin"] = PAYLOAD
    server.files["/other.bin"] = PAYLOAD[:1000]
    toy_entry(monkeypatch, server.url + "/toy.bin")
    toy_entry(monkeypatch, server.url + "/other.bin", name="toy-other", file="other.bin")
    cfg = tmp_path / "preset.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "init_args": {
                        "init_from": "cache:toy-file",
                        "evaluator": {"init_args": {"reference_stats": "cache:toy-other"}},
                    }
                },
                "data": {
                    "init_args": {
                        "real": {
                            "class_path": "ddo_lightning.data.VARTokenDataset",
                            "init_args": {"path": str(tmp_path / "tokens.npz")},
                        }
                    }
                },
            }
        )
    )
    main(["fetch", "--config", str(cfg), "--quiet"])
    out, err = capsys.readouterr()
    assert "toy-file: " in out and "toy-other: " in out
    assert (cache / "toy-other" / "other.bin").read_bytes() == PAYLOAD[:1000]
    assert "not downloadable: data.init_args.real.init_args.path" in err and "encode_dataset" in err


def test_ddo_sample_names_the_fetch_command_for_a_missing_cached_checkpoint(cache, monkeypatch, tmp_path, capsys):
    toy_entry(monkeypatch, "http://127.0.0.1:9/never-requested")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"init_args": {"init_from": "cache:toy-file", "network": None}}}))
    with pytest.raises(SystemExit) as info:
        main(["sample", "--config", str(cfg), "--out", str(tmp_path / "s.npz")])
    assert info.value.code == 2
    assert "Download it with `ddo fetch toy-file`" in capsys.readouterr().err


# ---- preflight ---------------------------------------------------------------------------------------
def test_preflight_names_the_run_that_produces_a_file_under_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load((ROOT / "configs/toy2d.yaml").read_text())
    cfg["model"]["init_args"]["init_from"] = "outputs/toy2d_pretrain/checkpoints/last.ckpt"  # a pretraining run's
    [problem] = find_problems(cfg, ROOT / "configs")
    assert problem.key == "model.init_args.init_from" and not problem.fetchable
    assert (
        problem.origin == f"written by another run: run `ddo fit --config {ROOT / 'configs/toy2d_pretrain.yaml'}` first"
    )


def test_preflight_says_where_a_shipped_reference_comes_from(tmp_path, monkeypatch):
    """configs/toy2d.yaml as shipped, run outside the repository root: its reference is not found there."""
    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load((ROOT / "configs/toy2d.yaml").read_text())
    [problem] = find_problems(cfg, ROOT / "configs")
    assert problem.key == "model.init_args.init_from" and problem.path == "references/toy2d_ring8.pt"
    assert "shipped in the repository's references/ folder" in problem.origin and "make references" in problem.origin
    monkeypatch.chdir(ROOT)
    assert find_problems(cfg, ROOT / "configs") == []


def test_preflight_resolves_cache_names_in_place(cache, monkeypatch):
    from ddo_lightning.fetch import preflight

    toy_entry(monkeypatch, "http://127.0.0.1:9/never-requested")
    path = cache / "toy-file" / "toy.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(PAYLOAD)
    cfg = {
        "model": {"init_args": {"init_from": "cache:toy-file", "lr": 1e-3}},
        "trainer": {"callbacks": [{"init_args": {"path": "not/an/input.png"}}]},
    }
    assert preflight(cfg, ["c.yaml"]) is None  # outputs named by callbacks are not inputs
    assert cfg["model"]["init_args"] == {"init_from": str(path), "lr": 1e-3}


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_preset_without_files_fails_fast_with_one_message(preset, tmp_path, monkeypatch, capfd):
    """`ddo fit --config configs/<preset>.yaml` on a machine without any files: one message listing every
    missing file and the `ddo fetch` command, within seconds, before any network is built. One preset runs
    as the user runs it (a fresh process, timed from the start, Lightning's import included); the others
    in this process, where the same code path runs without paying the import again."""
    config = ROOT / "configs" / f"{preset}.yaml"
    monkeypatch.setenv("DDO_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("DDO_FETCH_MIRROR", raising=False)
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    if preset == "edm_cifar10":
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        proc = subprocess.run(
            [sys.executable, "-c", "from ddo_lightning.cli import main; main()", "fit", "--config", str(config)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        returncode, output = proc.returncode, proc.stdout + proc.stderr
    else:
        monkeypatch.setattr("sys.argv", ["ddo"])
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(config)])
        returncode, output = exit_info.value.code, "".join(capfd.readouterr())
    elapsed = time.perf_counter() - t0
    assert returncode not in (0, None) and elapsed < 30, (returncode, elapsed)
    assert "Traceback" not in output and "ModelCheckpoint" not in output, output
    assert output.count("missing; nothing was built") == 1
    lines = output.strip().splitlines()
    assert lines[-1].endswith(f"with: ddo fetch --config {config}"), lines[-1]
    # every downloadable file the preset names (the YAML read independently; for an overlay on a base, the
    # full file it was before: tests/data/presets_full) is listed with its URL
    full = ROOT / "tests" / "data" / "presets_full" / f"{preset}.yaml"
    refs = set(
        re.findall(r"cache:([\w.-]+)", (full if full.is_file() else config).read_text().split("\nseed_everything")[1])
    )
    for name in refs:
        for f in MANIFEST[name].files:
            assert f.url in output and str(tmp_path / "empty-cache" / name / f.name) in output, (name, output)
    assert not (tmp_path / "outputs").exists()  # nothing was built or written
