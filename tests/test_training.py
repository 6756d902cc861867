"""The Lightning layer on the toy problem: DDOModule, DDODataModule, fake sources, SelfPlay."""

import math
import os

import lightning.pytorch as pl
import pytest
import torch
from conftest import make_trainer, tiny_net

from ddo_lightning.checkpoints import ArchitectureMismatch
from ddo_lightning.metrics import MixtureMetrics
from ddo_lightning.objectives import DiffusionDDO
from ddo_lightning.protocols import Samples
from ddo_lightning.samplers import HeunSampler, mix_seed
from ddo_lightning.training import (
    DDODataModule,
    DDOModule,
    FakeSource,
    NonFiniteLossError,
    OnlineFakeSource,
    PoolFakeSource,
    SelfPlay,
)


def ddo_module(init_from=None, alpha=1.0, beta=1.0, lr=1e-3, **kw):
    return DDOModule(
        kw.pop("network", tiny_net()),
        init_from=init_from,
        objective=DiffusionDDO(alpha=alpha, beta=beta),
        lr=lr,
        ema_halflife_kimg=5,
        sampler=HeunSampler(num_steps=6),
        evaluator=MixtureMetrics(),
        num_eval_samples=500,
        eval_batch_size=500,
        **kw,
    )


def pool_data(real, batch_size=128, size=1024, seed=1):
    return DDODataModule(
        real,
        batch_size=batch_size,
        fake=PoolFakeSource(size=size, generation_batch_size=512, seed=seed, progress=False),
    )


class Record(pl.Callback):
    """Records the logged training loss and Δ statistics of every step, and what the reference looks like."""

    def __init__(self):
        self.losses, self.stats, self.reference_training = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.stats.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})
        self.reference_training.append(pl_module.reference.training)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 4.0])
def test_step_zero_identity_through_training_step(tmp_path, toy_real, mle_ckpt, alpha):
    """At θ = θ_ref, Δ ≡ 0 and the loss is (1+α)·ln 2 exactly — through Lightning's real training step."""
    rec = Record()
    module = ddo_module(mle_ckpt, alpha=alpha, beta=0.5)
    make_trainer(tmp_path, max_steps=1, callbacks=[rec]).fit(module, pool_data(toy_real))
    assert rec.losses[0] == pytest.approx((1 + alpha) * math.log(2), abs=1e-6)
    for key in ("train/delta_real_mean", "train/delta_fake_mean", "train/delta_real_std", "train/delta_fake_std"):
        assert rec.stats[0][key] == 0.0, key


def test_reference_frozen_outside_optimizer_and_ema(tmp_path, toy_real, mle_ckpt):
    rec = Record()
    module = ddo_module(mle_ckpt)
    ref_before = {k: v.clone() for k, v in module.reference.state_dict().items()}
    trainer = make_trainer(tmp_path, max_steps=5, callbacks=[rec])
    trainer.fit(module, pool_data(toy_real))
    assert not any(rec.reference_training), "reference was in training mode during a step"
    assert all(not p.requires_grad for p in module.reference.parameters())
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in module.target.parameters()}
    for k, v in module.reference.state_dict().items():
        assert torch.equal(v, ref_before[k]), f"reference weight {k} changed"
    # the target did move, and the EMA follows the target, not the reference
    moved = any(not torch.equal(a, b) for a, b in zip(module.target.state_dict().values(), ref_before.values()))
    assert moved
    assert not any(p is q for p in module.ema.model.parameters() for q in module.reference.parameters())


def test_dropout_switched_off(mle_ckpt):
    module = ddo_module(mle_ckpt, network=tiny_net(dropout=0.3))
    drops = [m for net in (module.target, module.reference) for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.0 for m in drops)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-true", "64-true"])
def test_non_fp32_precision_is_refused(tmp_path, toy_real, mle_ckpt, precision):
    with pytest.raises(ValueError, match="32-true"):
        make_trainer(tmp_path, max_steps=1, precision=precision).fit(ddo_module(mle_ckpt), pool_data(toy_real))


