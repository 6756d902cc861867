"""`ddo slurm`: the rendered sbatch script, its resume logic run by bash, input checks, submission errors,
and (slow, root only) a two-task DDO training on a real one-node SLURM cluster started by the test."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml
from slurm_cluster import TERMINAL, one_node_cluster

from ddo_lightning.launch import slurm
from ddo_lightning.launch.slurm import main, render_sbatch, submit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = dict(nodes=2, devices=4, cpus_per_task=8, time="1-00:00:00", job_name="ddo-cifar", output_dir="/runs/cifar")


def sbatch_lines(script):
    return [line.removeprefix("#SBATCH ").strip() for line in script.splitlines() if line.startswith("#SBATCH")]


def srun_line(script):
    return next(line for line in script.splitlines() if line.startswith("srun "))


def test_script_has_every_flag():
    script = render_sbatch(["configs/edm_cifar10.yaml", "my run.yaml"], **BASE, python="/opt/py/bin/python")
    assert script.startswith("#!/bin/bash\n# ")
    assert sbatch_lines(script) == [
        "--job-name=ddo-cifar",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--cpus-per-task=8",
        "--time=1-00:00:00",
        "--output=/runs/cifar/%x-%j.out",
        "--error=/runs/cifar/%x-%j.err",
        "--signal=USR1@90",
        "--requeue",
        "--open-mode=append",
    ]
    assert "--ntasks=" not in script  # Lightning rejects --ntasks without --ntasks-per-node
    assert srun_line(script) == (
        "srun --kill-on-bad-exit=1 --cpus-per-task=8 /opt/py/bin/python -m ddo_lightning.cli fit "
        "--config configs/edm_cifar10.yaml --config 'my run.yaml' --trainer.accelerator cpu --trainer.num_nodes 2 "
        "--trainer.devices 4 --trainer.callbacks+=ddo_lightning.training.Preemption "
        '"--trainer.callbacks.path=$RESUME" "$@"'
    )
    assert 'RESUME="$OUT_DIR/resume-$SLURM_JOB_ID.ckpt"' in script and "OUT_DIR=/runs/cifar" in script
    no_preemption = render_sbatch(["a.yaml"], **BASE, preemption=False)
    assert "Preemption" not in srun_line(no_preemption) and "RESUME" not in no_preemption


def test_gpus_per_node_sets_gres_tasks_accelerator_and_devices():
    script = render_sbatch(
        ["a.yaml"],
        **{**BASE, "devices": None},
        gpus_per_node=4,
        batch_per_device=64,
        python="py",
        fit_args=["--trainer.max_steps", "9"],
    )
    lines = sbatch_lines(script)
    assert lines[:4] == ["--job-name=ddo-cifar", "--nodes=2", "--ntasks-per-node=4", "--gres=gpu:4"]
    assert srun_line(script) == (
        "srun --kill-on-bad-exit=1 --cpus-per-task=8 py -m ddo_lightning.cli fit --config a.yaml "
        "--trainer.accelerator gpu --trainer.num_nodes 2 --trainer.devices 4 "
        '--trainer.callbacks+=ddo_lightning.training.Preemption "--trainer.callbacks.path=$RESUME" '
        '--trainer.max_steps 9 --data.init_args.batch_size 64 "$@"'
    )
    # consistent duplicates are accepted
    assert render_sbatch(["a.yaml"], **BASE, gpus_per_node=4) == render_sbatch(
        ["a.yaml"], **{**BASE, "devices": None}, gpus_per_node=4
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(devices=None), "give --gpus-per-node N (a GPU job) or --devices N (a CPU job)"),
        (dict(gpus_per_node=2), "devices 4 and gpus_per_node 2 disagree"),
        (dict(devices=None, gpus_per_node=0), "gpus_per_node 0"),
        (
            dict(extra_sbatch=["--gres=gpu:4"]),
            "extra sbatch line '--gres=gpu:4': GPUs are asked for with --gpus-per-node",
        ),
        (dict(extra_sbatch=["#SBATCH --gpus-per-node=2"]), "GPUs are asked for with --gpus-per-node"),
        (dict(fit_args=["--trainer.devices", "8"]), "fit argument '--trainer.devices': ddo slurm sets"),
        (dict(fit_args=["--trainer.accelerator=cpu"]), "fit argument '--trainer.accelerator=cpu'"),
    ],
)
def test_inconsistent_device_requests_are_refused(change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        render_sbatch(["a.yaml"], **{**BASE, **change})


def test_gpu_accelerator_without_a_gpu_fails_loudly():
    """What `--gpus-per-node` relies on: Lightning refuses accelerator gpu where there is none (no CPU fallback)."""
    import torch
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch import Trainer

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(MisconfigurationException, match="No supported gpu backend found"):
        Trainer(accelerator="gpu", devices=1, logger=False)


def test_per_device_batch_divides_the_global_batch_or_refuses():
    assert slurm.per_device_batch(512, 2, 4) == 64 and slurm.per_device_batch(512, 1, 1) == 512
    with pytest.raises(
        ValueError,
        match=r"global batch 512 does not split over 6 ranks \(2 node\(s\) x 3 task\(s\)\)"
        r": choose a world size that divides it \(e.g. 4 or 8\)",
    ):
        slurm.per_device_batch(512, 2, 3)
    with pytest.raises(ValueError, match="data.init_args.batch_size 0"):
        slurm.per_device_batch(0, 1, 1)


def test_optional_flags_and_extra_lines_pass_through():
    script = render_sbatch(
        ["a.yaml"],
        **{**BASE, "output_dir": "out dir"},
        partition="gpu",
        account="proj42",
        qos="high",
        extra_sbatch=["--mem=0", "#SBATCH --exclusive"],
        requeue_signal="B:USR1",
        signal_lead_seconds=300,
        fit_args=["--trainer.max_steps", "1000"],
    )
    lines = sbatch_lines(script)
    assert lines[-5:] == ["--partition=gpu", "--account=proj42", "--qos=high", "--mem=0", "--exclusive"]
    assert '--output="out dir/%x-%j.out"' in lines and "--signal=B:USR1@300" in lines
    assert '"--trainer.callbacks.path=$RESUME" --trainer.max_steps 1000 "$@"' in script
    assert "OUT_DIR='out dir'" in script
    assert "--partition" not in render_sbatch(["a.yaml"], **BASE)


class FakeJob:
    """The script body run by bash with a fake srun that records its arguments, as SLURM would start it."""

    def __init__(self, tmp_path):
        self.tmp, self.out = tmp_path, tmp_path / "out"
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        self.out.mkdir()
        (bin_dir / "srun").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/srun-args\n')
        (bin_dir / "srun").chmod(0o755)
        self.script = tmp_path / "job.sh"
        self.script.write_text(
            render_sbatch(
                ["a.yaml"], **{**BASE, "output_dir": str(self.out)}, python="py", fit_args=["--seed_everything", "3"]
            )
        )
        self.path = f"{bin_dir}:{os.environ['PATH']}"

    def run(self, job_id, restarts=None):
        """(srun's arguments after the fixed ones, the script's stdout) for a job id and restart count."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update({"PATH": self.path, "SLURM_JOB_ID": str(job_id)})
        if restarts is not None:
            env["SLURM_RESTART_COUNT"] = str(restarts)
        (self.tmp / "srun-args").unlink(missing_ok=True)
        done = subprocess.run(["bash", str(self.script)], env=env, capture_output=True, text=True, check=True)
        args = (self.tmp / "srun-args").read_text().split("\n")[:-1]
        fixed = [
            "--kill-on-bad-exit=1",
            "--cpus-per-task=8",
            "py",
            "-m",
            "ddo_lightning.cli",
            "fit",
            "--config",
            "a.yaml",
            "--trainer.accelerator",
            "cpu",
            "--trainer.num_nodes",
            "2",
            "--trainer.devices",
            "4",
            "--trainer.callbacks+=ddo_lightning.training.Preemption",
            f"--trainer.callbacks.path={self.out}/resume-{job_id}.ckpt",
            "--seed_everything",
            "3",
        ]
        assert args[: len(fixed)] == fixed
        return args[len(fixed) :], done.stdout

    def checkpoint(self, name):
        (self.out / name).write_bytes(b"")
        return f"{self.out}/{name}"


