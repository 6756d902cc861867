"""Base classes that name what a config may put where: ``Network`` for ``model.init_args.network`` (what
DDOModule and MLEModule train) and ``Backbone`` for ``network.init_args.model`` (the raw architecture a
preconditioner wraps).

They add nothing to ``nn.Module``: they are the declared types of those arguments, so jsonargparse
accepts exactly these classes there and ``ddo fit --model.network.help CLASS`` / the help's lists of
subclasses name the project's networks instead of every ``torch.nn`` class. The behaviour a network must
have is the protocols' (``ddo_lightning.protocols``: a denoiser or a token model).
"""

from __future__ import annotations

from torch import nn


class Network(nn.Module):
    """A network DDO trains: a diffusion denoiser ``D(x, sigma, labels)`` (a preconditioner such as
    ``EDMPrecond`` around a ``Backbone``, or ``EDM2Precond``) or a next-token model (``TokenGPT``,
    ``VARNetwork``)."""


class Backbone(nn.Module):
    """A raw architecture a preconditioner wraps (``SongUNet``, ``DhariwalUNet``, ``ToyMLP``): called with the
    scaled input, the noise labels and the class labels, it returns the raw output ``F``."""
