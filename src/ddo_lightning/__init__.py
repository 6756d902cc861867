"""ddo_lightning: Direct Discriminative Optimization (Zheng et al., ICML 2025) on PyTorch Lightning.

Layers (imports point down only; ``tests/test_layers.py`` enforces it)::

    cli ─► training ─► {objectives, samplers, networks, data, metrics, checkpoints}
        ─► {losses, likelihood, schedules} ─► protocols ─► torch

Everything below ``training`` is Lightning-free: pure functions and modules on tensors.
"""

__version__ = "0.1.0"