def test_script_resumes_a_requeued_job_from_its_own_checkpoint(tmp_path):
    job = FakeJob(tmp_path)
    assert job.run(41) == ([], "")  # first run, nothing there
    assert job.run(41, restarts=0) == ([], "")
    # requeued (SLURM keeps the id and counts restarts) before the callback wrote anything: from the config
    extra, log = job.run(41, restarts=1)
    assert extra == [] and f"no {job.out}/resume-41.ckpt, starting from the config" in log
    mine = job.checkpoint("resume-41.ckpt")
    extra, log = job.run(41, restarts=2)
    assert extra == ["--ckpt_path", mine] and f"job 41, restart 2: resuming from {mine}" in log


def test_script_never_resumes_another_jobs_checkpoint(tmp_path):
    job = FakeJob(tmp_path)
    other, legacy = job.checkpoint("resume-41.ckpt"), job.checkpoint("resume.ckpt")
    extra, log = job.run(42)  # a new job in the same output directory
    assert extra == []
    for stale in (other, legacy):
        assert f"not resuming from {stale}: not written by an earlier run of this job (job 42, restart 0)" in log
    extra, log = job.run(42, restarts=1)  # requeued: still not the other job's state
    assert extra == [] and f"not resuming from {other}" in log
    # a first run whose id was used before (a reinstalled cluster restarts its numbering) does not resume either
    same_id = job.checkpoint("resume-42.ckpt")
    extra, log = job.run(42, restarts=0)
    assert extra == [] and f"not resuming from {same_id}" in log