def test_reference_of_another_architecture_is_refused(mle_ckpt):
    with pytest.raises(ArchitectureMismatch, match=r"shape differs: model\.net\.0\.weight"):
        ddo_module(mle_ckpt, network=tiny_net(hidden=16))


def test_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="bad.ckpt"):
        ddo_module(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        ddo_module(str(tmp_path / "missing.ckpt"))


class ShortFakes(FakeSource):
    """A broken fake source: one sample fewer than asked for."""

    def next(self, batch_size, device):
        return Samples(torch.zeros(batch_size - 1, 2, device=device), torch.zeros(batch_size - 1, 0, device=device))


def test_fake_batch_of_wrong_size_is_refused(tmp_path, toy_real, mle_ckpt):
    data = DDODataModule(toy_real, batch_size=64, fake=ShortFakes())
    with pytest.raises(ValueError, match="returned 63 samples for a real batch of 64"):
        make_trainer(tmp_path, max_steps=2).fit(ddo_module(mle_ckpt), data)


class PoisonAfter(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.target.parameters()).fill_(float("nan"))


def test_non_finite_loss_stops_with_step_and_stats_and_keeps_checkpoint(tmp_path, toy_real, mle_ckpt):
    ckpt_cb = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True, save_top_k=-1
    )
    trainer = make_trainer(tmp_path, max_steps=10, enable_checkpointing=True, callbacks=[ckpt_cb, PoisonAfter(3)])
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(ddo_module(mle_ckpt), pool_data(toy_real))
    msg = str(err.value)
    assert "step 3" in msg and "delta_real_mean=" in msg and "loss=" in msg
    assert "Cause: the target's weights are already NaN/inf" in msg  # PoisonAfter wrote NaN into a weight
    last = ckpt_cb.last_model_path
    assert last and last in msg
    state = torch.load(last, weights_only=True)["state_dict"]
    assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _seed_sample_fn(calls=None):
    index_of = {mix_seed(3, r, i): i + 100 * r for r in (2, 3) for i in range(30)}  # the pool's per-sample seeds

    def sample_fn(seeds, labels):  # stands in for a reference: the sample is a function of its seed only
        if calls is not None:
            calls.append(seeds.clone())
        ids = torch.tensor([index_of[int(s)] for s in seeds], dtype=torch.float64)
        return torch.stack([ids, labels.argmax(1).double() if labels.shape[1] else 0 * ids], 1).float()

    return sample_fn


def _single_process_pool():
    whole = PoolFakeSource(size=30, generation_batch_size=7, seed=3, progress=False)
    whole.setup((2,), 3, rank=0, world_size=1)
    whole.refresh(_seed_sample_fn(), round_index=2)
    return whole


def test_pool_is_deterministic_class_balanced_and_cycles():
    whole = _single_process_pool()
    again = _single_process_pool()
    assert torch.equal(whole.x, again.x) and whole.x.shape == (30, 2)
    assert torch.equal(whole.labels.argmax(1), torch.arange(30) % 3)  # class-balanced labels stored with samples
    other_round = PoolFakeSource(size=30, generation_batch_size=7, seed=3, progress=False)
    other_round.setup((2,), 3)
    other_round.refresh(_seed_sample_fn(), round_index=3)
    assert not torch.equal(other_round.x, whole.x)
    # consumption: one pass over the pool visits every sample once, then reshuffles
    seen = torch.cat([whole.next(10, torch.device("cpu")).x for _ in range(3)])
    assert sorted(seen[:, 0].tolist()) == sorted(whole.x[:, 0].tolist())
    assert whole.position == 30


