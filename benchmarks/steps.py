"""The training steps the benchmarks time: what ``DDOModule.training_step`` / ``MLEModule.training_step``
do, without Lightning's loop around them (objective → backward → Adam step).

- :class:`DDOStep`: ``objectives.DiffusionDDO`` on B real + B fake (one 2B target forward with grad,
  one 2B reference forward without), backward, Adam.
- :class:`MLEStep`: ``objectives.DenoisingScoreMatching`` (EDM's loss) on the same 2B samples, backward,
  Adam.
"""

from __future__ import annotations

import copy

import torch

from ddo_lightning.objectives import DenoisingScoreMatching, DiffusionDDO
from ddo_lightning.protocols import PairedBatch, Samples

from .presets import Preset


def maybe_compile(net: torch.nn.Module, compile: bool | str) -> torch.nn.Module:
    """``compile``: False (eager), True (torch.compile, inductor) or a torch.compile backend name."""
    if not compile:
        return net
    return torch.compile(net) if compile is True else torch.compile(net, backend=compile)


class _Step:
    """One optimisation step per call, noise seeded by the step count; subclasses set ``opt``, ``step``
    and ``loss(generator)``."""

    opt: torch.optim.Optimizer
    step: int

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self) -> float:
        gen = torch.Generator().manual_seed(self.step)
        self.step += 1
        loss = self.loss(gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


class DDOStep(_Step):
    def __init__(self, preset: Preset, batch: int | None = None, compile: bool | str = False, lr: float = 1e-4):
        B = batch or preset.batch
        self.target = preset.network()
        self.reference = copy.deepcopy(self.target).eval().requires_grad_(False)
        self.target_fn = maybe_compile(self.target, compile)
        self.reference_fn = maybe_compile(self.reference, compile)
        self.target_fn.sigma_data = self.reference_fn.sigma_data = self.target.sigma_data
        self.opt = torch.optim.Adam(self.target.parameters(), lr=lr)
        self.objective = DiffusionDDO(alpha=1.0, beta=0.05)
        labels = preset.labels(B)
        self.batch = PairedBatch(Samples(preset.data(B, 0), labels), Samples(preset.data(B, 1), labels))
        self.samples_per_step = 2 * B
        self.step = 0

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        return self.objective(self.target_fn, self.reference_fn, self.batch, generator=generator).loss


class MLEStep(_Step):
    """EDM's denoising step on 2B samples (the same samples a DDO step with batch B sees)."""

    def __init__(self, preset: Preset, batch: int | None = None, compile: bool | str = False, lr: float = 1e-4):
        B = batch or preset.batch
        self.net = preset.network()
        self.net_fn = maybe_compile(self.net, compile)
        self.net_fn.sigma_data = self.net.sigma_data
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.objective = DenoisingScoreMatching()
        self.batch = Samples(torch.cat([preset.data(B, 0), preset.data(B, 1)]), preset.labels(2 * B))
        self.samples_per_step = 2 * B
        self.step = 0

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        return self.objective(self.net_fn, self.batch, generator=generator).loss


class Forward:
    """One forward of a network on 2B samples, with or without grad (the units of the 4/3 floor)."""

    def __init__(self, net: torch.nn.Module, preset: Preset, n: int, grad: bool, backward: bool = False):
        self.net, self.grad, self.backward = net, grad, backward
        self.x = preset.data(n, 2)
        self.sigma = torch.full((n,), 0.5)
        self.labels = preset.labels(n)

    def __call__(self) -> None:
        with torch.set_grad_enabled(self.grad):
            y = self.net(self.x, self.sigma, self.labels)
            if self.backward:
                y.square().mean().backward()
