"""Declared interfaces: the hooks the framework calls are recognised on the classes that implement them,
the exception family keeps every name where it was and the built-in base it had, and the one torch-file
reader and the one atomic writer behave as documented.

A hook is called only when ``isinstance(obj, Hook)`` holds, so a renamed or mistyped hook would be
silently skipped: these tests pin which classes implement which hook.
"""

import importlib
import pickle

import pytest
import torch

from ddo_lightning import errors, protocols
from ddo_lightning.files import atomic_path, read_tensor_file


def test_networks_say_what_one_sample_is():
    from ddo_lightning.networks import EDMPrecond
    from ddo_lightning.networks.edm2 import Precond
    from ddo_lightning.networks.edm_unets import DhariwalUNet, SongUNet
    from ddo_lightning.networks.token_gpt import TokenGPT
    from ddo_lightning.networks.toy import ToyMLP

    toy = EDMPrecond(ToyMLP(data_dim=2, label_dim=8))
    assert isinstance(toy, protocols.SampleSpec) and (toy.sample_shape, toy.label_dim) == ((2,), 8)
    gpt = TokenGPT(vocab_size=4, length=6, label_dim=3)
    assert isinstance(gpt, protocols.SampleSpec) and (gpt.sample_shape, gpt.label_dim) == ((6,), 3)
    # the image networks' sizes are their constructor arguments: check the properties on the classes
    for cls in (SongUNet, DhariwalUNet, Precond):
        assert isinstance(cls.__dict__["sample_shape"], property), cls
    assert "in_channels" not in Precond.__dict__  # no property added only for ddo sample
    with pytest.raises(ValueError, match="label_dim 5 differs"):
        toy.label_dim = 5  # the EDM factory records label_dim on the wrapper; it must agree with the raw network
    toy.label_dim = 8


def test_data_and_metrics_declare_their_hooks():
    from ddo_lightning.data.tokens import MarkovTokenDataset
    from ddo_lightning.data.toy2d import Toy2DDataset
    from ddo_lightning.metrics.tokens import MarkovMetrics
    from ddo_lightning.metrics.toy2d import MixtureMetrics

    toy = Toy2DDataset(num_samples=16)
    assert isinstance(toy, protocols.RealDataset) and isinstance(toy, protocols.HasGroundTruth)
    assert isinstance(toy.ground_truth, protocols.KnownDensity)
    assert not isinstance(toy.ground_truth, protocols.KnownTokenSource)
    tokens = MarkovTokenDataset(num_samples=16)
    assert isinstance(tokens, protocols.RealDataset) and isinstance(tokens.ground_truth, protocols.KnownTokenSource)
    assert isinstance(MixtureMetrics(), protocols.ConnectsToData)
    assert not isinstance(MixtureMetrics(), protocols.MeasuresNetwork)
    markov = MarkovMetrics()
    assert isinstance(markov, protocols.ConnectsToData) and isinstance(markov, protocols.MeasuresNetwork)
    markov.connect(tokens)  # through the dataset's ground truth
    assert markov.source is tokens.ground_truth
    with pytest.raises(ValueError, match="known token source"):
        MarkovMetrics().connect(toy)  # a mixture is not a token source