def _pool_rank_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        calls = []
        src = PoolFakeSource(size=30, generation_batch_size=4, seed=3, progress=False)
        src.setup((2,), 3, rank=rank, world_size=world)
        src.refresh(_seed_sample_fn(calls), round_index=2)
        steps = [src.next(4, torch.device("cpu")) for _ in range(10)]  # 80 global positions: crosses 2 epochs
        torch.save(
            {
                "x": src.x,
                "labels": src.labels,
                "generated": torch.cat(calls),
                "steps": [(b.x, b.labels) for b in steps],
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_pool_generation_is_sharded_and_two_ranks_consume_the_single_process_stream(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(
        _pool_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    whole = _single_process_pool()
    seeds = [set(r["generated"].tolist()) for r in ranks]
    assert not seeds[0] & seeds[1] and len(seeds[0]) + len(seeds[1]) == 30  # each sample generated once
    for r in ranks:  # after the all-gather every rank holds the single-process pool, bit for bit
        assert torch.equal(r["x"], whole.x) and torch.equal(r["labels"], whole.labels)
    for step in range(10):  # one process with batch 8 consumes what two ranks with batch 4 do
        single = whole.next(8, torch.device("cpu"))
        for rank in range(2):
            x, labels = ranks[rank]["steps"][step]
            assert torch.equal(x, single.x[rank::2]) and torch.equal(labels, single.labels[rank::2])
        if (8 * step) // 30 == (8 * step + 7) // 30:  # within one pass over the pool, ranks never share a fake
            assert not set(ranks[0]["steps"][step][0][:, 0].tolist()) & set(ranks[1]["steps"][step][0][:, 0].tolist())


def test_online_source_seeded_by_global_position():
    calls = []

    def sample_fn(seeds, labels):
        calls.append(seeds.clone())
        return torch.zeros(len(seeds), 2)

    a, b, single = OnlineFakeSource(seed=5), OnlineFakeSource(seed=5), OnlineFakeSource(seed=5)
    a.setup((2,), 0, rank=0, world_size=2)
    b.setup((2,), 0, rank=1, world_size=2)
    single.setup((2,), 0, rank=0, world_size=1)
    for src in (a, b):
        src.refresh(sample_fn, 0)
        src.next(4, torch.device("cpu"))
    single.refresh(sample_fn, 0)
    single.next(8, torch.device("cpu"))
    assert torch.equal(calls[0], calls[2][0::2]) and torch.equal(calls[1], calls[2][1::2])  # world-size invariant
    assert not set(calls[0].tolist()) & set(calls[1].tolist())  # ranks never share a fake
    a.next(4, torch.device("cpu"))
    assert not set(calls[0].tolist()) & set(calls[3].tolist())  # consecutive steps differ
    c = OnlineFakeSource(seed=5)
    c.setup((2,), 0, rank=0, world_size=2)
    c.load_state_dict({"round": 0, "position": 4})
    c.refresh(sample_fn, 0)  # same round: the position survives (a resumed run)
    c.next(4, torch.device("cpu"))
    assert torch.equal(calls[-1], calls[3])


def test_online_fakes_train(tmp_path, toy_real, mle_ckpt):
    rec = Record()
    data = DDODataModule(toy_real, batch_size=64, fake=OnlineFakeSource(seed=0))
    make_trainer(tmp_path, max_steps=3, callbacks=[rec]).fit(ddo_module(mle_ckpt), data)
    assert len(rec.losses) == 3 and all(math.isfinite(x) for x in rec.losses)


def self_play(tmp_path, rounds=1, kimg_per_round=2.048, eval_every_kimg=1.024):
    return SelfPlay(
        rounds=rounds,
        kimg_per_round=kimg_per_round,
        eval_every_kimg=eval_every_kimg,
        monitor="energy_distance",
        mode="min",
        dirpath=str(tmp_path / "sp"),
    )


@pytest.fixture(scope="module")
def promoted_round(tmp_path_factory, toy_real, mle_ckpt):
    """One whole round (16 steps of 128, evaluations at 0, 1.024 and 2.048 kimg, a promotion), trained once
    for the tests that read what it leaves: (directory, SelfPlay, module, trainer)."""
    tmp_path = tmp_path_factory.mktemp("round")
    sp = self_play(tmp_path, rounds=1)
    module = ddo_module(mle_ckpt, lr=3e-3)
    trainer = make_trainer(tmp_path, max_steps=1000, callbacks=[sp])
    trainer.fit(module, pool_data(toy_real))
    return tmp_path, sp, module, trainer


def test_self_play_promotes_best_ema_and_restarts_optimizer(promoted_round):
    tmp_path, sp, module, trainer = promoted_round
    assert trainer.global_step == 16  # 2048 images / 128 per step, then stop after the last round
    best = torch.load(sp.best_path, weights_only=True)
    for net in (module.reference, module.target, module.ema.model):
        for k, v in net.state_dict().items():
            assert torch.equal(v, best[k]), k
    assert len(trainer.optimizers[0].state) == 0
    ckpt = torch.load(tmp_path / "sp" / "rounds" / "round-1.ckpt", weights_only=True)
    assert ckpt["state_dict"].keys() >= {f"reference.{k}" for k in best}
    for k, v in best.items():
        assert torch.equal(ckpt["state_dict"][f"reference.{k}"], v)
    # the state is in the checkpoint: round, images, best score, and the evaluation history
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("SelfPlay"))
    assert state["round"] == 1 and state["images_in_round"] == 0 and state["best_score"] == sp.best_score
    evals = state["evaluations"]
    assert [h["kimg_in_round"] for h in evals] == [0.0, 1.024, 2.048]  # step 0, every 1.024 kimg, the end
    assert sp.best_score == min(h["metrics"]["energy_distance"] for h in evals)
    summary = sp.summary()
    assert summary["reference"] == evals[0]["metrics"]
    assert summary["rounds"][0]["metrics"]["energy_distance"] == sp.best_score
    assert os.path.isfile(tmp_path / "sp" / "summary.json")


def test_self_play_state_round_trips_and_reads_the_mixed_history_of_older_checkpoints():
    """SelfPlay's checkpoint state loads back as it was saved; a state written before evaluations and
    promotions were kept apart (one ``history`` list, a stored ``images_in_round``) loads into the two lists,
    and its images in the round are counted on from the module's image counter."""
    from types import SimpleNamespace

    evals = [{"round": 0, "kimg_in_round": k, "kimg": k, "metrics": {"mmd": m}} for k, m in ((0.0, 1.0), (0.512, 0.5))]
    promotion = {
        "round": 0,
        "promoted_kimg_in_round": 0.512,
        "improved": True,
        "best_score": 0.5,
        "weights_changed": True,
    }
    later = {"round": 1, "kimg_in_round": 0.256, "kimg": 0.768, "metrics": {"mmd": 0.4}}
    old = {
        "round": 1,
        "images_in_round": 256,
        "best_score": 0.4,
        "best_images": 256,
        "last_round_path": "r1.ckpt",
        "warnings": [],
        "history": [evals[0], evals[1], promotion, later],
    }
    module = SimpleNamespace(images_seen=torch.tensor(768), start_round=lambda r: None)
    sp = SelfPlay(rounds=3, monitor="mmd")
    sp.load_state_dict(old)
    sp._module = module
    sp.on_train_start(SimpleNamespace(should_stop=False), module)
    assert sp.evaluations == [*evals, later] and sp.promotions == [promotion]
    assert (sp.round, sp.images_in_round, sp.round_start_images, sp.best_images) == (1, 256, 512, 256)
    module.images_seen += 128
    back = SelfPlay(rounds=3, monitor="mmd")
    back.load_state_dict(sp.state_dict())
    back._module = module
    assert {k: getattr(back, k) for k in SelfPlay.STATE} == {k: getattr(sp, k) for k in SelfPlay.STATE}
    assert back.images_in_round == sp.state_dict()["images_in_round"] == 384


def test_resume_mid_round_keeps_round_reference_and_fake_position(tmp_path, toy_real, mle_ckpt):
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=20, save_top_k=-1)
    sp = self_play(tmp_path, rounds=3, kimg_per_round=1.536, eval_every_kimg=0.768)
    module = ddo_module(mle_ckpt, lr=3e-3)
    trainer = make_trainer(tmp_path, max_steps=20, enable_checkpointing=True, callbacks=[ckpt_cb, sp])
    data = pool_data(toy_real)
    trainer.fit(module, data)  # 12 steps per round: stops 8 steps into round 1
    assert sp.round == 1 and sp.images_in_round == 8 * 128
    reference = {k: v.clone() for k, v in module.reference.state_dict().items()}
    position = data.fake.position
    path = ckpt_cb.best_model_path or os.path.join(tmp_path, "ckpt", os.listdir(tmp_path / "ckpt")[0])

    class AtResume(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.round, self.images = sp2.round, sp2.images_in_round
            self.reference = {k: v.clone() for k, v in pl_module.reference.state_dict().items()}
            self.position = trainer.datamodule.fake.position

    sp2, probe = self_play(tmp_path, rounds=3, kimg_per_round=1.536, eval_every_kimg=0.768), AtResume()
    module2, data2 = ddo_module(mle_ckpt, lr=3e-3), pool_data(toy_real)
    make_trainer(tmp_path, max_steps=24, callbacks=[sp2, probe]).fit(module2, data2, ckpt_path=path)
    assert (probe.round, probe.images, probe.position) == (1, 8 * 128, position)
    for k, v in reference.items():
        assert torch.equal(probe.reference[k], v), k
    assert sp2.round == 2 and sp2.images_in_round == 0  # the resumed run finished round 1 and promoted


def test_checkpoints_load_weights_only(promoted_round):
    tmp_path = promoted_round[0]
    for name in ("rounds/round-1.ckpt", "best.pt"):
        torch.load(tmp_path / "sp" / name, weights_only=True)  # raises if anything but tensors/containers


def test_self_play_writes_under_the_trainer_root_and_a_finished_run_resumed_rewrites_nothing(
    tmp_path, toy_real, mle_ckpt
):
    """Without ``dirpath`` SelfPlay writes under ``default_root_dir`` (``ddo fit``: the run directory). Fitting
    a finished run again (from its last round checkpoint) takes no step and leaves every file as it was."""
    root = tmp_path / "run"
    sp = SelfPlay(rounds=1, kimg_per_round=1.024, eval_every_kimg=1.024, monitor="energy_distance", mode="min")
    make_trainer(root, max_steps=100, callbacks=[sp]).fit(ddo_module(mle_ckpt), pool_data(toy_real))
    names = ["best.pt", "summary.json", "rounds/round-1.ckpt"]
    before = {n: ((root / n).stat().st_mtime_ns, (root / n).read_bytes()) for n in names}
    sp2 = SelfPlay(rounds=1, kimg_per_round=1.024, eval_every_kimg=1.024, monitor="energy_distance", mode="min")
    trainer = make_trainer(root, max_steps=100, callbacks=[sp2])
    trainer.fit(ddo_module(mle_ckpt), pool_data(toy_real), ckpt_path=str(root / "rounds/round-1.ckpt"))
    assert trainer.global_step == 8 and sp2.round == 1  # restored, nothing trained
    assert {n: ((root / n).stat().st_mtime_ns, (root / n).read_bytes()) for n in names} == before
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == sorted(names + ["curve.png"])


def test_ema_half_life_is_exact():
    """With ramp-up off, a half-life of 1 kimg and 1000-image steps, each update halves the distance
    to the source: after k updates ema = w_src + (w0 − w_src)·2^−k exactly."""
    from ddo_lightning.training import EMA

    src = torch.nn.Linear(3, 2)
    ema = EMA(src, halflife_kimg=1.0, rampup_ratio=None)
    w0 = ema.model.weight.detach().clone()
    with torch.no_grad():
        src.weight.add_(1.0)
    for _ in range(3):
        ema.update(src, batch_images=1000)
    expected = src.weight + (w0 - src.weight) * 0.125
    assert torch.allclose(ema.model.weight, expected, atol=1e-6)
    assert int(ema.images) == 3000
    # ramp-up (EDM): the half-life is capped at ratio × images seen, 0.05 × 512 = 25.6 images after the
    # first 512-image step, so β = 0.5^(512/25.6) = 2^−20 and the average all but copies the source
    ramped = EMA(torch.nn.Linear(3, 2), halflife_kimg=500.0, rampup_ratio=0.05)
    ramped.update(src, batch_images=512)
    assert ramped.beta(512) == pytest.approx(0.5**20)
    assert torch.allclose(ramped.model.weight, src.weight, atol=1e-5)
    ramped.reset(torch.nn.Linear(3, 2))
    assert int(ramped.images) == 0


def test_quantized_pool_matches_real_image_preprocessing():
    """Images: fakes are rounded to the uint8 grid exactly as real images are (docs/method.md §4)."""
    from ddo_lightning.data.images import model_to_uint8, uint8_to_model

    def sample_fn(seeds, labels):
        return (
            torch.rand(len(seeds), 1, 4, 4, generator=torch.Generator().manual_seed(int(seeds[0]) % 2**31)) * 2.4 - 1.2
        )

    pool = PoolFakeSource(size=8, generation_batch_size=8, seed=0, quantize=True, progress=False)
    pool.setup((1, 4, 4), 0)
    pool.refresh(sample_fn, 0)
    assert pool.x.dtype == torch.uint8
    x = pool.next(8, torch.device("cpu")).x
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, uint8_to_model(model_to_uint8(x)))  # already on the grid
    online = OnlineFakeSource(seed=0, quantize=True)
    online.setup((1, 4, 4), 0)
    online.refresh(sample_fn, 0)
    y = online.next(4, torch.device("cpu")).x
    assert torch.equal(y, uint8_to_model(model_to_uint8(y)))


def test_evaluation_reports_how_it_was_measured(promoted_round):
    """Every evaluation carries its sample count, the sampler's NFE (2N−1 for N Heun steps) and its cost."""
    sp = promoted_round[1]
    first = sp.evaluations[0]["metrics"]
    assert first["num_samples"] == 500 and first["nfe"] == 11 and first["eval_seconds"] > 0


# ---- data and network shapes are checked at setup, before the first step --------------------------------
def _images(n=32, channels=1, res=16, classes=None):
    from ddo_lightning.data import ImageDataset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, res, res), dtype=torch.uint8, generator=g)
    labels = None if classes is None else torch.arange(n) % classes
    return ImageDataset(images, labels, conditional=classes is not None)


