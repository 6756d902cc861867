"""`ddo slurm` on two real SLURM nodes (slow, root only): two slurmd, each in a network namespace the test
makes, joined by a veth pair whose addresses exist only inside those namespaces (tests/slurm_cluster.py).

- A 2-node x 1-task DDP job of the toy preset trains as one process does at the same global batch: per-step
  losses and final weights (target, reference, EMA) equal up to float32 reassociation (see ``same_weights``).
- A preempted 2-node job (SIGUSR1 to its tasks) checkpoints, requeues itself and resumes on both nodes from
  the step it stopped at; every step runs once and the final weights equal the uninterrupted run's.

The jobs are submitted with `ddo slurm` as shipped, run from the first node's namespace (the login node).
The ranks find each other as on a real cluster: Lightning takes the master address from SLURM's node list
(``node1``), which resolves to the namespace address; no MASTER_ADDR is set.
"""

import csv
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest
import torch
import yaml
from slurm_cluster import SUBNET, two_node_cluster

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY_DATA = {"class_path": "ddo_lightning.data.Toy2DDataset", "init_args": {"num_samples": 1024}}
GLOBAL_BATCH = 64  # a round is 0.256 kimg = 4 steps; an evaluation every 2 steps

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    with two_node_cluster() as c:
        yield c


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _clean_env(extra=()):
    """This environment without SLURM's, torch.distributed's or Lightning's rank variables, one thread per
    process, the package and the test instruments importable."""
    drop = ("SLURM_", "MASTER_", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK", "GLOO_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]), **dict(extra))
    return env


@pytest.fixture(scope="module")
def toy_reference(tmp_path_factory):
    """A 40-step MLE reference of the toy preset's network (configs/toy2d_pretrain.yaml, small data)."""
    root = tmp_path_factory.mktemp("mle")
    pre = _write(
        root / "pre.yaml",
        {
            "trainer": {"max_steps": 40, "val_check_interval": 40, "enable_progress_bar": False},
            "model": {"init_args": {"num_eval_samples": 100}},
            "data": {"init_args": {"batch_size": 64, "real": TOY_DATA}},
        },
    )
    done = subprocess.run(
        [sys.executable, "-m", "ddo_lightning.cli", "fit", "--config", str(ROOT / "configs/toy2d_pretrain.yaml")]
        + ["--config", pre, "--run_dir", str(root / "run")],
        cwd=root,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return str(root / "run/checkpoints/last.ckpt")


def toy_overlay(path, reference, steps, ckpt_every):
    """configs/toy2d.yaml at test size: global batch 64, rounds of 4 steps (promotion at each round's end),
    evaluations every 2 steps on 400 samples, a 256-sample fake pool, a checkpoint every ``ckpt_every`` steps,
    one CSV row per step, and the Placement instrument."""
    return _write(
        path,
        {
            "trainer": {
                "max_steps": steps,
                "log_every_n_steps": 1,
                "enable_progress_bar": False,
                "callbacks": [
                    {
                        "class_path": "ddo_lightning.training.SelfPlay",
                        # one configuration a round (the preset's per-round search off): a promotion every 4 steps
                        "init_args": {
                            "rounds": steps // 4,
                            "kimg_per_round": 0.256,
                            "eval_every_kimg": 0.128,
                            "candidates": None,
                        },
                    },
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {
                            "filename": "{step}",
                            "save_last": True,
                            "save_top_k": -1,
                            "every_n_train_steps": ckpt_every,
                        },
                    },
                    {"class_path": "placement.Placement"},
                ],
            },
            "model": {
                "init_args": {
                    "init_from": reference,
                    "num_eval_samples": 400,
                    "eval_batch_size": 400,
                    "sampler": {"class_path": "ddo_lightning.samplers.HeunSampler", "init_args": {"num_steps": 6}},
                }
            },
            "data": {
                "init_args": {
                    "batch_size": GLOBAL_BATCH,
                    "real": TOY_DATA,
                    "fake": {
                        "class_path": "ddo_lightning.training.PoolFakeSource",
                        "init_args": {"size": 256, "generation_batch_size": 64, "progress": False},
                    },
                }
            },
        },
    )


def configs(overlay):
    return ["--config", str(ROOT / "configs/toy2d.yaml"), "--config", overlay]


