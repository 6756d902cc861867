"""Count the source files of ``ddo_lightning`` whose code runs during one training step and during one
self-play round boundary, in a tiny run of the 2-D demo (``configs/toy2d.yaml``).

    PYTHONPATH=src python scripts/count_files_touched.py [--list]

How it counts. The demo's two stages run in-process through ``ddo fit`` (``ddo_lightning.cli.run``) in a
temporary directory, shrunk by an overlay (64 samples a step, 8 steps a round, 2 rounds, an evaluation
every 4 steps, 100 evaluation samples, 4 sampler steps, a pool of 128 fakes). The MLE stage only makes
the reference. During the DDO stage a ``sys.settrace`` function records the file of every Python frame
that starts or resumes (no line events), and files the record under the current *iteration* of
Lightning's training loop: an iteration starts when ``_TrainingEpochLoop.advance`` is entered and lasts
until the next one starts, so it holds the batch fetch, the fake draw, every ``on_train_batch_*`` hook,
forward, backward, optimizer, EMA, logging and the loop's end-of-iteration checks.

* one step: the iteration of step 6 of round 1 (neither an evaluation, nor a round's end, nor a
  logging or checkpoint step, nor the first step of the fit);
* one round: the union of the iterations of the last step of round 1 (its evaluation, promotion, the new
  reference's fakes, ``round-1.ckpt``, the summary) and of the first step of round 2.

Only files under ``src/ddo_lightning`` count; a file counts once however often it runs. Each count is
split into the training layer (``training/``: modules, data module, fake sources, callbacks, I/O) and the
rest (network, objective, losses, sampler, data set, metric), which any step of any trainer runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import defaultdict

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, STEPS_PER_ROUND, EVAL_EVERY_STEPS, ROUNDS = 64, 8, 4, 2
PLAIN_STEP = 6  # 1-based step of round 1: not a multiple of EVAL_EVERY_STEPS, not the first
ROUND_END = STEPS_PER_ROUND  # the last step of round 1; the next one is round 2's first


def _overlay(path: str, data: dict) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


class FileTracer:
    """Files (under ``package``) of the frames that run, per training-loop iteration (index -1: before
    the first)."""

    def __init__(self, package: str):
        self.package = package + os.sep
        self.iteration = -1
        self.files: dict[int, set[str]] = defaultdict(set)
        self.functions: dict[int, set[str]] = defaultdict(set)

    def __call__(self, frame, event, arg):
        code = frame.f_code
        name = code.co_filename
        if code.co_name == "advance" and name.endswith(os.path.join("loops", "training_epoch_loop.py")):
            self.iteration += 1
        elif name.startswith(self.package):
            rel = os.path.relpath(name, os.path.dirname(os.path.dirname(self.package)))
            self.files[self.iteration].add(rel)
            self.functions[self.iteration].add(f"{rel}:{code.co_name}")
        # returns None: call events only, no line tracing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the files of each set")
    parser.add_argument("--functions", action="store_true", help="print the functions of each set")
    args = parser.parse_args()

    import ddo_lightning
    from ddo_lightning.cli import run

    package = os.path.dirname(os.path.abspath(ddo_lightning.__file__))
    tmp = tempfile.mkdtemp(prefix="count_files_")
    os.chdir(tmp)
    small = {
        "num_eval_samples": 100,
        "eval_batch_size": 100,
        "sampler": {"class_path": "ddo_lightning.samplers.HeunSampler", "init_args": {"num_steps": 4}},
    }
    real = {"class_path": "ddo_lightning.data.Toy2DDataset", "init_args": {"num_samples": 1024}}
    pre = _overlay(
        "pre.yaml",
        {
            "trainer": {"max_steps": 2, "val_check_interval": 2, "enable_progress_bar": False},
            "model": {"init_args": small},
            "data": {"init_args": {"batch_size": BATCH, "real": real}},
        },
    )
    run(["fit", "--config", os.path.join(ROOT, "configs/toy2d_pretrain.yaml"), "--config", pre])
    ddo = _overlay(
        "ddo.yaml",
        {
            "model": {"init_args": small},
            "data": {
                "init_args": {
                    "batch_size": BATCH,
                    "real": real,
                    "fake": {
                        "class_path": "ddo_lightning.training.PoolFakeSource",
                        "init_args": {"size": 128, "progress": False},
                    },
                }
            },
        },
    )

    def kimg(steps: int) -> str:
        return str(steps * BATCH / 1000)

    tracer = FileTracer(package)
    sys.settrace(tracer)
    try:
        run(
            [
                "fit",
                "--config",
                os.path.join(ROOT, "configs/toy2d.yaml"),
                "--config",
                ddo,
                "--selfplay.rounds",
                str(ROUNDS),
                "--selfplay.kimg_per_round",
                kimg(STEPS_PER_ROUND),
                "--selfplay.eval_every_kimg",
                kimg(EVAL_EVERY_STEPS),
                "--selfplay.control",  # the rounds alone: no MLE control after them, no report evaluations
                "false",
                "--selfplay.report_seed_sets",
                "0",
            ]
        )
    finally:
        sys.settrace(None)
    if tracer.iteration + 1 != ROUNDS * STEPS_PER_ROUND:
        raise SystemExit(f"expected {ROUNDS * STEPS_PER_ROUND} training iterations, traced {tracer.iteration + 1}")
    print(f"run directory: {os.path.join(tmp, 'outputs', 'toy2d')}")
    kind = tracer.functions if args.functions else tracer.files
    step = kind[PLAIN_STEP - 1]
    boundary = kind[ROUND_END - 1] | kind[ROUND_END]
    for title, items in (
        (f"one step (step {PLAIN_STEP} of round 1)", step),
        (f"one round boundary (steps {ROUND_END} and {ROUND_END + 1})", boundary),
    ):
        files = {i.split(":")[0] for i in items}
        layer = {f for f in files if f.startswith(os.path.join("ddo_lightning", "training", ""))}
        print(
            f"{title}: {len(files)} files ({len(layer)} in training/, {len(files) - len(layer)} model, "
            "objective, sampler, data and metrics)"
        )
        if args.list or args.functions:
            print("".join(f"  {f}\n" for f in sorted(items)), end="")


if __name__ == "__main__":
    main()