def _edm_net(res=8, channels=1, label_dim=0):
    from ddo_lightning.networks import EDMPrecond, SongUNet

    return EDMPrecond(
        SongUNet(
            img_resolution=res,
            in_channels=channels,
            out_channels=channels,
            label_dim=label_dim,
            model_channels=8,
            channel_mult=[1],
            num_blocks=1,
            attn_resolutions=[],
            dropout=0.0,
        )
    )


class _NoStep(pl.Callback):
    def on_train_batch_start(self, *args):
        raise AssertionError("a training step started")


def _fit_mle(tmp_path, net, real):
    from ddo_lightning.training import MLEModule

    module = MLEModule(net, sampler=HeunSampler(num_steps=2))
    make_trainer(tmp_path, max_steps=1, callbacks=[_NoStep()]).fit(module, DDODataModule(real, batch_size=8))


@pytest.mark.parametrize(
    "data, net, message",
    [
        (
            dict(res=16),
            dict(res=8),
            "the data does not fit the network EDMPrecond around SongUNet: ImageDataset has 16×16 "
            "images, the network is built for 8×8 (model.init_args.network.init_args.model.init_args.img_resolution)",
        ),
        (
            dict(channels=3, res=8),
            dict(channels=1),
            "ImageDataset has 3-channel images, the network takes 1 channels "
            "(model.init_args.network.init_args.model.init_args.in_channels)",
        ),
        (
            dict(res=8, classes=10),
            dict(label_dim=4),
            "ImageDataset has 10 classes, the network's label_dim is 4 "
            "(model.init_args.network.init_args.model.init_args.label_dim)",
        ),
        (
            dict(res=8),
            dict(label_dim=10),
            "the network is class-conditional (label_dim 10, "
            "model.init_args.network.init_args.model.init_args.label_dim) but ImageDataset has no labels",
        ),
        (dict(res=8, classes=10), dict(), "ImageDataset has 10 classes but the network is unconditional (label_dim 0"),
    ],
)
def test_data_and_network_shapes_checked_at_setup(tmp_path, data, net, message):
    """16×16 images on an 8×8 network, 3 channels on a 1-channel one, 10 classes on a 4-class network, labels
    missing or unexpected: refused at setup, naming both sides, before any training step."""
    from ddo_lightning.training.base import DataNetworkMismatch

    with pytest.raises(DataNetworkMismatch) as err:
        _fit_mle(tmp_path, _edm_net(**net), _images(**data))
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_matching_data_and_network_train(tmp_path):
    """The same path with sizes that fit: the check lets it train."""
    from ddo_lightning.training import MLEModule

    module = MLEModule(_edm_net(res=8, channels=1, label_dim=10), sampler=HeunSampler(num_steps=2))
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(module, DDODataModule(_images(res=8, classes=10), batch_size=8))
    assert trainer.global_step == 1


