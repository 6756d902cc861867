"""`ddo slurm --sweep` (a job array per round and a promotion job, chained by dependencies) and `ddo promote`.

Oracles: the grid as itertools.product of the --sweep values, the case block as bash evaluates it, the
job ids a fake sbatch hands out, the plain `ddo slurm` job's #SBATCH lines, the bytes of the candidates'
best.pt files, and, end to end, each candidate's own summary.json (which candidate beat the reference)."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ddo_lightning.errors import SearchError
from ddo_lightning.launch import promote as promote_mod
from ddo_lightning.launch import slurm
from ddo_lightning.launch.slurm import main, render_sbatch
from ddo_lightning.launch.sweep import fill_placeholders, render_sweep, sweep_candidates
from ddo_lightning.training.search import MAX_CANDIDATES

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "configs/toy2d.yaml")

ALPHAS, BETAS = [2.0, 4.0, 8.0], [0.02, 0.05]
GRID = [
    {"model.objective.alpha": a, "model.objective.beta": b} for a, b in itertools.product(ALPHAS, BETAS)
]  # the first axis varies slowest
JOB = dict(
    nodes=2,
    gpus_per_node=8,
    cpus_per_task=8,
    time="1-00:00:00",
    job_name="search",
    output_dir="runs/s/logs",
    partition="gpu",
    batch_per_device=32,
    python="py",
)


def render(rounds=3, first_round=1, run_dir="runs/s", **kw):
    return render_sweep(
        ["a.yaml"],
        candidates=GRID,
        rounds=rounds,
        first_round=first_round,
        run_dir=run_dir,
        monitor="fid",
        mode="min",
        **{**JOB, **kw},
    )


def sbatch_lines(text):
    return [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH")]


def dependency(text):
    deps = [line for line in sbatch_lines(text) if line.startswith("--dependency=")]
    return deps[0].removeprefix("--dependency=") if deps else None


def srun_words(text, env):
    """The words of the task script's srun line as bash expands them for ``env``, after srun's own options
    (``--kill-on-bad-exit=1 --cpus-per-task=8``, checked here)."""
    line = next(x for x in text.splitlines() if x.startswith("srun "))
    prelude = text[: text.index(line)]
    script = prelude + line.replace("srun ", 'printf "%s\\n" ', 1) + "\n"
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True, cwd="/tmp")
    words = done.stdout.splitlines()
    assert words[:2] == ["--kill-on-bad-exit=1", "--cpus-per-task=8"]
    return words[2:]


def case_of(text, task):
    """(LABEL, CANDIDATE) that the script's case block sets for array task ``task``, run by bash."""
    block = text[text.index('case "$SLURM_ARRAY_TASK_ID"') : text.index("esac") + 4]
    done = subprocess.run(
        ["bash", "-c", block + '\nprintf "%s\\n%s\\n" "$LABEL" "$CANDIDATE"'],
        env={"SLURM_ARRAY_TASK_ID": str(task), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    return done


# ---- rendering ---------------------------------------------------------------------------------------
def test_every_round_has_an_array_and_a_promotion_chained_by_dependencies():
    scripts = render(rounds=3)
    assert [s.name for s in scripts] == [f"round-{r}-{k}" for r in (1, 2, 3) for k in ("array", "promotion")]
    by = {s.name: s.text for s in scripts}
    assert dependency(by["round-1-array"]) is None  # the first round starts at once
    assert dependency(by["round-1-promotion"]) == "afterany:<round-1-array>"
    for r in (2, 3):
        assert dependency(by[f"round-{r}-array"]) == f"afterok:<round-{r - 1}-promotion>"
        assert dependency(by[f"round-{r}-promotion"]) == f"afterany:<round-{r}-array>,afterok:<round-{r - 1}-promotion>"
    for name, text in by.items():
        lines = sbatch_lines(text)
        assert ("--kill-on-invalid-dep=yes" in lines) == (dependency(text) is not None), name
        assert text.startswith("#!/bin/bash\n")
    # bash reads every script
    for text in by.values():
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_array_task_is_the_plain_multinode_job():
    """One array task asks for what a plain `ddo slurm` job of the same flags asks for (nodes, tasks per node,
    GPUs, CPUs, time, requeue signal, partition), as an array of one task per candidate."""
    text = render(rounds=1)[0].text
    plain = sbatch_lines(render_sbatch(["a.yaml"], **{k: v for k, v in JOB.items()}))
    lines = sbatch_lines(text)
    assert lines[1] == f"--array=0-{len(GRID) - 1}"  # 3 x 2 candidates
    differ = ("--job-name", "--output", "--error")
    assert [x for x in lines if not x.startswith((*differ, "--array"))] == [
        x for x in plain if not x.startswith(differ)
    ]
    assert lines[0] == "--job-name=search-r1" and "--output=runs/s/logs/%x-%A_%a.out" in lines
    words = srun_words(text, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_ID": "7", "PATH": os.environ["PATH"]})
    assert words[: words.index("--trainer.callbacks+=ddo_lightning.training.Preemption")] == [
        "py",
        "-m",
        "ddo_lightning.cli",
        "fit",
        "--config",
        "a.yaml",
        "--trainer.accelerator",
        "gpu",
        "--trainer.num_nodes",
        "2",
        "--trainer.devices",
        "8",
    ]
    assert words[-2:] == ["--data.init_args.batch_size", "32"]


def test_case_block_holds_exactly_the_grid():
    text = render(rounds=1)[0].text
    seen = []
    for task in range(len(GRID)):
        done = case_of(text, task)
        label, cand = done.stdout.splitlines()
        seen.append(json.loads(cand))
        a, b = seen[-1]["model.objective.alpha"], seen[-1]["model.objective.beta"]
        assert label == f"alpha={a:g},beta={b:g}"
    assert seen == GRID
    done = case_of(text, len(GRID))  # one past the end: refused
    assert done.returncode == 1 and f"round 1 has {len(GRID)} candidate(s), tasks 0-{len(GRID) - 1}" in done.stderr


def test_each_task_runs_its_candidate_from_the_previous_rounds_reference(tmp_path):
    scripts = {s.name: s.text for s in render(rounds=3)}
    env = {"SLURM_JOB_ID": "77", "PATH": os.environ["PATH"]}
    for r in (1, 2, 3):
        for task in (0, 4):
            words = srun_words(scripts[f"round-{r}-array"], {**env, "SLURM_ARRAY_TASK_ID": str(task)})
            cand = GRID[task]
            label = f"alpha={cand['model.objective.alpha']:g},beta={cand['model.objective.beta']:g}"

            def value(flag, words=words):
                return words[words.index(flag) + 1] if flag in words else None

            assert value("--run_dir") == f"runs/s/round-{r}/{label}"
            assert value("--model.init_args.init_from") == (f"runs/s/rounds/round-{r - 1}.pt" if r > 1 else None)
            assert value("--selfplay.start_round") == value("--selfplay.rounds") == str(r)
            assert json.loads(value("--selfplay.candidates")) == [cand]
            assert f"--trainer.callbacks.path=runs/s/round-{r}/{label}/resume-77.ckpt" in words
        # the promotion of round r writes the file round r+1 starts from
        promo = scripts[f"round-{r}-promotion"].splitlines()[-1].split()
        assert promo[1:3] == ["-m", "ddo_lightning.launch.promote"]
        assert promo[promo.index("--round") + 1] == str(r) and promo[promo.index("--run_dir") + 1] == "runs/s"
        assert promote_mod.reference_file("runs/s", r) == f"runs/s/rounds/round-{r}.pt"
        labels = [f"alpha={c['model.objective.alpha']:g},beta={c['model.objective.beta']:g}" for c in GRID]
        assert promo[promo.index("min") + 1 :] == labels


def test_task_script_records_its_candidate_and_names_its_wandb_run(tmp_path):
    text = render(rounds=1, output_dir=str(tmp_path / "logs"), run_dir=str(tmp_path / "run"))[0].text
    (tmp_path / "bin").mkdir()
    srun = tmp_path / "bin/srun"
    srun.write_text('#!/bin/sh\nenv | grep ^WANDB_ | sort >"$OUT"\n')
    srun.chmod(0o755)
    env = {
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "5",
        "SLURM_ARRAY_TASK_ID": "3",
        "OUT": str(tmp_path / "env"),
    }
    subprocess.run(["bash", "-c", text], env=env, check=True, capture_output=True)
    cand_dir = tmp_path / "run/round-1/alpha=4,beta=0.05"
    assert json.loads((cand_dir / "candidate.json").read_text()) == GRID[3]
    assert (tmp_path / "env").read_text().split() == ["WANDB_NAME=round-1-alpha=4,beta=0.05", "WANDB_RUN_GROUP=run"]


def test_placeholders_are_filled_with_job_ids():
    text = render(rounds=2)[3].text
    assert "afterany:11,afterok:10" in fill_placeholders(text, {"round-2-array": "11", "round-1-promotion": "10"})
    with pytest.raises(RuntimeError, match="<round-2-array>: that job was not submitted"):
        fill_placeholders(text, {"round-1-promotion": "10"})


# ---- the command line -------------------------------------------------------------------------------
TINY = {"model": {"init_args": {"init_from": None}}}


def cli_args(tmp_path, *sweep, config=TOY, rounds="2", tiny=TINY):
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(yaml.safe_dump(tiny))
    args = ["--config", config, "--config", str(overlay), "--nodes", "1", "--devices", "2", "--cpus-per-task", "1"]
    args += ["--time", "10", "--job-name", "toy", "--output-dir", "runs/toy/logs", "--run-dir", "runs/toy"]
    args += ["--rounds", rounds] if rounds else []
    for s in sweep or ("model.objective.alpha=0.5,2",):
        args += ["--sweep", s]
    return args


@pytest.fixture
def no_sbatch(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"nothing may be submitted: {args}")

    monkeypatch.setattr(slurm, "submit", refuse)
    monkeypatch.setattr(slurm.subprocess, "run", refuse)


def split_dry_run(out):
    parts = re.split(r"^# ---- (\S+) ----\n", out, flags=re.M)
    assert parts[0] == ""
    return {parts[i]: parts[i + 1].rstrip("\n") + "\n" for i in range(1, len(parts), 2)}


def test_dry_run_prints_every_script_and_writes_nothing(no_sbatch, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(cli_args(tmp_path) + ["--dry-run"]) == 0
    out, err = capsys.readouterr()
    scripts = split_dry_run(out)
    expected = render_sweep(
        [TOY, str(tmp_path / "tiny.yaml")],
        candidates=[{"model.objective.alpha": 0.5}, {"model.objective.alpha": 2.0}],
        rounds=2,
        run_dir="runs/toy",
        monitor="mmd",  # the preset's SelfPlay
        mode="min",
        nodes=1,
        devices=2,
        cpus_per_task=1,
        time="10",
        job_name="toy",
        output_dir="runs/toy/logs",
        batch_per_device=256,  # the preset's 512 over 2 tasks
    )
    assert scripts == {s.name: s.text for s in expected}
    assert "search: 2 candidate(s) per round (alpha=0.5, alpha=2), 2 round(s), best mmd (min)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # nothing written


def test_rounds_default_to_the_configs_selfplay(no_sbatch, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(cli_args(tmp_path, rounds=None) + ["--dry-run"]) == 0
    scripts = split_dry_run(capsys.readouterr().out)
    assert list(scripts) == [f"round-{r}-{k}" for r in (1, 2) for k in ("array", "promotion")]  # toy2d: 2


def complete_round(run, r):
    (run / "rounds").mkdir(parents=True, exist_ok=True)
    (run / "rounds" / f"round-{r}.pt").write_bytes(b"weights")
    (run / "rounds" / f"round-{r}.json").write_text("{}")


def test_a_rerun_continues_after_the_last_completed_round(no_sbatch, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs/toy"
    complete_round(run, 1)
    (run / "rounds/round-3.json").write_text("{}")  # not in a row from round 1: does not count
    assert main(cli_args(tmp_path, rounds="3") + ["--dry-run"]) == 0
    out, err = capsys.readouterr()
    scripts = split_dry_run(out)
    assert list(scripts) == ["round-2-array", "round-2-promotion", "round-3-array", "round-3-promotion"]
    assert dependency(scripts["round-2-array"]) is None  # nothing before it is submitted now
    assert dependency(scripts["round-2-promotion"]) == "afterany:<round-2-array>"
    assert "--model.init_args.init_from runs/toy/rounds/round-1.pt --selfplay.start_round 2" in scripts["round-2-array"]
    assert "rounds 1-1 are done: continuing with round 2 from runs/toy/rounds/round-1.pt" in err
    complete_round(run, 2)
    complete_round(run, 3)
    assert main(cli_args(tmp_path, rounds="3")) == 0  # nothing left: nothing submitted (no_sbatch)
    out, err = capsys.readouterr()
    assert out == "" and "all 3 round(s) of runs/toy are done" in err


def test_submission_chains_the_job_ids(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin/sbatch"
    fake.write_text('#!/bin/sh\nn=$(ls sub | wc -l)\ncat >sub/$n.sh\necho "$@" >sub/$n.args\necho $((100 + n / 2))\n')
    fake.chmod(0o755)
    (tmp_path / "sub").mkdir()
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert main(cli_args(tmp_path)) == 0
    out = capsys.readouterr().out.split("\n")
    assert out[:4] == ["round-1-array 100", "round-1-promotion 101", "round-2-array 102", "round-2-promotion 103"]
    sent = [(tmp_path / f"sub/{2 * i}.sh").read_text() for i in range(4)]
    assert [dependency(t) for t in sent] == [None, "afterany:100", "afterok:101", "afterany:102,afterok:101"]
    assert all("<round-" not in t for t in sent) and (tmp_path / "sub/0.args").read_text().strip() == "--parsable"
    assert (tmp_path / "runs/toy/logs").is_dir()


# ---- bad input: refused before anything is written or submitted ----------------------------------------
@pytest.mark.parametrize(
    "sweep, message",
    [
        (["model.objective.alpha="], "empty value in the list"),
        (["model.objective.gamma=1,2"], "unknown round hyper-parameter 'model.objective.gamma'"),
        (["model.objective.alpha=two,4"], "'two' is not a number"),
        (["model.network.init_args.model.init_args.hidden=32,64"], "changes the network"),
        (["data.batch_size=64,128"], "changes the data"),
        ([f"model.objective.alpha={','.join(str(i) for i in range(1, MAX_CANDIDATES + 2))}"], "more than 16"),
        (["alpha=1,2"], "unknown round hyper-parameter 'alpha' (did you mean model.objective.alpha?)"),
        (["model.objective.alpha=1,2", "objective.alpha=3"], "is given twice"),
        # checked against the module the config builds (the toy's EMA has a half-life; α must be >= 0)
        (["model.ema_sigma_rel=0.05,0.1"], "this module's EMA is the half-life EMA"),
        (["model.objective.alpha=-1,2"], "candidate 1 (alpha=-1): model.objective.alpha=-1"),
    ],
)
def test_bad_sweeps_are_refused(sweep, message, no_sbatch, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(cli_args(tmp_path, *sweep))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("ddo slurm: error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_a_large_grid_needs_the_flag(no_sbatch, capsys, tmp_path, monkeypatch):
    values = ",".join(str(i) for i in range(1, MAX_CANDIDATES + 2))
    with pytest.raises(SearchError, match=f"{MAX_CANDIDATES + 1} candidates is more than {MAX_CANDIDATES}"):
        sweep_candidates([f"model.objective.alpha={values}"])
    assert len(sweep_candidates([f"model.objective.alpha={values}"], allow_large=True)) == MAX_CANDIDATES + 1
    monkeypatch.chdir(tmp_path)
    assert main(cli_args(tmp_path, f"model.objective.alpha={values}") + ["--allow-large-grid", "--dry-run"]) == 0
    assert f"#SBATCH --array=0-{MAX_CANDIDATES}\n" in capsys.readouterr().out


def test_labels_must_name_distinct_directories():
    with pytest.raises(SearchError, match="share the label 'alpha=0.1'"):
        sweep_candidates(["model.objective.alpha=0.1,0.1000001"])


def test_a_config_without_selfplay_is_refused(no_sbatch, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(cli_args(tmp_path, config=str(ROOT / "configs/toy2d_pretrain.yaml"), tiny={}))
    assert "this config has no SelfPlay callback in trainer.callbacks" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--", "--run_dir", "x"], "ddo slurm --sweep sets it for every task (use --run-dir)"),
        (["--", "--selfplay.rounds=4"], "(use --rounds)"),
        (["--", "--selfplay.candidates", "[]"], "(use --sweep)"),
        (["--rounds", "0"], "rounds 0: must be an integer >= 1"),
        (["--promote-time", "1:99:00"], "minutes 99 out of range"),
    ],
)
def test_bad_sweep_flags_are_refused(extra, message, no_sbatch, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(cli_args(tmp_path, rounds=None) + extra)
    assert message in capsys.readouterr().err


def test_sweep_flags_without_a_sweep_are_refused(no_sbatch, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a for a in cli_args(tmp_path) if a not in ("--sweep", "model.objective.alpha=0.5,2")]
    with pytest.raises(SystemExit):
        main(args)
    assert "--rounds, --run-dir: only with --sweep" in capsys.readouterr().err


# ---- ddo promote ----------------------------------------------------------------------------------------
def candidate(run, r, label, reference, best, improved=None, monitor="fid", mode="min", finished=True, weights=None):
    """A candidate directory as a finished `ddo fit` of one round leaves it (report.summary's layout)."""
    d = run / f"round-{r}" / label
    d.mkdir(parents=True)
    improved = (best < reference if mode == "min" else best > reference) if improved is None else improved
    rounds = [
        {
            "round": r,
            "improved": improved,
            "weights_changed": True,
            "promoted_kimg_in_round": 2.0 if improved else 0.0,
            "metrics": {monitor: best if improved else reference, "other": 1.0},
            "curve": [{"kimg_in_round": 0.0, monitor: reference}, {"kimg_in_round": 2.0, monitor: best}],
        }
    ]
    summary = {
        "monitor": monitor,
        "mode": mode,
        "reference": {monitor: reference},
        "rounds": rounds if finished else [],
    }
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "best.pt").write_bytes(weights or f"weights of {label}".encode())
    (d / "candidate.json").write_text(json.dumps({"model.objective.alpha": float(label.split("=")[1])}))
    return d


def run_promote(run, r, labels, monitor="fid", mode="min"):
    args = [sys.executable, "-m", "ddo_lightning.launch.promote", "--run_dir", str(run), "--round", str(r)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        args + ["--monitor", monitor, "--mode", mode, *labels], capture_output=True, text=True, env=env
    )


def test_promote_picks_the_best_candidate(tmp_path):
    run = tmp_path / "run"
    candidate(run, 1, "alpha=1", reference=5.0, best=4.0)
    candidate(run, 1, "alpha=2", reference=5.0, best=3.0)
    candidate(run, 1, "alpha=3", reference=5.0, best=3.5)
    done = run_promote(run, 1, ["alpha=1", "alpha=2", "alpha=3"])
    assert done.returncode == 0, done.stderr
    assert (run / "rounds/round-1.pt").read_bytes() == b"weights of alpha=2"
    record = json.loads((run / "rounds/round-1.json").read_text())
    assert record["winner"] == "alpha=2" and record["candidate"] == {"model.objective.alpha": 2.0}
    assert record["score"] == 3.0 and record["reference_score"] == 5.0 and record["improved"] is True
    assert [c["score"] for c in record["candidates"]] == [4.0, 3.0, 3.5]
    assert record["curve"] == [{"kimg_in_round": 0.0, "fid": 5.0}, {"kimg_in_round": 2.0, "fid": 3.0}]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reference"] == {"fid": 5.0} and [r["winner"] for r in summary["rounds"]] == ["alpha=2"]
    # round 2 from it, mode max this time: the highest wins
    candidate(run, 2, "alpha=1", reference=3.0, best=3.5, mode="max")
    candidate(run, 2, "alpha=2", reference=3.0, best=3.2, mode="max")
    assert run_promote(run, 2, ["alpha=1", "alpha=2"], mode="max").returncode == 0
    assert (run / "rounds/round-2.pt").read_bytes() == b"weights of alpha=1"
    summary = json.loads((run / "summary.json").read_text())
    assert [(r["round"], r["winner"]) for r in summary["rounds"]] == [(1, "alpha=2"), (2, "alpha=1")]
    assert promote_mod.completed_rounds(str(run)) == 2


def test_promote_keeps_the_reference_when_no_candidate_beats_it(tmp_path):
    run = tmp_path / "run"
    candidate(run, 1, "alpha=1", reference=5.0, best=5.5)  # worse: its best.pt is the reference's own
    candidate(run, 1, "alpha=2", reference=5.0, best=5.0)  # a tie is not better
    done = run_promote(run, 1, ["alpha=1", "alpha=2"])
    assert done.returncode == 0, done.stderr
    record = json.loads((run / "rounds/round-1.json").read_text())
    assert record["winner"] == "reference" and record["improved"] is False and record["score"] == 5.0
    assert record["candidate"] == {} and record["metrics"] == {"fid": 5.0}
    assert (run / "rounds/round-1.pt").read_bytes() == b"weights of alpha=1"  # = the reference's weights
    assert "the reference (fid=5) is the new reference" in done.stderr


def test_promote_skips_failed_candidates_with_a_warning(tmp_path):
    run = tmp_path / "run"
    candidate(run, 1, "alpha=1", reference=5.0, best=4.0)
    candidate(run, 1, "alpha=2", reference=5.0, best=1.0, finished=False)  # preempted, never resumed
    (candidate(run, 1, "alpha=3", reference=5.0, best=2.0) / "best.pt").unlink()
    candidate(run, 1, "alpha=5", reference=5.0, best=0.5, monitor="mmd")  # another metric: not comparable
    done = run_promote(run, 1, ["alpha=1", "alpha=2", "alpha=3", "alpha=4", "alpha=5"])  # alpha=4 never started
    assert done.returncode == 0, done.stderr
    assert (run / "rounds/round-1.pt").read_bytes() == b"weights of alpha=1"
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 4
    assert "candidate alpha=2 skipped: summary.json has no finished round 1" in warnings[0]
    assert "candidate alpha=3 skipped: no best.pt" in warnings[1]
    assert "candidate alpha=4 skipped: no summary.json (the task failed or was cancelled" in warnings[2]
    assert "candidate alpha=5 skipped: its summary monitors 'mmd', not 'fid'" in warnings[3]
    statuses = [c["status"] for c in json.loads((run / "rounds/round-1.json").read_text())["candidates"]]
    assert statuses == ["ok", "skipped", "skipped", "skipped", "skipped"]


def test_promote_fails_when_every_candidate_failed(tmp_path):
    run = tmp_path / "run"
    candidate(run, 1, "alpha=1", reference=5.0, best=4.0, finished=False)
    done = run_promote(run, 1, ["alpha=1", "alpha=2"])
    assert done.returncode == 1
    assert "ddo promote: error: round 1: no candidate of the round is usable" in done.stderr
    assert "nothing written" in done.stderr and not (run / "rounds").exists() and not (run / "summary.json").exists()
    assert run_promote(run, 0, ["alpha=1"]).returncode == 2
    assert run_promote(tmp_path / "nowhere", 1, ["alpha=1"]).returncode == 2


def test_promote_writes_the_reference_atomically(tmp_path, monkeypatch):
    run = tmp_path / "run"
    candidate(run, 1, "alpha=1", reference=5.0, best=4.0)
    (run / "rounds").mkdir()
    (run / "rounds/round-1.pt").write_bytes(b"an earlier promotion")

    def broken_copy(src, dst):
        Path(dst).write_bytes(b"half a fi")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(promote_mod.shutil, "copyfile", broken_copy)
    with pytest.raises(OSError, match="nothing was written"):
        promote_mod.promote(str(run), 1, ["alpha=1"], "fid", "min", log=lambda m: None)
    assert sorted(p.name for p in (run / "rounds").iterdir()) == ["round-1.pt"]  # no temporary file, no record
    assert (run / "rounds/round-1.pt").read_bytes() == b"an earlier promotion"
    assert promote_mod.completed_rounds(str(run)) == 0


# ---- end to end without SLURM: the rendered scripts, run by bash ----------------------------------------
TOY_TINY = {
    "trainer": {
        "enable_progress_bar": False,
        "callbacks": [
            {
                "class_path": "ddo_lightning.training.SelfPlay",
                "init_args": {"rounds": 2, "kimg_per_round": 0.128, "eval_every_kimg": 0.064, "monitor": "mmd"},
            },
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"save_last": True, "every_n_train_steps": 1000, "save_top_k": -1},
            },
            {"class_path": "ddo_lightning.training.ScatterFigure", "init_args": {"num_samples": 200}},
        ],
    },
    "model": {"init_args": {"init_from": None, "num_eval_samples": 200}},
    "data": {
        "init_args": {
            "batch_size": 64,
            "real": {"class_path": "ddo_lightning.data.Toy2DDataset", "init_args": {"num_samples": 1024}},
            "fake": {"class_path": "ddo_lightning.training.PoolFakeSource", "init_args": {"size": 256}},
        }
    },
}


def test_two_rounds_of_two_candidates_end_to_end(tmp_path, monkeypatch, capsys):
    """`ddo slurm --sweep --dry-run`'s scripts run as SLURM would run them (a fake srun that starts the command,
    the array tasks of a round side by side), then the promotion scripts: each round's reference is the
    candidate whose own summary beat the reference by the most, and round 2 starts from it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TOY_TINY))
    args = ["--config", TOY, "--config", "tiny.yaml", "--nodes", "1", "--devices", "1", "--cpus-per-task", "1"]
    args += ["--time", "10", "--job-name", "toy", "--output-dir", "logs", "--run-dir", "run"]
    args += ["--sweep", "model.objective.alpha=0.5,2", "--dry-run"]
    assert main(args) == 0
    scripts = split_dry_run(capsys.readouterr().out)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/srun").write_text(
        '#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in --*) shift;; *) break;; esac; done\nexec "$@"\n'
    )
    (tmp_path / "bin/srun").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_"))}
    env.update(PATH=f"{tmp_path / 'bin'}:{env['PATH']}", PYTHONPATH=str(ROOT / "src"))
    labels = ["alpha=0.5", "alpha=2"]
    expected_reference = None
    for r in (1, 2):
        tasks = [
            subprocess.Popen(
                ["bash", "-c", scripts[f"round-{r}-array"]],
                env={**env, "SLURM_JOB_ID": str(10 * r + i), "SLURM_ARRAY_TASK_ID": str(i)},
                stdout=open(tmp_path / f"task-{r}-{i}.log", "w"),
                stderr=subprocess.STDOUT,
            )
            for i in range(2)
        ]
        for i, task in enumerate(tasks):
            assert task.wait(timeout=300) == 0, (tmp_path / f"task-{r}-{i}.log").read_text()[-3000:]
        summaries = [json.loads((tmp_path / f"run/round-{r}/{label}/summary.json").read_text()) for label in labels]
        for label, alpha, summary in zip(labels, (0.5, 2.0), summaries):  # the task's candidate reached SelfPlay
            assert summary["candidates"] == [{"label": label, "overrides": {"model.objective.alpha": alpha}}]
        reference = summaries[0]["reference"]["mmd"]
        assert summaries[1]["reference"]["mmd"] == pytest.approx(reference, rel=1e-6)  # the same start
        if expected_reference is not None:  # round 2 starts from round 1's promoted weights
            assert reference == pytest.approx(expected_reference, rel=1e-5)
        entries = [next(x for x in s["rounds"] if x["round"] == r) for s in summaries]
        scores = [e["metrics"]["mmd"] if e["improved"] else math.inf for e in entries]
        best = min(range(2), key=lambda i: scores[i])
        winner = labels[best] if scores[best] < reference else "reference"
        done = subprocess.run(["bash", "-c", scripts[f"round-{r}-promotion"]], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        record = json.loads((tmp_path / f"run/rounds/round-{r}.json").read_text())
        assert record["winner"] == winner
        source = labels[best] if winner != "reference" else labels[0]
        best_pt = (tmp_path / f"run/round-{r}/{source}/best.pt").read_bytes()
        assert (tmp_path / f"run/rounds/round-{r}.pt").read_bytes() == best_pt
        expected_reference = scores[best] if winner != "reference" else reference
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert [x["round"] for x in summary["rounds"]] == [1, 2] and summary["monitor"] == "mmd"
    # a rerun has nothing left to submit
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out == "" and "all 2 round(s) of run are done" in err


def test_docs_show_the_renderers_scripts():
    """docs/slurm.md's CIFAR-10 example (2 rounds, alpha in {2, 4, 8}, 2 nodes x 8 GPUs) is the renderer's text
    for that command: the preset's SelfPlay monitors fid (min) and its global batch of 512 gives 32 per GPU."""
    import io

    from ddo_lightning.launch.sweep import print_scripts

    text = (ROOT / "docs/slurm.md").read_text()
    start = text.index("<!-- sweep-scripts -->\n```bash\n") + len("<!-- sweep-scripts -->\n```bash\n")
    shown = text[start : text.index("```\n", start)]
    preset = yaml.safe_load((ROOT / "configs/edm_cifar10.yaml").read_text())
    selfplay = next(c for c in preset["trainer"]["callbacks"] if c["class_path"].endswith("SelfPlay"))["init_args"]
    assert (selfplay["monitor"], selfplay["mode"], preset["data"]["init_args"]["batch_size"]) == ("fid", "min", 512)
    scripts = render_sweep(
        ["configs/edm_cifar10.yaml"],
        candidates=[{"model.objective.alpha": a} for a in (2, 4, 8)],
        rounds=2,
        run_dir="runs/cifar-search",
        monitor="fid",
        mode="min",
        nodes=2,
        gpus_per_node=8,
        cpus_per_task=8,
        time="1-00:00:00",
        job_name="cifar-search",
        output_dir="runs/cifar-search/logs",
        partition="gpu",
        batch_per_device=512 // 16,
        python="/opt/ddo/.venv/bin/python",
    )
    out = io.StringIO()
    print_scripts(scripts, out)
    assert shown == out.getvalue()


# ---- a real one-node SLURM cluster (as root; tests/test_slurm.py starts it) --------------------------------
from test_slurm import _job_environment, _show_job, slurm_cluster  # noqa: E402, F401 (the cluster fixture)


@pytest.mark.slow
def test_a_search_on_a_real_slurm_cluster(slurm_cluster, tmp_path, monkeypatch, capsys):  # noqa: F811
    """`ddo slurm --sweep` submitted with the real sbatch: 2 rounds x 2 candidates of the tiny toy search; the
    arrays, promotions and dependencies run to the end (every job COMPLETED, both rounds promoted, round 2's
    tasks started from round 1's reference)."""
    import time

    cluster = slurm_cluster
    _job_environment(monkeypatch, cluster)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TOY_TINY))
    args = ["--config", TOY, "--config", "tiny.yaml", "--nodes", "1", "--devices", "1", "--cpus-per-task", "1"]
    args += ["--time", "10", "--job-name", "toy", "--output-dir", "logs", "--run-dir", "run"]
    args += ["--sweep", "model.objective.alpha=0.5,2"]
    assert main(args) == 0
    ids = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert list(ids) == ["round-1-array", "round-1-promotion", "round-2-array", "round-2-promotion"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        states = {name: _show_job(cluster, job)["JobState"] for name, job in ids.items()}
        if all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for s in states.values()):
            break
        time.sleep(2)
    logs = "".join(p.read_text(errors="replace")[-2000:] for p in sorted((tmp_path / "logs").glob("*")))
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n{logs}\n{cluster.logs()}"
    assert _show_job(cluster, ids["round-2-array"])["Dependency"] in ("(null)", "")  # satisfied, then cleared
    records = [json.loads((tmp_path / f"run/rounds/round-{r}.json").read_text()) for r in (1, 2)]
    assert [r["round"] for r in records] == [1, 2]
    start = json.loads((tmp_path / "run/round-2/alpha=2/summary.json").read_text())["reference"]["mmd"]
    assert start == pytest.approx(records[0]["score"], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "logs").glob("toy-r1-*_*.out")) == [
        f"toy-r1-{ids['round-1-array']}_{i}.out" for i in (0, 1)
    ]
