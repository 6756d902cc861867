"""k-diffusion's sampler module (``k_diffusion.sampling``) without the package's ``__init__``.

k-diffusion (PyPI ``k-diffusion``) is the peer implementation of EDM's Heun sampler the sampler
benchmark compares against. Installing it normally is impossible beside a CPU-only torch: it depends
on torchvision (and more), and PyPI's torchvision for torch 2.13.0 is a CUDA build that fails to import
(docs/install.md) while an unpinned one replaces torch. So the benchmark extra is installed with
``pip install --no-deps`` (``make bench`` does it, see pyproject's ``bench`` extra):
k-diffusion, torchdiffeq and torchsde (imported at the top of sampling.py) and trampoline (torchsde's).

``k_diffusion/__init__.py`` imports every submodule, and ``k_diffusion/utils.py`` imports torchvision at
its top, so neither is executed. This module registers an empty ``k_diffusion`` package (its
``__path__`` points at the installed files) and a ``k_diffusion.utils`` holding only the functions
sampling.py uses (``utils.<name>`` in its source: ``append_dims`` in 0.1.1), compiled from utils.py's
own source text, then imports the unmodified ``k_diffusion/sampling.py``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pathlib
import sys
import types


def package_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("k_diffusion")  # finds the package without executing __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "k-diffusion is not installed: `make bench` installs it (pip install --no-deps k-diffusion "
            "torchdiffeq torchsde trampoline)"
        )
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def load_sampling() -> types.ModuleType:
    """``k_diffusion.sampling``, imported without ``k_diffusion/__init__.py`` and torchvision."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    root = package_dir()
    if "k_diffusion" not in sys.modules:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = [str(root)]
        pkg.__file__ = str(root / "__init__.py")
        sys.modules["k_diffusion"] = pkg
    pkg = sys.modules["k_diffusion"]
    utils = types.ModuleType("k_diffusion.utils")
    utils.__file__ = str(root / "utils.py")
    used = {
        n.attr
        for n in ast.walk(ast.parse((root / "sampling.py").read_text()))
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "utils"
    }
    tree = ast.parse((root / "utils.py").read_text())
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in used]
    if {n.name for n in keep} != used:
        raise ImportError(f"k_diffusion/utils.py lacks {sorted(used)}: unsupported k-diffusion version")
    import torch

    utils.torch = torch
    exec(compile(ast.Module(body=keep, type_ignores=[]), utils.__file__, "exec"), utils.__dict__)
    sys.modules["k_diffusion.utils"] = utils
    pkg.utils = utils
    sampling = importlib.import_module("k_diffusion.sampling")
    pkg.sampling = sampling
    return sampling


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v("k-diffusion")
    except PackageNotFoundError:
        return "unknown"