def test_script_outside_slurm_stops_with_a_message(tmp_path):
    job = FakeJob(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(["bash", str(job.script)], env={**env, "PATH": job.path}, capture_output=True, text=True)
    assert done.returncode != 0 and "not running under SLURM: submit this script with sbatch" in done.stderr
    assert not (tmp_path / "srun-args").exists()


@pytest.mark.parametrize(
    "field, value",
    [
        ("nodes", 0),
        ("devices", -1),
        ("cpus_per_task", 0),
        ("nodes", "2"),
        ("time", "90:00:00:00"),
        ("time", "1:75"),
        ("time", "2-25:00:00"),
        ("time", "soon"),
        ("time", "0"),
        ("job_name", "my job"),
        ("job_name", ""),
        ("output_dir", ""),
        ("partition", "gpu a100"),
        ("requeue_signal", "USR1; rm"),
        ("signal_lead_seconds", 70000),
        ("batch_per_device", 0),
    ],
)
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


TOY = os.path.join(ROOT, "configs/toy2d.yaml")
TOY_OVERLAY = {"model": {"init_args": {"init_from": None}}}  # toy2d.yaml's pretrained reference is not there


def cli_args(tmp_path, overlay=TOY_OVERLAY, config=TOY, devices=("--devices", "2")):
    extra = _write(tmp_path / "tiny.yaml", overlay)
    return [
        "--config",
        config,
        "--config",
        extra,
        "--nodes",
        "1",
        *devices,
        "--cpus-per-task",
        "1",
        "--time",
        "00:10:00",
        "--job-name",
        "toy",
        "--output-dir",
        "runs/toy",
    ]


@pytest.fixture
def no_sbatch(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"nothing may be submitted: {args}")

    monkeypatch.setattr(slurm, "submit", refuse)
    monkeypatch.setattr(slurm.subprocess, "run", refuse)


def test_dry_run_prints_the_script_and_submits_nothing(no_sbatch, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = cli_args(tmp_path) + [
        "--partition",
        "debug",
        "--sbatch-arg",
        "--mem=0",
        "--sbatch-arg=--exclusive",
        "--dry-run",
        "--",
        "--trainer.max_steps",
        "4",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    # toy2d.yaml: batch_size 512 is the global batch, 2 CPU tasks get 256 each
    assert captured.out == render_sbatch(
        [TOY, str(tmp_path / "tiny.yaml")],
        nodes=1,
        devices=2,
        cpus_per_task=1,
        time="00:10:00",
        job_name="toy",
        output_dir="runs/toy",
        partition="debug",
        extra_sbatch=["--mem=0", "--exclusive"],
        batch_per_device=256,
        fit_args=["--trainer.max_steps", "4"],
    )
    assert (
        "#SBATCH --exclusive" in captured.out
        and "--trainer.max_steps 4 --data.init_args.batch_size 256" in captured.out
    )
    assert "global batch 512 = 1 node(s) x 2 task(s) x 256 per task" in captured.err
    assert "model DDOModule: trained network" in captured.err and "trainer callbacks: SelfPlay" in captured.err
    assert not (tmp_path / "runs").exists()


def test_a_batch_size_on_the_command_line_is_the_global_one(no_sbatch, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(cli_args(tmp_path, devices=("--devices", "4")) + ["--dry-run", "--", "--data.init_args.batch_size", "64"])
        == 0
    )
    assert srun_line(capsys.readouterr().out).endswith(
        '--data.init_args.batch_size 64 --data.init_args.batch_size 16 "$@"'
    )


def refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("ddo slurm: error: "), err
    return err


def test_a_batch_that_does_not_split_is_refused(no_sbatch, capsys, tmp_path):
    err = refused(cli_args(tmp_path, devices=("--devices", "3")), capsys)
    assert "global batch 512 does not split over 3 ranks (1 node(s) x 3 task(s))" in err


def test_a_gpu_config_as_a_cpu_job_is_refused(no_sbatch, capsys, tmp_path):
    overlay = {**TOY_OVERLAY, "trainer": {"accelerator": "gpu"}}
    err = refused(cli_args(tmp_path, overlay), capsys)
    assert "the config asks for trainer.accelerator 'gpu' but --devices makes a CPU job: use --gpus-per-node" in err


def test_gpus_per_node_on_the_command_line(no_sbatch, capsys, tmp_path, monkeypatch):
    """Built dry on this (GPU-less) machine: the check runs a CPU stand-in trainer; the job asks for GPUs."""
    monkeypatch.chdir(tmp_path)
    assert main(cli_args(tmp_path, devices=("--gpus-per-node", "4")) + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:4" in out and "#SBATCH --ntasks-per-node=4" in out
    assert "--trainer.accelerator gpu --trainer.num_nodes 1 --trainer.devices 4" in out
    assert "--data.init_args.batch_size 128" in out


def test_a_config_that_crashes_at_startup_is_never_submitted(no_sbatch, capsys, tmp_path):
    """The paper presets' former ModelCheckpoint(save_top_k=2) without a monitor: Lightning refuses it when
    the callback is built; `ddo slurm` builds it first."""
    import copy

    preset = yaml.safe_load(open(TOY))
    callbacks = copy.deepcopy(preset["trainer"]["callbacks"])
    checkpoint = next(c for c in callbacks if c["class_path"].endswith("ModelCheckpoint"))
    checkpoint["init_args"]["save_top_k"] = 2
    err = refused(cli_args(tmp_path, {**TOY_OVERLAY, "trainer": {"callbacks": callbacks}}), capsys)
    assert err.splitlines()[0] == (
        "ddo slurm: error: the config does not build: ModelCheckpoint: MisconfigurationException: "
        "ModelCheckpoint(save_top_k=2, monitor=None) is not a valid configuration. No quantity for top_k to track."
    )


@pytest.mark.parametrize(
    "overlay, message",
    [
        ({"model": {"init_args": {"init_from": None, "learning_rate": 1}}}, "learning_rate"),
        ({"model": {"init_args": {"init_from": None, "lr": "fast"}}}, "lr"),
        (
            {
                "model": {
                    "init_args": {"init_from": None, "sampler": {"class_path": "ddo_lightning.samplers.NoSuchSampler"}}
                }
            },
            "NoSuchSampler",
        ),
    ],
)
def test_a_config_that_does_not_parse_is_refused(overlay, message, no_sbatch, capsys, tmp_path):
    err = refused(cli_args(tmp_path, overlay), capsys)
    assert err.startswith("ddo slurm: error: the config does not parse as `ddo fit` would parse it:") and message in err


def test_cli_bad_fit_arguments_are_refused(no_sbatch, capsys, tmp_path):
    err = refused(cli_args(tmp_path) + ["--", "--trainer.num_nodes", "4"], capsys)
    assert "fit argument '--trainer.num_nodes': ddo slurm sets" in err


@pytest.mark.parametrize(
    "preset", ["edm_cifar10", "edm_cifar10_cond", "edm2_img64_s", "edm2_img512_l", "var_d16", "var_d30"]
)
def test_paper_presets_build_without_their_files(preset, tmp_path, monkeypatch):
    """Every paper preset parses and builds (its callbacks included) with none of its weights or data present:
    networks on the meta device, the weights not loaded, the file-reading parts left unbuilt."""
    from ddo_lightning.launch.config_check import dry_build

    monkeypatch.chdir(tmp_path)  # none of the preset's relative paths exists here
    config, notes = dry_build([os.path.join(ROOT, f"configs/{preset}.yaml")])
    assert config["model"]["init_args"]["init_from"]  # the merged config keeps the file names
    assert notes[0].startswith("model DDOModule: trained network") and "InceptionFeatures(weights_path=" in notes[2]
    assert "ModelCheckpoint" in notes[1] and "SelfPlay" in notes[1]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_missing_files_are_reported_before_submission(no_sbatch, capsys, tmp_path, monkeypatch):
    """The same one message as `ddo fit`'s preflight, every missing input listed, before anything is submitted;
    relative paths are the job's (from --chdir when given)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DDO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DDO_FETCH_MIRROR", raising=False)
    preset = os.path.join(ROOT, "configs/edm_cifar10.yaml")
    overlay = {
        "data": {
            "init_args": {
                "real": {
                    "class_path": "ddo_lightning.data.Cifar10Dataset",
                    "init_args": {"root": "data/cifar-10-batches-py"},
                }
            }
        }
    }
    args = cli_args(tmp_path, overlay, config=preset, devices=("--gpus-per-node", "4"))
    err = refused(args, capsys)
    assert err.splitlines()[0] == "ddo slurm: error: 4 files needed by this config are missing; nothing was built:"
    for name, file in [
        ("edm-cifar10-uncond-vp", "edm-cifar10-32x32-uncond-vp.pkl"),
        ("fid-ref-cifar10", "cifar10-32x32.npz"),
        ("inception", "weights-inception-2015-12-05-6726825d.pth"),
    ]:
        assert f"file: {tmp_path}/cache/{name}/{file}" in err
    assert "  - data.init_args.real.init_args.root: data/cifar-10-batches-py" in err
    assert f"(relative paths are looked up from {tmp_path}, where the job runs)" in err
    (tmp_path / "data/cifar-10-batches-py").mkdir(parents=True)
    err = refused(args, capsys)
    assert "3 files needed" in err and "real.init_args.root" not in err
    # the job runs in --chdir's directory: relative paths are looked up there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    err = refused(args + [f"--sbatch-arg=--chdir={elsewhere}"], capsys)
    assert "4 files needed" in err and f"looked up from {elsewhere}, where the job runs" in err


def test_submission_after_the_checks(capsys, tmp_path, monkeypatch):
    """A valid config goes to sbatch (a fake here) once; the output directory is created for SLURM's logs."""
    monkeypatch.chdir(tmp_path)
    fake = tmp_path / "bin/sbatch"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\ncat > {tmp_path}/submitted && echo "77;cluster"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    assert main(cli_args(tmp_path)) == 0
    assert capsys.readouterr().out == "77\n"
    assert "--data.init_args.batch_size 256" in (tmp_path / "submitted").read_text()
    assert (tmp_path / "runs/toy").is_dir()


@pytest.mark.parametrize(
    "change, message",
    [
        (["--nodes", "0"], "nodes 0"),
        (["--time", "tomorrow"], "time 'tomorrow'"),
        (["--devices", "two"], "--devices"),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(change, message, no_sbatch, capsys, tmp_path):
    err = refused(cli_args(tmp_path) + change + ["--dry-run"], capsys)
    assert message in err and err.count("\n") == 1


def test_cli_missing_config_is_refused_before_submitting(no_sbatch, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [
        "--config",
        "configs/toy2d.yaml",
        "--nodes",
        "1",
        "--devices",
        "2",
        "--cpus-per-task",
        "1",
        "--time",
        "00:10:00",
        "--job-name",
        "toy",
        "--output-dir",
        "runs/toy",
    ]
    assert "config 'configs/toy2d.yaml': no such file" in refused(argv, capsys)


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


@pytest.fixture
def slurm_cluster():
    """A one-node cluster: private munge key and socket, state and logs in a temporary directory."""
    with one_node_cluster() as cluster:
        yield cluster


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


SMALL_DATA = {"real": {"class_path": "ddo_lightning.data.Toy2DDataset", "init_args": {"num_samples": 1024}}}


def _pretrain(tmp_path):
    """A 2-step MLE reference of the toy preset, run here (not under SLURM): tmp_path/pretrain/last.ckpt."""
    pre = _write(
        tmp_path / "pre.yaml",
        {
            "trainer": {
                "max_steps": 2,
                "val_check_interval": 2,
                "enable_progress_bar": False,
                "logger": False,
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": "pretrain", "save_last": True, "every_n_train_steps": 2},
                    }
                ],
            },
            "model": {"init_args": {"num_eval_samples": 200}},
            "data": {"init_args": {"batch_size": 64, **SMALL_DATA}},
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ddo_lightning.cli",
            "fit",
            "--config",
            os.path.join(ROOT, "configs/toy2d_pretrain.yaml"),
            "--config",
            pre,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
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
    return cluster.show_job(job_id)


def _job_logs(out, job_name, job_id):
    return "".join(
        (out / f"{job_name}-{job_id}.{ext}").read_text(errors="replace")
        if (out / f"{job_name}-{job_id}.{ext}").exists()
        else ""
        for ext in ("out", "err")
    )


@pytest.mark.slow
def test_two_task_ddo_training_on_a_real_slurm_cluster(slurm_cluster, tmp_path, monkeypatch):
    """`ddo fit` of the toy preset as 2 srun tasks on one node: DDP over gloo, world size 2, job COMPLETED."""
    reference = _pretrain(tmp_path)
    ddo = _write(
        tmp_path / "ddo.yaml",
        {
            "trainer": {
                "accelerator": "cpu",
                "strategy": "ddp",
                "max_steps": 4,
                "enable_progress_bar": False,
                "logger": False,
                "callbacks": [
                    {
                        "class_path": "ddo_lightning.training.SelfPlay",
                        "init_args": {
                            "rounds": 1,
                            "kimg_per_round": 0.256,
                            "eval_every_kimg": 0.128,
                            "monitor": "mmd",
                            "dirpath": "ddo",
                            "summary_path": "ddo/summary.json",
                        },
                    }
                ],
            },
            "model": {"init_args": {"init_from": reference, "num_eval_samples": 200}},
            "data": {
                "init_args": {
                    "batch_size": 64,
                    **SMALL_DATA,
                    "fake": {"class_path": "ddo_lightning.training.PoolFakeSource", "init_args": {"size": 256}},
                }
            },
        },
    )
    out = tmp_path / "slurm"
    out.mkdir()
    script = render_sbatch(
        [os.path.join(ROOT, "configs/toy2d.yaml"), ddo],
        nodes=1,
        devices=2,
        cpus_per_task=1,
        time="00:10:00",
        job_name="ddo-test",
        output_dir=str(out),
        extra_sbatch=[f"--chdir={tmp_path}"],
    )
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
def test_preempted_job_checkpoints_requeues_and_resumes_on_a_real_slurm_cluster(slurm_cluster, tmp_path, monkeypatch):
    """`scancel --signal=USR1` to a running two-task DDO job: the Preemption callback writes resume-<job>.ckpt
    at a step boundary and requeues the job (`scontrol requeue` from rank 0); the second run of the job
    resumes from it (the script's --ckpt_path) and completes: every step checkpointed once, none lost."""
    import torch

    max_steps, name = 40, "ddo-preempt"
    reference = _pretrain(tmp_path)
    out = tmp_path / "slurm"
    out.mkdir()
    ddo = _write(
        tmp_path / "ddo.yaml",
        {
            "trainer": {
                "accelerator": "cpu",
                "strategy": "ddp",
                "max_steps": max_steps,
                "enable_progress_bar": False,
                "logger": False,
                "callbacks": [
                    # global batch 64 (32 per rank): a round is 4 steps, 10 rounds are all of max_steps
                    {
                        "class_path": "ddo_lightning.training.SelfPlay",
                        "init_args": {
                            "rounds": max_steps // 4,
                            "kimg_per_round": 0.256,
                            "eval_every_kimg": 0.128,
                            "monitor": "mmd",
                            "dirpath": "ddo",
                            "summary_path": "ddo/summary.json",
                        },
                    },
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {
                            "dirpath": str(out / "ckpt"),
                            "filename": "{step}",
                            "save_top_k": -1,
                            "every_n_train_steps": 1,
                        },
                    },
                ],
            },  # `ddo slurm` adds Preemption(path=<out>/resume.ckpt)
            "model": {
                "init_args": {
                    "init_from": reference,
                    "num_eval_samples": 200,
                    "eval_batch_size": 200,
                    "sampler": {"class_path": "ddo_lightning.samplers.HeunSampler", "init_args": {"num_steps": 4}},
                }
            },
            "data": {
                "init_args": {
                    "batch_size": 32,
                    **SMALL_DATA,
                    "fake": {
                        "class_path": "ddo_lightning.training.PoolFakeSource",
                        "init_args": {"size": 256, "generation_batch_size": 64, "progress": False},
                    },
                }
            },
        },
    )
    script = render_sbatch(
        [os.path.join(ROOT, "configs/toy2d.yaml"), ddo],
        nodes=1,
        devices=2,
        cpus_per_task=1,
        time="00:10:00",
        job_name=name,
        output_dir=str(out),
        extra_sbatch=[f"--chdir={tmp_path}"],
    )
    _job_environment(monkeypatch, slurm_cluster)
    t0 = time.monotonic()
    job_id = submit(script)
    resume = out / f"resume-{job_id}.ckpt"  # the script's: this job's own resume checkpoint

    def failure(what):
        return (
            f"job {job_id}: {what}\n{slurm_cluster.run('scontrol', 'show', 'job', job_id).stdout}\n"
            f"{_job_logs(out, name, job_id)[-5000:]}\n{slurm_cluster.logs()}"
        )

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
    assert steps == set(range(1, max_steps + 1)) and not leftovers, failure(
        f"step checkpoints {sorted(steps)}, partial files {leftovers}"
    )
    first, resumed = (
        torch.load(out / f"ckpt/step={k}.ckpt", map_location="cpu", weights_only=True) for k in (stopped, stopped + 1)
    )
    assert first["global_step"] == stopped and resumed["global_step"] == stopped + 1
    written = {k: os.path.getmtime(out / f"ckpt/step={k}.ckpt") for k in steps}
    assert all(written[k] <= os.path.getmtime(resume) for k in range(1, stopped)), "the second run repeated steps"
    assert all(written[k] > os.path.getmtime(resume) for k in range(stopped + 1, max_steps + 1))
    for final in (f"step={max_steps}.ckpt", "last.ckpt"):  # last.ckpt: save_last of the preset's ModelCheckpoint
        if final == f"step={max_steps}.ckpt" or (out / "ckpt" / final).exists():
            assert torch.load(out / "ckpt" / final, map_location="cpu", weights_only=True)["global_step"] == max_steps
    summary = json.loads((tmp_path / "ddo/summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == list(range(1, max_steps // 4 + 1))
    print(
        f"\n[slurm] job {job_id}: USR1 at {t_signal:.0f} s, stopped after step {stopped}, "
        f"requeued {job['Restarts']}x, completed at {wall:.0f} s"
    )


@pytest.mark.slow
def test_paper_preset_through_ddo_slurm_on_a_real_slurm_cluster(slurm_cluster, tmp_path, monkeypatch, capsys):
    """configs/edm_cifar10.yaml as shipped (its callback list included) with a size overlay, through the whole
    `ddo slurm` path: dry build and file check here, sbatch, 2 CPU tasks on the cluster; COMPLETED, exit 0,
    SelfPlay's summary written, the global batch split over the two ranks."""
    from conftest import write_fake_cifar

    preset = yaml.safe_load(open(os.path.join(ROOT, "configs/edm_cifar10.yaml")))
    callbacks = preset["trainer"]["callbacks"]  # the shipped list; only SelfPlay's schedule shrinks
    selfplay = next(c for c in callbacks if c["class_path"].endswith("SelfPlay"))
    selfplay["init_args"].update(
        rounds=1, kimg_per_round=0.032, eval_every_kimg=0.016, dirpath="ddo", summary_path="ddo/summary.json"
    )
    root = write_fake_cifar(str(tmp_path / "data"), per_batch=16)  # 80 images, x-flipped: 160
    overlay = _write(
        tmp_path / "small.yaml",
        {
            "trainer": {"accelerator": "cpu", "enable_progress_bar": False, "callbacks": callbacks},
            "model": {
                "init_args": {
                    "init_from": None,
                    "num_eval_samples": 32,
                    "eval_batch_size": 32,
                    "network": {
                        "init_args": {
                            "model": {"init_args": {"model_channels": 16, "channel_mult": [1, 1], "num_blocks": 1}}
                        }
                    },
                    "sampler": {"class_path": "ddo_lightning.samplers.HeunSampler", "init_args": {"num_steps": 4}},
                    "evaluator": {
                        "class_path": "ddo_lightning.metrics.FrechetDistance",
                        "init_args": {
                            "name": "fid",
                            "reference_stats": None,
                            "extractor": {"class_path": "conftest.RandomFeatures"},
                        },
                    },
                }
            },
            "data": {
                "init_args": {
                    "real": {
                        "class_path": "ddo_lightning.data.Cifar10Dataset",
                        "init_args": {"root": root, "xflip": True},
                    },
                    "batch_size": 16,
                    "num_workers": 0,
                    "fake": {
                        "class_path": "ddo_lightning.training.PoolFakeSource",
                        "init_args": {"size": 32, "generation_batch_size": 16, "progress": False},
                    },
                }
            },
        },
    )
    out = tmp_path / "slurm"
    _job_environment(monkeypatch, slurm_cluster)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.join(ROOT, "src"), os.path.join(ROOT, "tests")]))
    monkeypatch.chdir(tmp_path)  # the job runs where it was submitted (sbatch's default)
    t0 = time.monotonic()
    assert (
        main(
            [
                "--config",
                os.path.join(ROOT, "configs/edm_cifar10.yaml"),
                "--config",
                overlay,
                "--nodes",
                "1",
                "--devices",
                "2",
                "--cpus-per-task",
                "1",
                "--time",
                "00:15:00",
                "--job-name",
                "ddo-cifar",
                "--output-dir",
                str(out),
                "--",
                "--trainer.strategy",
                "ddp",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    job_id = captured.out.strip()
    assert job_id.isdigit(), captured
    assert "global batch 16 = 1 node(s) x 2 task(s) x 8 per task" in captured.err

    deadline, job = time.monotonic() + 600, {}
    while time.monotonic() < deadline:
        job = _show_job(slurm_cluster, job_id)
        if job.get("JobState") in TERMINAL:
            break
        time.sleep(1)
    logs = _job_logs(out, "ddo-cifar", job_id)
    failure = f"job {job_id}: {job.get('JobState')}\n{logs[-5000:]}\n{slurm_cluster.logs()}"
    assert job.get("JobState") == "COMPLETED" and job.get("ExitCode") == "0:0", failure
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in logs, failure
    assert "resuming from" not in logs and int(job["Restarts"]) == 0
    # one round of 32 images at 8 per rank and step on 2 ranks: 2 steps, evaluated after each (0.016 kimg)
    summary = json.loads((tmp_path / "ddo/summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1], summary
    assert summary["rounds"][0]["promoted_kimg_in_round"] in (0.016, 0.032), summary
    import torch

    assert torch.load(tmp_path / "ddo/rounds/round-1.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2
    print(f"\n[slurm] edm_cifar10 preset job {job_id}: completed in {time.monotonic() - t0:.0f} s")
