"""`ddo slurm`: the rendered sbatch script, its resume logic run by bash, input checks, submission errors,
and (slow, root only) a two-task DDO training on a real one-node SLURM cluster started by the test."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from ddo_lightning.launch import slurm
from ddo_lightning.launch.slurm import main, render_sbatch, submit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = dict(nodes=2, devices=4, cpus_per_task=8, time="1-00:00:00", job_name="ddo-cifar", output_dir="/runs/cifar")


def sbatch_lines(script):
    return [line.removeprefix("#SBATCH ").strip() for line in script.splitlines() if line.startswith("#SBATCH")]


def test_script_has_every_flag():
    script = render_sbatch(["configs/edm_cifar10.yaml", "my run.yaml"], **BASE, python="/opt/py/bin/python")
    assert script.startswith("#!/bin/bash\n# ")
    assert sbatch_lines(script) == [
        "--job-name=ddo-cifar", "--nodes=2", "--ntasks-per-node=4", "--cpus-per-task=8", "--time=1-00:00:00",
        "--output=/runs/cifar/%x-%j.out", "--error=/runs/cifar/%x-%j.err", "--signal=USR1@90", "--requeue",
        "--open-mode=append"]
    assert "--ntasks=" not in script  # Lightning rejects --ntasks without --ntasks-per-node
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert srun == ["srun --kill-on-bad-exit=1 --cpus-per-task=8 /opt/py/bin/python -m ddo_lightning.cli fit "
                    "--config configs/edm_cifar10.yaml --config 'my run.yaml' --trainer.num_nodes 2 "
                    "--trainer.devices 4 --trainer.callbacks+=ddo_lightning.training.Preemption "
                    '--trainer.callbacks.path=/runs/cifar/resume.ckpt "$@"']
    assert "ddo_lightning.training.Preemption" not in render_sbatch(["a.yaml"], **BASE, preemption=False)
    assert "RESUME=/runs/cifar/resume.ckpt" in script


def test_optional_flags_and_extra_lines_pass_through():
    script = render_sbatch(["a.yaml"], **{**BASE, "output_dir": "out dir"}, partition="gpu", account="proj42",
                           qos="high", extra_sbatch=["--gres=gpu:4", "#SBATCH --exclusive"], requeue_signal="B:USR1",
                           signal_lead_seconds=300, fit_args=["--trainer.max_steps", "1000"])
    lines = sbatch_lines(script)
    assert lines[-5:] == ["--partition=gpu", "--account=proj42", "--qos=high", "--gres=gpu:4", "--exclusive"]
    assert '--output="out dir/%x-%j.out"' in lines and "--signal=B:USR1@300" in lines
    assert "'--trainer.callbacks.path=out dir/resume.ckpt' --trainer.max_steps 1000 \"$@\"" in script
    assert "RESUME='out dir/resume.ckpt'" in script
    assert "--partition" not in render_sbatch(["a.yaml"], **BASE)


def test_script_resumes_from_resume_ckpt(tmp_path):
    """The script body run by bash with a fake srun: no --ckpt_path until <output_dir>/resume.ckpt exists."""
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    out.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/srun-args\n')
    (bin_dir / "srun").chmod(0o755)
    script = tmp_path / "job.sh"
    script.write_text(render_sbatch(["a.yaml"], **{**BASE, "output_dir": str(out)}, python="py",
                                    fit_args=["--seed_everything", "3"]))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def srun_args():
        subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
        return (tmp_path / "srun-args").read_text().split("\n")[:-1]

    fit = ["--kill-on-bad-exit=1", "--cpus-per-task=8", "py", "-m", "ddo_lightning.cli", "fit", "--config", "a.yaml",
           "--trainer.num_nodes", "2", "--trainer.devices", "4", "--trainer.callbacks+=ddo_lightning.training.Preemption",
           f"--trainer.callbacks.path={out}/resume.ckpt", "--seed_everything", "3"]
    assert srun_args() == fit
    (tmp_path / "last.ckpt").write_bytes(b"")
    (out / "resume.ckpt").symlink_to(tmp_path / "last.ckpt")
    assert srun_args() == fit + ["--ckpt_path", f"{out}/resume.ckpt"]


@pytest.mark.parametrize("field, value", [
    ("nodes", 0), ("devices", -1), ("cpus_per_task", 0), ("nodes", "2"),
    ("time", "90:00:00:00"), ("time", "1:75"), ("time", "2-25:00:00"), ("time", "soon"), ("time", "0"),
    ("job_name", "my job"), ("job_name", ""), ("output_dir", ""), ("partition", "gpu a100"),
    ("requeue_signal", "USR1; rm"), ("signal_lead_seconds", 70000),
])
def test_bad_input_names_the_value(field, value):
    with pytest.raises(ValueError, match=re.escape(f"{field} {value!r}")):
        render_sbatch(["a.yaml"], **{**BASE, field: value})


def test_bad_configs_and_extra_lines():
    with pytest.raises(ValueError, match=r"configs \[\]"):
        render_sbatch([], **BASE)
    with pytest.raises(ValueError, match="configs 'a.yaml'"):
        render_sbatch("a.yaml", **BASE)  # a string, not a list
    with pytest.raises(ValueError, match="extra sbatch line '--a\\\\n--b'"):
        render_sbatch(["a.yaml"], **BASE, extra_sbatch=["--a\n--b"])
    with pytest.raises(ValueError, match="fit_args '--trainer.max_steps 4'"):
        render_sbatch(["a.yaml"], **BASE, fit_args="--trainer.max_steps 4")


CLI = ["--config", "configs/toy2d.yaml", "--config", "tiny.yaml", "--nodes", "1", "--devices", "2",
       "--cpus-per-task", "1", "--time", "00:10:00", "--job-name", "toy", "--output-dir", "runs/toy"]


@pytest.fixture
def no_sbatch(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"nothing may be submitted: {args}")

    monkeypatch.setattr(slurm, "submit", refuse)
    monkeypatch.setattr(slurm.subprocess, "run", refuse)


def test_dry_run_prints_the_script_and_submits_nothing(no_sbatch, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = CLI + ["--partition", "debug", "--sbatch-arg", "--gres=gpu:2", "--sbatch-arg=--exclusive", "--dry-run",
                  "--", "--trainer.max_steps", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out == render_sbatch(["configs/toy2d.yaml", "tiny.yaml"], nodes=1, devices=2, cpus_per_task=1,
                                time="00:10:00", job_name="toy", output_dir="runs/toy", partition="debug",
                                extra_sbatch=["--gres=gpu:2", "--exclusive"], fit_args=["--trainer.max_steps", "4"])
    assert "#SBATCH --gres=gpu:2" in out and "--trainer.max_steps 4" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("change, message", [
    (["--nodes", "0"], "nodes 0"), (["--time", "tomorrow"], "time 'tomorrow'"), (["--devices", "two"], "--devices"),
])
def test_cli_bad_input_is_one_line_and_status_2(change, message, no_sbatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(CLI + change + ["--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ddo slurm: error: ") and message in err and err.count("\n") == 1


def test_cli_missing_config_is_refused_before_submitting(no_sbatch, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(CLI)
    assert exit_info.value.code == 2 and "config 'configs/toy2d.yaml': no such file" in capsys.readouterr().err


def test_submit_reports_sbatch_errors_and_parses_the_job_id(tmp_path):
    with pytest.raises(RuntimeError, match="not found"):
        submit("#!/bin/bash\n", sbatch=str(tmp_path / "no-sbatch"))
    fake = tmp_path / "sbatch"
    fake.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid partition' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match="Invalid partition"):
        submit("#!/bin/bash\n", sbatch=str(fake))
    fake.write_text(f'#!/bin/sh\n[ "$1" = --parsable ] && cat > {tmp_path}/got && echo "4242;cluster"\n')
    assert submit("#!/bin/bash\necho hi\n", sbatch=str(fake)) == "4242"
    assert (tmp_path / "got").read_text() == "#!/bin/bash\necho hi\n"


# --- a real SLURM cluster: slurmctld + slurmd on this machine, private munged, private ports ------------

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            return f"--- {path}\n" + "".join(f.readlines()[-n:])
    except OSError:
        return f"--- {path}: missing\n"


def _install_slurm():
    """sbatch & co. from Debian packages (about a minute); skips, with the reason, where that is impossible."""
    if shutil.which("sbatch") and shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return
    if shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = "/usr/sbin/policy-rc.d"  # keep the packages' init scripts from starting system daemons
    added_policy = not os.path.exists(policy)
    if added_policy:
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
    start = time.monotonic()
    try:
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:  # stale package lists
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    finally:
        if added_policy:
            os.remove(policy)
    if done.returncode != 0:
        pytest.skip(f"could not install slurm-wlm and munge with apt-get: {done.stderr.strip()[-500:]}")
    print(f"[slurm] apt-get install slurm-wlm munge: {time.monotonic() - start:.0f} s", file=sys.stderr)


class Cluster:
    def __init__(self, root):
        self.root = root
        self.conf = os.path.join(root, "slurm.conf")
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, "SLURM_CONF": self.conf}
        self.procs = []

    def run(self, *cmd):
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)

    def start(self, name, *cmd):
        log = open(os.path.join(self.root, f"{name}.stdout"), "w")
        self.procs.append((name, subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, start_new_session=True)))
        log.close()

    def logs(self):
        names = ["munged.log", "slurmctld.log", "slurmd.log"] + [f"{n}.stdout" for n, _ in self.procs]
        return "\n".join(_tail(os.path.join(self.root, n)) for n in names)

    def stop(self):
        if any(name == "slurmctld" and p.poll() is None for name, p in self.procs):
            self.run("scancel", "--user=root", "--full")
        for name, proc in reversed(self.procs):  # slurmd, slurmctld, munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


@pytest.fixture
def slurm_cluster():
    """A one-node cluster: private munge key and socket, state and logs in a temporary directory."""
    if os.geteuid() != 0:
        pytest.skip("the real-SLURM test runs its own slurmctld/slurmd and needs root")
    _install_slurm()
    root = tempfile.mkdtemp(prefix="ddo-slurm-")  # short: the munge socket path must fit in sun_path
    os.chmod(root, 0o755)
    cluster = Cluster(root)
    try:
        munge_dir = os.path.join(root, "munge")
        os.makedirs(munge_dir, mode=0o700)
        key, sock = os.path.join(munge_dir, "munge.key"), os.path.join(munge_dir, "munge.socket")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        cluster.start("munged", shutil.which("munged"), "--foreground", "--force", f"--key-file={key}",
                      f"--socket={sock}", f"--pid-file={munge_dir}/munged.pid", f"--log-file={root}/munged.log",
                      f"--seed-file={munge_dir}/munged.seed")
        host = socket.gethostname().split(".")[0]
        cpus = len(os.sched_getaffinity(0))
        for d in ("state", "spool"):
            os.makedirs(os.path.join(root, d))
        with open(cluster.conf, "w") as f:
            f.write(f"""\