def test_vector_and_token_sizes_checked():
    """ToyMLP's data_dim against vectors; TokenGPT's length, vocabulary and label_dim against token data."""
    from ddo_lightning.data import MarkovTokenDataset
    from ddo_lightning.networks import TokenGPT
    from ddo_lightning.training.base import DataNetworkMismatch, check_data_fits_network

    with pytest.raises(DataNetworkMismatch, match=r"samples of shape \[3\], the network takes vectors of length 2"):
        check_data_fits_network(tiny_net(), (3,), 0)
    check_data_fits_network(tiny_net(), (2,), 0)
    tokens = MarkovTokenDataset(num_samples=16, num_classes=4, vocab_size=6, length=5)
    check_data_fits_network(
        TokenGPT(vocab_size=6, length=5, label_dim=4), tokens.sample_shape, tokens.label_dim, tokens
    )
    with pytest.raises(
        DataNetworkMismatch,
        match=r"MarkovTokenDataset yields samples of shape \[5\], the network "
        r"takes sequences of length 7 \(model.init_args.network.init_args.length\)",
    ):
        check_data_fits_network(
            TokenGPT(vocab_size=6, length=7, label_dim=4), tokens.sample_shape, tokens.label_dim, tokens
        )
    with pytest.raises(DataNetworkMismatch, match=r"has 6 token values, the network's vocabulary has 5"):
        check_data_fits_network(
            TokenGPT(vocab_size=5, length=5, label_dim=4), tokens.sample_shape, tokens.label_dim, tokens
        )


