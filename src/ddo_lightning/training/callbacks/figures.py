"""Figures comparing the reference at fit start with the final reference on the same seeds:
a scatter plot for 2-D data, an image grid for images. When the fit ran ``SelfPlay``'s MLE control to its
end, the scatter plot and the image grid add the control's selected model, on the same seeds.

Each figure goes to its ``path``, by default ``samples.png`` in the trainer's ``default_root_dir`` (which
``ddo fit`` sets to the run directory); a fit that takes no training step (a finished run resumed) does
not redraw it."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch

from ...files import atomic_path
from ...protocols import HasGroundTruth, KnownTokenSource
from ...samplers import mix_seed
from ..datamodule import balanced_labels
from ..module import DDOModule
from ..sharding import on_rank_zero
from .evaluation import image_grid
from .self_play import SelfPlay


class _StartVersusEnd(pl.Callback):
    """Samples the reference at fit start and at fit end with the same seeds; subclasses plot them."""

    def __init__(self, path: str | None, num_samples: int, seed: int):
        self.path, self.num_samples, self.seed = path, num_samples, seed
        self._start: torch.Tensor | None = None  # rank 0's samples of the reference at fit start
        self._start_step: int | None = None  # None: training never started in this fit

    def _draw(self, pl_module: Any, net: Any = None) -> torch.Tensor:
        idx = torch.arange(self.num_samples)
        seeds = torch.tensor([mix_seed(self.seed, int(i), 4) for i in idx])
        labels = balanced_labels(idx, pl_module.label_dim)
        return pl_module.sample(pl_module.reference if net is None else net, seeds, labels).cpu()

    @staticmethod
    def _control_net(trainer: pl.Trainer, pl_module: Any) -> Any:
        """The MLE control's selected model when the control finished (SelfPlay loads it into the EMA at
        its end), else None."""
        done = any(isinstance(c, SelfPlay) and c.control_record is not None for c in trainer.callbacks)
        return pl_module.ema.model if done else None

    def _check(self, pl_module: Any) -> None:
        pass

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not isinstance(pl_module, DDOModule):
            raise TypeError(
                f"{type(self).__name__} compares a DDO run's reference at start and end: it needs a DDOModule, "
                f"got {type(pl_module).__name__}"
            )
        self.path = self.path or os.path.join(trainer.default_root_dir, "samples.png")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(pl_module)
        self._start_step = trainer.global_step
        self._start = on_rank_zero(pl_module.reference, trainer.is_global_zero, lambda: self._draw(pl_module))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start_step is None or trainer.global_step == self._start_step:
            return  # nothing trained in this fit: the figure on disk stays as it is
        end = on_rank_zero(pl_module.reference, trainer.is_global_zero, lambda: self._draw(pl_module))
        net = self._control_net(trainer, pl_module)
        control = None if net is None else on_rank_zero(net, trainer.is_global_zero, lambda: self._draw(pl_module, net))
        if end is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = self._plot(plt, trainer, pl_module, self._start, end, control)
        try:
            with atomic_path(self.path, suffix=".png") as tmp:
                fig.savefig(tmp, dpi=110)
        finally:
            plt.close(fig)

    def _plot(
        self,
        plt: Any,
        trainer: pl.Trainer,
        pl_module: Any,
        start: torch.Tensor,
        end: torch.Tensor,
        control: torch.Tensor | None,
    ) -> Any:
        raise NotImplementedError


class ScatterFigure(_StartVersusEnd):
    """Data, the starting reference (MLE), the final reference and (when it ran) the MLE control's model as
    2-D scatter plots.

    Args:
        path: output PNG (default: ``samples.png`` in the trainer's ``default_root_dir``).
        num_samples: points per panel.
        seed: seed of the plotted samples (the same for both models).
    """

    def __init__(self, path: str | None = None, num_samples: int = 5000, seed: int = 2024):
        super().__init__(path, num_samples, seed)

    def _check(self, pl_module: Any) -> None:
        if pl_module.sample_shape != (2,):
            raise ValueError(f"ScatterFigure plots 2-D data, got samples of shape {pl_module.sample_shape}")

    def _plot(self, plt, trainer, pl_module, start, end, control):
        real = trainer.datamodule.real.x[: self.num_samples]
        panels = [
            ("data", real),
            ("reference at start (MLE)", start),
            (f"after DDO (round {pl_module.round_index} reference)", end),
        ] + ([("MLE control (same real images)", control)] if control is not None else [])
        lim = float(real.abs().max()) * 1.3
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.6), sharex=True, sharey=True)
        for ax, (title, pts) in zip(axes, panels):
            ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.35, linewidths=0)
            ax.set_title(title)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
        fig.tight_layout()
        return fig


class ImageGridFigure(_StartVersusEnd):
    """Image grids of the starting reference (MLE), the final reference and (when it ran) the MLE control's
    model, on the same seeds and class-balanced labels (one column per class for conditional models).

    Args:
        path: output PNG (default: ``samples.png`` in the trainer's ``default_root_dir``).
        num_samples: images per grid.
        columns: images per row.
        seed: seed of the plotted samples (the same for both models).
    """

    def __init__(self, path: str | None = None, num_samples: int = 100, columns: int = 10, seed: int = 2024):
        super().__init__(path, num_samples, seed)
        self.columns = columns

    def _plot(self, plt, trainer, pl_module, start, end, control):
        panels = [
            ("reference at start (MLE)", start),
            (f"after DDO (round {pl_module.round_index} reference)", end),
        ] + ([("MLE control (same real images)", control)] if control is not None else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.4))
        for ax, (title, x) in zip(axes, panels):
            g = image_grid(x, self.columns)
            ax.imshow(
                g.squeeze(-1) if g.shape[-1] == 1 else g,
                cmap="gray" if g.shape[-1] == 1 else None,
                interpolation="nearest",
            )
            ax.set_title(title)
            ax.axis("off")
        fig.tight_layout()
        return fig


class TokenFigure(_StartVersusEnd):
    """For token data with a known source (``MarkovTokenDataset``): the distribution of the source's
    log-likelihood log p(x | c) of real sequences, of the starting reference's (MLE) samples and of the
    final reference's samples (same seeds), and the exact KL divergences in both directions of the two
    references.

    Args:
        path: output PNG (default: ``samples.png`` in the trainer's ``default_root_dir``).
        num_samples: sequences per histogram.
        seed: seed of the plotted samples (the same for both models).
    """

    def __init__(self, path: str | None = None, num_samples: int = 4000, seed: int = 2024):
        super().__init__(path, num_samples, seed)
        self._kl_start: dict[str, float] | None = None

    def _truth(self, trainer: pl.Trainer) -> Any:
        dm = trainer.datamodule
        truth = dm.ground_truth if isinstance(dm, HasGroundTruth) else None
        if not isinstance(truth, KnownTokenSource):
            raise ValueError("TokenFigure needs token data with a known source (e.g. MarkovTokenDataset)")
        return truth

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._kl_start = self._truth(trainer).exact_kl(pl_module.reference)
        super().on_train_start(trainer, pl_module)

    def _plot(self, plt, trainer, pl_module, start, end, control):  # noqa: ARG002 (the control's KLs: summary.json)
        truth = self._truth(trainer)
        idx = torch.arange(self.num_samples)
        classes = idx % pl_module.label_dim if pl_module.label_dim else torch.zeros_like(idx)
        real = trainer.datamodule.real
        n = min(self.num_samples, len(real))
        rows = [real[i] for i in range(n)]
        real_x = torch.stack([r.x for r in rows])
        real_c = (
            torch.stack([r.labels for r in rows]).argmax(1) if pl_module.label_dim else torch.zeros(n, dtype=torch.long)
        )
        series = [
            ("data", truth.log_prob(real_x, real_c)),
            ("reference at start (MLE)", truth.log_prob(start, classes)),
            (f"after DDO (round {pl_module.round_index} reference)", truth.log_prob(end, classes)),
        ]
        kl_end = truth.exact_kl(pl_module.reference)
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
        lo = min(float(s.min()) for _, s in series)
        bins = torch.linspace(lo, 0, 41).tolist()
        for name, lp in series:
            ax.hist(lp.numpy(), bins=bins, histtype="step", linewidth=1.5, density=True, label=name)
        ax.set_xlabel("log p_source(x | c) of a sequence (nats)")
        ax.set_ylabel("density")
        ax.set_title("source log-likelihood of sequences")
        ax.legend(fontsize=8)
        names = [("kl_data_model", "KL(data‖model)"), ("kl_model_data", "KL(model‖data)")]
        pos = torch.arange(len(names)).float()
        start_kl = self._kl_start or {}
        bx.bar((pos - 0.2).tolist(), [start_kl.get(k, float("nan")) for k, _ in names], 0.4, label="MLE reference")
        bx.bar((pos + 0.2).tolist(), [kl_end[k] for k, _ in names], 0.4, label="after DDO")
        bx.set_xticks(pos.tolist(), [t for _, t in names])
        bx.set_ylabel("nats per sequence (exact)")
        bx.set_title("exact KL, all sequences enumerated")
        bx.legend(fontsize=8)
        fig.tight_layout()
        return fig