def one_process_run(tmp_path, overlay):
    """The uninterrupted reference: `ddo fit` in one process (not under SLURM) at the same global batch."""
    run_dir = tmp_path / "one"
    done = subprocess.run(
        [sys.executable, "-m", "ddo_lightning.cli", "fit", *configs(overlay), "--run_dir", str(run_dir)],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def submit_two_nodes(cluster, tmp_path, overlay, job_name, run_dir):
    """`ddo slurm --nodes 2 --devices 1` run on the login node (node1's namespace); returns the job id."""
    cmd = [sys.executable, "-m", "ddo_lightning.cli", "slurm", *configs(overlay)]
    cmd += ["--config", str(ROOT / "configs/strategy/ddp.yaml"), "--nodes", "2", "--devices", "1"]
    cmd += ["--cpus-per-task", "1", "--time", "00:15:00", "--job-name", job_name]
    cmd += ["--output-dir", str(tmp_path / "slurm"), "--", "--run_dir", str(run_dir)]
    done = subprocess.run(
        [*cluster.prefix, *cmd],
        cwd=tmp_path,
        env=_clean_env({"SLURM_CONF": cluster.conf}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"global batch {GLOBAL_BATCH} = 2 node(s) x 1 task(s) x {GLOBAL_BATCH // 2} per task" in done.stderr
    job_id = done.stdout.strip()
    assert job_id.isdigit(), done.stdout
    return job_id


def job_logs(tmp_path, job_name, job_id):
    out = tmp_path / "slurm"
    return "".join(
        (out / f"{job_name}-{job_id}.{ext}").read_text(errors="replace")
        for ext in ("out", "err")
        if (out / f"{job_name}-{job_id}.{ext}").exists()
    )


def losses(run_dir):
    """Per-step train/loss of the run's metrics.csv, as {step: loss}; a step logged twice fails."""
    seen = {}
    with open(run_dir / "logs/metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                step = int(row["step"])
                assert step not in seen, f"step {step} logged twice"
                seen[step] = float(row["train/loss"])
    return seen


def final_state(run_dir):
    return torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)


def same_weights(a, b):
    """Target, reference and EMA weights equal within what float32 reassociation can do through Adam.

    DDP averages the two ranks' gradients of 32 samples each, one process the gradient of the 64: the same
    sum in another order, an absolute difference of about n·2⁻²⁴·mean|term| per element (n = 64). Adam
    (lr = 2e-3, ε = 1e-8) turns a gradient g into a step lr·m̂/(√v̂ + ε); where |g| ≫ ε that is insensitive
    (the weights agree to ~1e-7), but in the first step after a promotion (SelfPlay restarts the optimizer,
    so the step is lr·g/(|g| + ε)) an element whose gradient sum nearly cancels, |g| ~ ε, amplifies the
    difference by up to lr/ε = 2e5. Measured here: 5.6e-8 over the 8-step run, 4.5e-6 over the 24-step one
    (one element with g ≈ 5e-8 in round 3's first step, unchanged afterwards). Tolerance: atol 1e-4 = lr/20,
    rtol 1e-5: a lost or differently fed step moves nearly every element by ~lr. Returns the largest
    difference."""
    worst = 0.0
    for prefix in ("target.", "reference.", "ema.model."):
        keys = [k for k in a if k.startswith(prefix)]
        assert keys, prefix
        for k in keys:
            assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-4), (k, (a[k] - b[k]).abs().max().item())
            worst = max(worst, (a[k] - b[k]).abs().max().item())
    return worst


def placements(run_dir, restart):
    """rank -> the Placement record the rank wrote for this restart of the job."""
    found = {}
    for path in (run_dir / "placement").glob(f"restart{restart}-rank*.json"):
        record = json.loads(path.read_text())
        found[record["rank"]] = record
    return found


def assert_on_both_nodes(cluster, records, start_step):
    """Rank 0 on node1, rank 1 on node2, both from ``start_step``; the master address is SLURM's first node
    (Lightning's choice, no MASTER_ADDR given) and the ranks talk over the namespaces' link."""
    assert sorted(records) == [0, 1], records
    for rank, node in ((0, "node1"), (1, "node2")):
        r = records[rank]
        assert (r["hostname"], r["slurmd_nodename"], r["slurm_nodeid"], r["node_rank"]) == (node, node, str(rank), rank)
        assert r["master_addr"] == "node1" and r["start_step"] == start_step, r
    one, two = cluster.addresses["node1"], cluster.addresses["node2"]
    assert (two, one) in [tuple(c) for c in records[1]["connections"]], records[1]  # node2 -> node1 over the veth
    assert (one, two) in [tuple(c) for c in records[0]["connections"]], records[0]


def assert_no_host_address():
    """The cluster's addresses exist only inside its namespaces: the host has none of them."""
    shown = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert f"{SUBNET}." not in shown, shown


def test_two_node_ddp_job_equals_one_process_at_the_same_global_batch(cluster, toy_reference, tmp_path):
    steps, name = 8, "ddo-2n"
    overlay = toy_overlay(tmp_path / "tiny.yaml", toy_reference, steps, ckpt_every=steps)
    t0 = time.monotonic()
    job_id = submit_two_nodes(cluster, tmp_path, overlay, name, tmp_path / "two")
    job = cluster.wait_for(job_id, timeout=600)
    t_job = time.monotonic() - t0
    logs = job_logs(tmp_path, name, job_id)
    failure = f"job {job_id}: {job.get('JobState')}\n{logs[-5000:]}\n{cluster.logs()}"
    assert job.get("JobState") == "COMPLETED" and job.get("ExitCode") == "0:0", failure
    assert job.get("NodeList") == "node[1-2]" and int(job["Restarts"]) == 0, failure
    for rank in (0, 1):
        assert f"Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in logs, failure
    assert_on_both_nodes(cluster, placements(tmp_path / "two", 0), start_step=0)
    assert_no_host_address()

    t1 = time.monotonic()
    one = one_process_run(tmp_path, overlay)
    t_one = time.monotonic() - t1
    two_losses, one_losses = losses(tmp_path / "two"), losses(one)
    assert sorted(two_losses) == sorted(one_losses) == list(range(steps))
    # the logged loss is the mean over both ranks' samples: the global batch's loss, as in one process
    assert [two_losses[k] for k in range(steps)] == pytest.approx([one_losses[k] for k in range(steps)], rel=1e-4)
    two_state, one_state = final_state(tmp_path / "two"), final_state(one)
    assert two_state["global_step"] == one_state["global_step"] == steps
    worst = same_weights(two_state["state_dict"], one_state["state_dict"])
    # two promotions happened: the reference left the MLE weights, so the comparison covers self-play
    mle = torch.load(toy_reference, map_location="cpu", weights_only=True)["state_dict"]
    ema = [k for k in mle if k.startswith("ema.model.")]
    assert any(not torch.equal(mle[k], one_state["state_dict"]["reference." + k[len("ema.model.") :]]) for k in ema)
    print(
        f"\n[slurm 2 nodes] job {job_id}: submitted to COMPLETED {t_job:.0f} s; one process {t_one:.0f} s; "
        f"largest weight difference {worst:.1e}"
    )


def test_preempted_two_node_job_requeues_and_resumes_on_both_nodes(cluster, toy_reference, tmp_path):
    """SIGUSR1 to the job's tasks (`scancel --signal=USR1`, what SLURM sends before the time limit): the
    Preemption callback writes resume-<job>.ckpt at a step boundary on both ranks and requeues the job; the
    second run (same job id, both nodes again) resumes at the next step. A checkpoint every step shows which
    run wrote which step: none missing, none written twice (the first run stops at the resume step, the
    second starts after it)."""
    steps, name = 24, "ddo-2n-preempt"
    run_dir, out = tmp_path / "two", tmp_path / "slurm"
    overlay = toy_overlay(tmp_path / "tiny.yaml", toy_reference, steps, ckpt_every=1)
    t0 = time.monotonic()
    job_id = submit_two_nodes(cluster, tmp_path, overlay, name, run_dir)
    resume = out / f"resume-{job_id}.ckpt"

    def failure(what):
        return f"job {job_id}: {what}\n{cluster.show_job(job_id)}\n{job_logs(tmp_path, name, job_id)[-5000:]}\n{cluster.logs()}"

    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints/step=3.ckpt").exists():
        assert cluster.show_job(job_id).get("JobState") in ("PENDING", "RUNNING"), failure("ended before step 3")
        assert time.monotonic() < deadline, failure("no step 3")
        time.sleep(0.1)
    signalled = cluster.run("scancel", "--signal=USR1", job_id)
    assert signalled.returncode == 0, signalled.stderr
    t_signal = time.monotonic() - t0

    job = cluster.wait_for(job_id, timeout=600)
    t_job = time.monotonic() - t0
    assert job.get("JobState") == "COMPLETED" and job.get("ExitCode") == "0:0", failure("did not complete")
    assert int(job["Restarts"]) == 1 and job.get("NodeList") == "node[1-2]", failure("not requeued once")
    logs = job_logs(tmp_path, name, job_id)
    stopped = torch.load(resume, map_location="cpu", weights_only=True)["global_step"]
    assert 3 <= stopped < steps, failure(f"stopped at step {stopped}")
    assert f"[preemption] SIGUSR1: checkpoint of step {stopped} written to {resume}" in logs, failure("no signal")
    assert f"[preemption] requeued SLURM job {job_id}" in logs, failure("no requeue from the job")
    assert f"job {job_id}, restart 1: resuming from {resume}" in logs, failure("no --ckpt_path")
    assert_on_both_nodes(cluster, placements(run_dir, 0), start_step=0)
    assert_on_both_nodes(cluster, placements(run_dir, 1), start_step=stopped)
    assert_no_host_address()

    ckpts = run_dir / "checkpoints"
    written = {
        int(m.group(1)): p.stat().st_mtime for p in ckpts.iterdir() if (m := re.fullmatch(r"step=(\d+)\.ckpt", p.name))
    }
    assert sorted(written) == list(range(1, steps + 1)), failure(f"step checkpoints {sorted(written)}")
    # the second run's start (its ranks' Placement records) divides the steps: up to the resume step written
    # before it (step `stopped`'s ModelCheckpoint runs after Preemption's save), the rest after it
    t_restart = min(p.stat().st_mtime for p in (run_dir / "placement").glob("restart1-rank*.json"))
    assert resume.stat().st_mtime < t_restart
    assert all(written[k] < t_restart for k in range(1, stopped + 1)), "the first run went past its resume step"
    assert all(written[k] > t_restart for k in range(stopped + 1, steps + 1)), "the second run repeated a step"
    for k in (stopped, stopped + 1, steps):
        assert torch.load(ckpts / f"step={k}.ckpt", map_location="cpu", weights_only=True)["global_step"] == k

    t1 = time.monotonic()
    one = one_process_run(tmp_path, overlay)
    t_one = time.monotonic() - t1
    two_losses, one_losses = losses(run_dir), losses(one)
    assert sorted(two_losses) == sorted(one_losses) == list(range(steps))
    assert [two_losses[k] for k in range(steps)] == pytest.approx([one_losses[k] for k in range(steps)], rel=1e-4)
    two_state, one_state = final_state(run_dir), final_state(one)
    assert two_state["global_step"] == one_state["global_step"] == steps
    worst = same_weights(two_state["state_dict"], one_state["state_dict"])
    print(
        f"\n[slurm 2 nodes] job {job_id}: USR1 at {t_signal:.0f} s, stopped after step {stopped}, resumed on both "
        f"nodes, completed at {t_job:.0f} s; one process {t_one:.0f} s; largest weight difference {worst:.1e}"
    )


def rank_processes(namespace, job_id):
    """The pids of `ddo fit` processes of SLURM job ``job_id`` running in network namespace ``namespace``."""
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    found = []
    for pid in pids:
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in environ and b"ddo_lightning.cli" in cmdline:
            found.append(int(pid))
    return found


def test_sweep_of_three_candidates_survives_a_killed_task_on_two_nodes(cluster, toy_reference, tmp_path):
    """`ddo slurm --sweep` of 3 candidates (alpha = 0.5, 1, 2) x 2 rounds, each candidate a 2-node x 1-task
    array task; candidate alpha=1 of round 1 is killed mid-round (its rank on node2 gets SIGKILL). Round 1's
    promotion picks among the two survivors exactly as the rule says (computed here from their summaries),
    round 2 starts from the promoted weights and its three candidates and promotion complete."""
    labels = ["alpha=0.5", "alpha=1", "alpha=2"]
    killed = 1
    run, out, name = tmp_path / "search", tmp_path / "slurm", "ddo-sweep"
    # rounds of 10 steps (0.64 kimg at a global batch of 64), an evaluation and a checkpoint every 2 steps
    overlay = toy_overlay(tmp_path / "tiny.yaml", toy_reference, steps=-1, ckpt_every=2)
    cfg = yaml.safe_load(open(overlay))
    cfg["trainer"]["callbacks"][0]["init_args"].update(rounds=2, kimg_per_round=0.64, eval_every_kimg=0.128)
    _write(tmp_path / "tiny.yaml", cfg)
    cmd = [sys.executable, "-m", "ddo_lightning.cli", "slurm", *configs(overlay)]
    cmd += ["--config", str(ROOT / "configs/strategy/ddp.yaml"), "--nodes", "2", "--devices", "1"]
    cmd += ["--cpus-per-task", "1", "--time", "00:15:00", "--job-name", name, "--output-dir", str(out)]
    cmd += ["--run-dir", str(run), "--rounds", "2", "--sweep", "model.objective.alpha=0.5,1,2"]
    t0 = time.monotonic()
    done = subprocess.run(
        [*cluster.prefix, *cmd],
        cwd=tmp_path,
        env=_clean_env({"SLURM_CONF": cluster.conf}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ids = dict(line.split() for line in done.stdout.splitlines())
    assert sorted(ids) == ["round-1-array", "round-1-promotion", "round-2-array", "round-2-promotion"], ids

    def failure(what):
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(out.glob("*")))
        jobs = "\n".join(str(cluster.show_job(i)) for i in ids.values())
        return f"{what}\n{jobs}\n{logs}\n{cluster.logs()}"

    victim = f"{ids['round-1-array']}_{killed}"
    deadline = time.monotonic() + 300
    while not (run / f"round-1/{labels[killed]}/checkpoints/step=2.ckpt").exists():
        assert cluster.show_job(victim).get("JobState") in ("PENDING", "RUNNING"), failure("ended before step 2")
        assert time.monotonic() < deadline, failure(f"{victim}: no step 2")
        time.sleep(0.1)
    # The task's rank on node2 dies (SIGKILL, as in a crash or the OOM killer); srun's --kill-on-bad-exit ends
    # the step and the task fails (a `scancel` would end it too, as CANCELLED after a checkpoint; the crash
    # is the harder case: nothing is written at the end).
    job_id = cluster.show_job(victim)["JobId"]
    ranks = rank_processes(cluster.namespaces[1], job_id)
    assert len(ranks) == 1, failure(f"{victim} (job {job_id}): processes on node2 {ranks}")
    os.kill(ranks[0], 9)
    t_kill = time.monotonic() - t0
    assert cluster.wait_for(victim, timeout=120).get("JobState") == "FAILED", failure(f"{victim} not ended by the kill")

    last = cluster.wait_for(ids["round-2-promotion"], timeout=900, poll=1)
    t_all = time.monotonic() - t0
    assert last.get("JobState") == "COMPLETED", failure("round 2's promotion did not complete")
    states = {(r, i): cluster.show_job(f"{ids[f'round-{r}-array']}_{i}") for r in (1, 2) for i in range(len(labels))}
    for (r, i), job in states.items():
        expected = "FAILED" if (r, i) == (1, killed) else "COMPLETED"
        assert job.get("JobState") == expected, failure(f"round {r} task {i}: {job.get('JobState')}")
        if expected == "COMPLETED":
            assert job.get("NodeList") == "node[1-2]", job
            assert_on_both_nodes(cluster, placements(run / f"round-{r}/{labels[i]}", 0), start_step=0)
    assert cluster.show_job(ids["round-1-promotion"]).get("JobState") == "COMPLETED"

    # round 1: the survivors' own summaries decide (a candidate counts only if it beat the reference)
    record = json.loads((run / "rounds/round-1.json").read_text())
    status = {c["label"]: c["status"] for c in record["candidates"]}
    assert status == {"alpha=0.5": "ok", "alpha=1": "skipped", "alpha=2": "ok"}, record["candidates"]
    survivors = [label for i, label in enumerate(labels) if i != killed]
    summaries = {label: json.loads((run / f"round-1/{label}/summary.json").read_text()) for label in survivors}
    reference = summaries[survivors[0]]["reference"]["mmd"]
    assert summaries[survivors[1]]["reference"]["mmd"] == pytest.approx(reference, rel=1e-6)  # the same start
    entries = {label: next(x for x in s["rounds"] if x["round"] == 1) for label, s in summaries.items()}
    scores = {label: e["metrics"]["mmd"] if e["improved"] else float("inf") for label, e in entries.items()}
    best = min(survivors, key=lambda label: scores[label])
    winner = best if scores[best] < reference else "reference"
    assert record["winner"] == winner, record
    source = best if winner != "reference" else survivors[0]
    promoted = (run / "rounds/round-1.pt").read_bytes()
    assert promoted == (run / f"round-1/{source}/best.pt").read_bytes()
    # round 2: every candidate evaluated round 1's promoted weights as its reference
    expected = scores[best] if winner != "reference" else reference
    for label in labels:
        summary = json.loads((run / f"round-2/{label}/summary.json").read_text())
        assert summary["reference"]["mmd"] == pytest.approx(expected, rel=1e-5), label
    run_summary = json.loads((run / "summary.json").read_text())
    assert [x["round"] for x in run_summary["rounds"]] == [1, 2]
    print(
        f"\n[slurm 2 nodes] sweep 3 x 2 rounds: task {victim} killed at {t_kill:.0f} s, round 1 winner "
        f"{winner}, round 2 winner {run_summary['rounds'][1]['winner']}, all done at {t_all:.0f} s"
    )