def test_fid_decodes_only_latents():
    from ddo_lightning.metrics.fid import FrechetDistance

    class Features(torch.nn.Module):
        feature_dim = 3

        def forward(self, images):
            return images.float().flatten(1)[:, :3]

    class Decoder(torch.nn.Module):
        def forward(self, x):  # latents [B, 1, 2, 2] -> uint8 images: 0 -> 0, 1 -> 255
            return (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)

    assert isinstance(Features(), protocols.FeatureExtractor)
    plain = FrechetDistance(Features())
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    assert isinstance(plain, protocols.DecodesSamples) and plain.images_of(x) is x
    latent = FrechetDistance(Features(), decoder=Decoder())
    z = torch.tensor([0.0, 1.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    want = torch.tensor([-1.0, 1.0, 1.0, -1.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)  # uint8 0/255 -> [-1, 1]
    torch.testing.assert_close(latent.images_of(z), want)
    with pytest.raises(TypeError, match="feature_dim"):
        FrechetDistance(torch.nn.Identity())


def test_objectives_callbacks_and_token_models_declare_their_hooks():
    from ddo_lightning.networks.var.adapter import VARTokenModel
    from ddo_lightning.objectives import DiffusionDDO, TokenDDO
    from ddo_lightning.training.callbacks import SampleGrids, SelfPlay

    ddo = DiffusionDDO(P_std_schedule=[1.0, 0.5])
    assert isinstance(ddo, protocols.RoundAware)
    ddo.start_round(3)
    assert ddo.P_std == 0.5
    assert TokenDDO().alpha == 10.0 and TokenDDO().beta == 0.02  # named in the non-finite-loss advice
    assert isinstance(SampleGrids(), protocols.EvaluationListener)
    assert isinstance(SelfPlay(), protocols.RoundCheckpoints) and SelfPlay().last_round_path is None
    for hook in ("sample_tokens", "prepare_fakes", "num_sampling_steps", "sample_shape", "label_dim"):
        assert hook in vars(VARTokenModel), hook  # VAR's own sampling loop and fake re-encoding


# ---- one exception family ------------------------------------------------------------------------------
# Every name where callers import it from, and the built-in base it had before the family existed.
OLD_HOMES = [
    ("ddo_lightning.launch.config_check", "ConfigError", ValueError),
    ("ddo_lightning.commands", "CommandError", ValueError),
    ("ddo_lightning.run_dir", "RunDirError", ValueError),
    ("ddo_lightning.training.base", "DataNetworkMismatch", ValueError),
    ("ddo_lightning.training", "CorruptCheckpoint", ValueError),
    ("ddo_lightning.checkpoints", "ArchitectureMismatch", ValueError),
    ("ddo_lightning.checkpoints", "RecordedNetworkMismatch", ValueError),
    ("ddo_lightning.networks.var.build", "CheckpointMismatch", ValueError),
    ("ddo_lightning.checkpoints", "NvidiaPickleError", ValueError),
    ("ddo_lightning.checkpoints", "UnsafeGlobalError", pickle.UnpicklingError),
    ("ddo_lightning.fetch", "FetchError", RuntimeError),
    ("ddo_lightning.fetch.cache", "MissingFile", FileNotFoundError),
    ("ddo_lightning.files", "WriteError", OSError),
    ("ddo_lightning.training.module", "NonFiniteLossError", FloatingPointError),
    ("ddo_lightning.training.callbacks", "WeightsNeverChangedError", RuntimeError),
]


@pytest.mark.parametrize(("module", "name", "builtin"), OLD_HOMES, ids=[n for _, n, _ in OLD_HOMES])
def test_every_error_is_a_ddo_error_where_it_always_was(module, name, builtin):
    cls = getattr(importlib.import_module(module), name)
    assert cls is getattr(errors, name)
    assert issubclass(cls, errors.DDOError) and issubclass(cls, builtin)


def test_checkpoint_errors_form_one_branch():
    for name in (
        "CorruptCheckpoint",
        "ArchitectureMismatch",
        "RecordedNetworkMismatch",
        "CheckpointMismatch",
        "NvidiaPickleError",
        "UnsafeGlobalError",
    ):
        assert issubclass(getattr(errors, name), errors.CheckpointError), name
    assert issubclass(errors.UnsafeGlobalError, errors.RefusedGlobal)


# ---- one torch-file reader, one atomic writer ------------------------------------------------------------
class Foreign:
    pass


def test_read_tensor_file_names_the_file(tmp_path):
    good = tmp_path / "w.pt"
    torch.save({"a": torch.arange(3)}, good)
    assert torch.equal(read_tensor_file(good)["a"], torch.arange(3))
    assert torch.equal(read_tensor_file(good, mmap=True)["a"], torch.arange(3))
    with pytest.raises(FileNotFoundError, match="token file not found: .*nope.pt"):
        read_tensor_file(tmp_path / "nope.pt", what="token file")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:40])  # a truncated zip
    with pytest.raises(
        errors.CorruptCheckpoint, match=r"checkpoint .*cut\.pt cannot be read \(truncated or corrupt\?\)"
    ):
        read_tensor_file(cut)

    foreign = tmp_path / "foreign.pt"
    torch.save({"x": Foreign()}, foreign)  # an object of a class: weights_only refuses it, nothing executes
    with pytest.raises(errors.CorruptCheckpoint, match="foreign.pt"):
        read_tensor_file(foreign)


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    out = tmp_path / "stats.npz"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(out, suffix=".npz") as tmp:
        assert tmp.endswith(".npz") and tmp != str(out)
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("boom")
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["stats.npz"]