class NaNFakes(FakeSource):
    """A broken fake source: NaN samples."""

    def next(self, batch_size, device):
        return Samples(
            torch.full((batch_size, 2), float("nan"), device=device), torch.zeros(batch_size, 0, device=device)
        )


@pytest.mark.parametrize(
    "alpha, beta, data, advice",
    [
        # step 0: θ = θ_ref so Δ = 0 exactly; each case makes exactly one part non-finite
        (1e300, 1.0, "pool", "alpha × fake term overflowed"),  # float32(1e300) = inf times ln 2 > 0
        (1.0, 1e300, "pool", "beta·Δ overflowed"),  # inf · 0 = NaN inside the sigmoid, Δ itself finite
        (1.0, 1.0, "nan", "the fake batch holds NaN/inf"),
    ],
)
def test_non_finite_loss_advice_names_the_term(tmp_path, toy_real, mle_ckpt, alpha, beta, data, advice):
    fakes = pool_data(toy_real) if data == "pool" else DDODataModule(toy_real, batch_size=64, fake=NaNFakes())
    with pytest.raises(NonFiniteLossError, match="step 0") as err:
        make_trainer(tmp_path, max_steps=1).fit(ddo_module(mle_ckpt, alpha=alpha, beta=beta), fakes)
    assert advice in str(err.value)