ClusterName=ddotest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=600
SchedulerParameters=sched_interval=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.1)
        cluster.start("slurmctld", shutil.which("slurmctld"), "-D", "-i")
        cluster.start("slurmd", shutil.which("slurmd"), "-D", "-N", host)
        deadline, state = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            dead = [name for name, p in cluster.procs if p.poll() is not None]
            if dead:
                pytest.fail(f"{dead} exited\n{cluster.logs()}")
            state = cluster.run("sinfo", "--noheader", "--Node", "--format=%T").stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"node not idle after 60 s (sinfo: {state!r})\n{cluster.logs()}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


SMALL_DATA = {"real": {"class_path": "ddo_lightning.data.Toy2DDataset", "init_args": {"num_samples": 1024}}}


def _pretrain(tmp_path):
    """A 2-step MLE reference of the toy preset, run here (not under SLURM): tmp_path/pretrain/last.ckpt."""
    pre = _write(tmp_path / "pre.yaml", {
        "trainer": {"max_steps": 2, "val_check_interval": 2, "enable_progress_bar": False, "logger": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": "pretrain", "save_last": True, "every_n_train_steps": 2}}]},
        "model": {"init_args": {"num_eval_samples": 200}}, "data": {"init_args": {"batch_size": 64, **SMALL_DATA}}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run([sys.executable, "-m", "ddo_lightning.cli", "fit", "--config",
                           os.path.join(ROOT, "configs/toy2d_pretrain.yaml"), "--config", pre],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "pretrain/last.ckpt").is_file()
    return str(tmp_path / "pretrain/last.ckpt")


def _job_environment(monkeypatch, cluster):
    """The job inherits this environment (sbatch --export=ALL); only the calling test's scope sees it."""
    monkeypatch.setenv("SLURM_CONF", cluster.conf)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # single node: no reliance on the host name resolving
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in [k for k in os.environ if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        monkeypatch.delenv(name)


def _show_job(cluster, job_id):
    """`scontrol show job` as a dict of its Key=Value fields (values without spaces)."""
    shown = cluster.run("scontrol", "show", "job", job_id).stdout
    return dict(re.findall(r"(\w+)=(\S*)", shown))


def _job_logs(out, job_name, job_id):
    return "".join((out / f"{job_name}-{job_id}.{ext}").read_text(errors="replace")
                   if (out / f"{job_name}-{job_id}.{ext}").exists() else "" for ext in ("out", "err"))


@pytest.mark.slow
def test_two_task_ddo_training_on_a_real_slurm_cluster(slurm_cluster, tmp_path, monkeypatch):
    """`ddo fit` of the toy preset as 2 srun tasks on one node: DDP over gloo, world size 2, job COMPLETED."""
    reference = _pretrain(tmp_path)
    ddo = _write(tmp_path / "ddo.yaml", {
        "trainer": {"accelerator": "cpu", "strategy": "ddp", "max_steps": 4, "enable_progress_bar": False,
                    "logger": False, "callbacks": [
                        {"class_path": "ddo_lightning.training.SelfPlay",
                         "init_args": {"rounds": 1, "kimg_per_round": 0.256, "eval_every_kimg": 0.128,
                                       "monitor": "mmd", "dirpath": "ddo", "summary_path": "ddo/summary.json"}}]},
        "model": {"init_args": {"init_from": reference, "num_eval_samples": 200}},
        "data": {"init_args": {"batch_size": 64, **SMALL_DATA,
                               "fake": {"class_path": "ddo_lightning.training.PoolFakeSource",
                                        "init_args": {"size": 256}}}}})
    out = tmp_path / "slurm"
    out.mkdir()
    script = render_sbatch([os.path.join(ROOT, "configs/toy2d.yaml"), ddo], nodes=1, devices=2, cpus_per_task=1,
                           time="00:10:00", job_name="ddo-test", output_dir=str(out),
                           extra_sbatch=[f"--chdir={tmp_path}"])
    _job_environment(monkeypatch, slurm_cluster)
    job_id = submit(script)
    assert job_id.isdigit()

    deadline, state = time.monotonic() + 300, "?"
    while time.monotonic() < deadline:
        state = _show_job(slurm_cluster, job_id).get("JobState", "?")
        if state in TERMINAL:
            break
        time.sleep(1)
    logs = _job_logs(out, "ddo-test", job_id)
    assert state == "COMPLETED", f"job {job_id}: {state}\n{logs[-4000:]}\n{slurm_cluster.logs()}"
    for rank in (0, 1):
        assert f"Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in logs, logs[-4000:]
    # One 256-image round at 64 images per rank and step: 2 steps with 2 ranks (4 with one).
    summary = json.loads((tmp_path / "ddo/summary.json").read_text())
    assert [(r["round"], r["promoted_kimg_in_round"]) for r in summary["rounds"]] == [(1, 0.256)]
    import torch

    assert torch.load(tmp_path / "ddo/rounds/round-1.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2


@pytest.mark.slow
def test_preempted_job_checkpoints_requeues_and_resumes_on_a_real_slurm_cluster(slurm_cluster, tmp_path,
                                                                                monkeypatch):
    """`scancel --signal=USR1` to a running two-task DDO job: the Preemption callback writes resume.ckpt
    at a step boundary and requeues the job (`scontrol requeue` from rank 0); the second run of the job
    resumes from it (the script's --ckpt_path) and completes: every step checkpointed once, none lost."""
    import torch

    max_steps, name = 40, "ddo-preempt"
    reference = _pretrain(tmp_path)
    out = tmp_path / "slurm"
    out.mkdir()
    resume = out / "resume.ckpt"
    ddo = _write(tmp_path / "ddo.yaml", {
        "trainer": {"accelerator": "cpu", "strategy": "ddp", "max_steps": max_steps, "enable_progress_bar": False,
                    "logger": False, "callbacks": [
                        # global batch 64 (32 per rank): a round is 4 steps, 10 rounds are all of max_steps
                        {"class_path": "ddo_lightning.training.SelfPlay",
                         "init_args": {"rounds": max_steps // 4, "kimg_per_round": 0.256, "eval_every_kimg": 0.128,
                                       "monitor": "mmd", "dirpath": "ddo", "summary_path": "ddo/summary.json"}},
                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                         "init_args": {"dirpath": str(out / "ckpt"), "filename": "{step}", "save_top_k": -1,
                                       "every_n_train_steps": 1}}]},  # `ddo slurm` adds Preemption(path=<out>/resume.ckpt)
        "model": {"init_args": {"init_from": reference, "num_eval_samples": 200, "eval_batch_size": 200,
                                "sampler": {"class_path": "ddo_lightning.samplers.HeunSampler",
                                            "init_args": {"num_steps": 4}}}},
        "data": {"init_args": {"batch_size": 32, **SMALL_DATA,
                               "fake": {"class_path": "ddo_lightning.training.PoolFakeSource",
                                        "init_args": {"size": 256, "generation_batch_size": 64,
                                                      "progress": False}}}}})
    script = render_sbatch([os.path.join(ROOT, "configs/toy2d.yaml"), ddo], nodes=1, devices=2, cpus_per_task=1,
                           time="00:10:00", job_name=name, output_dir=str(out), extra_sbatch=[f"--chdir={tmp_path}"])
    _job_environment(monkeypatch, slurm_cluster)
    t0 = time.monotonic()
    job_id = submit(script)

    def failure(what):
        return (f"job {job_id}: {what}\n{slurm_cluster.run('scontrol', 'show', 'job', job_id).stdout}\n"
                f"{_job_logs(out, name, job_id)[-5000:]}\n{slurm_cluster.logs()}")

    # 1. Running and past step 3: the signal, to the job's steps (the srun tasks), not to the batch shell.
    deadline = time.monotonic() + 300
    while not (out / "ckpt/step=3.ckpt").exists():
        job = _show_job(slurm_cluster, job_id)
        assert job.get("JobState") in ("PENDING", "RUNNING") and time.monotonic() < deadline, failure("no step 3")
        time.sleep(0.1)
    signalled = slurm_cluster.run("scancel", "--signal=USR1", job_id)
    assert signalled.returncode == 0, signalled.stderr
    t_signal = time.monotonic() - t0

    # 2. Requeued by the callback, run again and completed.
    deadline, job = time.monotonic() + 300, {}
    while time.monotonic() < deadline:
        job = _show_job(slurm_cluster, job_id)
        if job.get("JobState") in TERMINAL:
            break
        time.sleep(0.5)
    wall = time.monotonic() - t0
    assert job.get("JobState") == "COMPLETED", failure("did not complete")
    assert int(job["Restarts"]) >= 1, failure("not requeued")

    logs = _job_logs(out, name, job_id)
    stopped = torch.load(resume, map_location="cpu", weights_only=True)["global_step"]
    assert 3 <= stopped < max_steps, failure(f"stopped at step {stopped}")
    assert f"[preemption] SIGUSR1: checkpoint of step {stopped} written to {resume}" in logs, failure("no signal")
    assert f"[preemption] requeued SLURM job {job_id}" in logs, failure("no requeue from the job")
    assert f"resuming from {resume}" in logs, failure("the second run did not pass --ckpt_path")
    assert f"Restoring states from the checkpoint path at {resume}" in logs, failure("not resumed")
    # Every step checkpointed, nothing lost; the second run continued at step stopped + 1 (nothing repeated).
    steps = {int(m.group(1)) for p in (out / "ckpt").iterdir() if (m := re.fullmatch(r"step=(\d+)\.ckpt", p.name))}
    # The requeue kills the job's processes at once: whatever they still write after it (here the step's
    # ModelCheckpoint, which runs after Preemption's on_train_batch_end) is lost if the requeue comes too early.
    leftovers = sorted(p.name for p in (out / "ckpt").iterdir() if ".tmp-" in p.name)
    assert steps == set(range(1, max_steps + 1)) and not leftovers, \
        failure(f"step checkpoints {sorted(steps)}, partial files {leftovers}")
    first, resumed = (torch.load(out / f"ckpt/step={k}.ckpt", map_location="cpu", weights_only=True)
                      for k in (stopped, stopped + 1))
    assert first["global_step"] == stopped and resumed["global_step"] == stopped + 1
    written = {k: os.path.getmtime(out / f"ckpt/step={k}.ckpt") for k in steps}
    assert all(written[k] <= os.path.getmtime(resume) for k in range(1, stopped)), "the second run repeated steps"
    assert all(written[k] > os.path.getmtime(resume) for k in range(stopped + 1, max_steps + 1))
    for final in (f"step={max_steps}.ckpt", "last.ckpt"):  # last.ckpt: save_last of the preset's ModelCheckpoint
        if final == f"step={max_steps}.ckpt" or (out / "ckpt" / final).exists():
            assert torch.load(out / "ckpt" / final, map_location="cpu", weights_only=True)["global_step"] == max_steps
    summary = json.loads((tmp_path / "ddo/summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == list(range(1, max_steps // 4 + 1))
    print(f"\n[slurm] job {job_id}: USR1 at {t_signal:.0f} s, stopped after step {stopped}, "
          f"requeued {job['Restarts']}x, completed at {wall:.0f} s")
