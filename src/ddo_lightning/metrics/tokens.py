"""Exact quality of a token model on a source with a known likelihood (``data.MarkovSource``)."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from ..protocols import HasGroundTruth, KnownTokenSource


class MarkovMetrics(Metric):
    """Evaluator for token models trained on a :class:`~ddo_lightning.data.MarkovSource`.

    From the network itself (``measure_network``, exact: every sequence of the space is scored):
    ``kl_data_model`` = KL(source ‖ model) (what maximum likelihood minimises; it punishes missing mass),
    ``kl_model_data`` = KL(model ‖ source) (it punishes mass where the source has little: sample quality)
    and ``kl_sym``, their sum, all in nats per sequence averaged over classes.
    From the evaluation samples (``update``, summed over ranks): ``sample_nll``, the mean of
    −log p_source(x | c) over samples, a Monte-Carlo view of sample quality that needs no model likelihood.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.source: Any = None
        self.add_state("nll_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def connect(self, source: Any) -> None:
        """Take the source from a data module or dataset (``.ground_truth``) or a MarkovSource itself."""
        truth = source.ground_truth if isinstance(source, HasGroundTruth) else source
        if not isinstance(truth, KnownTokenSource):
            raise ValueError("MarkovMetrics needs data with a known token source (e.g. MarkovTokenDataset)")
        self.source = truth

    def _source(self) -> Any:
        if self.source is None:
            raise RuntimeError("MarkovMetrics needs the data's source: call connect(dataset) first")
        return self.source

    def update(self, tokens: torch.Tensor, labels: torch.Tensor) -> None:
        src = self._source()
        lp = src.log_prob(tokens.detach().long().cpu(), labels.detach().argmax(1).cpu())
        self.nll_sum += -lp.sum().to(self.nll_sum.device)
        self.count += len(tokens)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"sample_nll": self.nll_sum / self.count.clamp_min(1)}

    @torch.no_grad()
    def measure_network(self, net: torch.nn.Module) -> dict[str, float]:
        kl = self._source().exact_kl(net)
        return {**kl, "kl_sym": kl["kl_data_model"] + kl["kl_model_data"]}