def test_round_whose_weights_never_change_is_reported(tmp_path, toy_real, mle_ckpt):
    """α = 1e30: the gradients' squares overflow float32 in Adam's second moment, every update m/√v is 0,
    so the round ends with the target bit-identical to its reference: said in the summary, and the run,
    in which no round changed anything, does not end as a success."""
    import json

    from ddo_lightning.training import WeightsNeverChangedError

    sp = self_play(tmp_path, rounds=1, kimg_per_round=0.512, eval_every_kimg=0.256)
    module = ddo_module(mle_ckpt, alpha=1e30)
    start = {k: v.clone() for k, v in module.target.state_dict().items()}
    with pytest.raises(
        WeightsNeverChangedError, match=r"round 1: weights never changed \(α=1e\+30, β=1: Adam's update vanished\)"
    ):
        make_trainer(tmp_path, max_steps=100, callbacks=[sp]).fit(module, pool_data(toy_real))
    assert all(torch.equal(v, start[k]) for k, v in module.target.state_dict().items())  # the claim is true
    summary = json.loads((tmp_path / "sp" / "summary.json").read_text())
    assert summary["rounds"][0]["weights_changed"] is False
    assert summary["warnings"][0].startswith("round 1: weights never changed (α=1e+30, β=1")
    assert "overflowed float32 in Adam's second moment" in summary["warnings"][0]


