"""Smoke test of benchmarks/ (`make bench`): every benchmark runs with --quick (tiny settings, no figures
worth reading), writes its JSON with the required fields, and every ratio is finite and positive. Where
there is an exact oracle it is asserted: our Heun sampler and k-diffusion's sample_heun on the same σ
grid with the same (float64) state give the same samples (when the `bench` extra is installed)."""

import importlib
import importlib.util
import json
import math
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCHMARKS = ["step_cost", "sampler", "memory", "fake_samples", "scaling", "compile"]
HAVE_KDIFF = importlib.util.find_spec("k_diffusion") is not None


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """Each benchmark run once with --quick (on first use), its JSON parsed; all in one folder."""
    out = tmp_path_factory.mktemp("bench")
    cache = {}

    def get(name):
        if name not in cache:
            importlib.import_module(f"benchmarks.{name}").main(["--quick", "--out", str(out)])
            cache[name] = json.loads((out / f"{name}.json").read_text())
        return cache[name]

    get.out = out
    return get


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick(name, quick_results, one_thread):
    result = quick_results(name)
    assert result["name"] == name
    for key in ("cpu", "cores", "ram_gib", "torch", "torch_threads"):
        assert key in result["machine"]
    assert result["settings"] and result["figures"], result
    for f in result["figures"]:
        for key in ("name", "unit", "min", "median", "max", "n", "target", "met", "values"):
            assert key in f, (key, f)
        assert f["n"] >= 1 and f["min"] <= f["median"] <= f["max"]
        assert all(math.isfinite(v) and v > 0 for v in f["values"]), f
        if f["target"] is not None:
            assert isinstance(f["met"], bool)
    if name == "compile":
        assert not result["extra"]["errors"], result["extra"]["errors"]


@pytest.mark.skipif(not HAVE_KDIFF, reason="k-diffusion (the `bench` extra, `make bench`) is not installed")
def test_sampler_matches_k_diffusion(quick_results, one_thread):
    result = quick_results("sampler")
    for preset, agree in result["extra"]["agreement"].items():
        assert agree["kdiff64"]["max_rel_diff"] <= 1e-6, (preset, agree)  # same algorithm, same precision
        assert agree["kdiff32"]["max_rel_diff"] <= 1e-3, (preset, agree)  # float32 state: rounding only


def test_summary_renders(quick_results, one_thread):
    from benchmarks import summary

    quick_results("step_cost")
    text = summary.render(summary.load(quick_results.out))
    assert "| step_cost |" in text and "target" in text