def test_progress_bar_counts_rounds_and_kimg_not_epochs(tmp_path, toy_real, mle_ckpt, capsys):
    from ddo_lightning.training import RoundProgressBar

    sp = self_play(tmp_path, rounds=2, kimg_per_round=0.256, eval_every_kimg=0.256)
    trainer = make_trainer(tmp_path, max_steps=100, enable_progress_bar=True, callbacks=[sp, RoundProgressBar()])
    trainer.fit(ddo_module(mle_ckpt), pool_data(toy_real))
    out = capsys.readouterr().out.replace("\r", "\n")
    last = sp.evaluations[-1]["metrics"]["energy_distance"]  # the last evaluation
    assert "round 1/2 · kimg 0.128/0.256 · last energy_distance " in out
    assert f"round 2/2 · kimg 0.256/0.256 · last energy_distance {last:.4g}" in out
    assert "Epoch" not in out


class _RecordLR(pl.Callback):
    """The learning rate each optimizer step actually uses (read after the module has set it)."""

    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_mle_lr_milestones_follow_the_image_count_across_a_resume(tmp_path, toy_real):
    """Step decay by images seen: 64-image batches are 0.064 kimg per step, so milestones at 0.2 and 0.4 kimg
    (gamma 0.5) give 1e-3 for steps 0-3 (0-0.192 kimg seen), 5e-4 for steps 4-6, 2.5e-4 from step 7. A run
    checkpointed after 5 steps and resumed continues the schedule where it stood (the rate is a function of
    the image count, not of scheduler state)."""
    from ddo_lightning.training import MLEModule

    def module():
        pl.seed_everything(0)
        return MLEModule(tiny_net(), lr=1e-3, lr_milestones_kimg=[0.2, 0.4], lr_gamma=0.5, ema_halflife_kimg=1)

    expected = [1e-3] * 4 + [5e-4] * 3 + [2.5e-4] * 3
    first, second = _RecordLR(), _RecordLR()
    trainer = make_trainer(tmp_path, max_steps=5, callbacks=[first])
    trainer.fit(module(), DDODataModule(toy_real, batch_size=64))
    ckpt = str(tmp_path / "five.ckpt")
    trainer.save_checkpoint(ckpt)
    make_trainer(tmp_path, max_steps=10, callbacks=[second]).fit(
        module(), DDODataModule(toy_real, batch_size=64), ckpt_path=ckpt
    )
    assert first.lrs + second.lrs == pytest.approx(expected, rel=1e-12)
    assert module().lr_at(0.4) == pytest.approx(2.5e-4) and module().lr_at(0.399) == pytest.approx(5e-4)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(lr_milestones_kimg=[10, 5]), "positive and increasing"),
        (dict(lr_milestones_kimg=[0, 5]), "positive and increasing"),
        (dict(lr_milestones_kimg=[5], lr_gamma=0.0), r"lr_gamma must be in \(0, 1\]"),
        (dict(lr_milestones_kimg=[5], lr_gamma=2.0), r"lr_gamma must be in \(0, 1\]"),
    ],
)
def test_mle_lr_milestones_refuse_bad_values(kw, message):
    from ddo_lightning.training import MLEModule

    with pytest.raises(ValueError, match=message):
        MLEModule(tiny_net(), **kw)
