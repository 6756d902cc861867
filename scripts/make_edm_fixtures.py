"""Regenerate tests/data/edm_reference.json and tests/data/edm_parity.pt from the ORIGINAL NVlabs/edm code
(provenance of tests/test_edm_networks.py; not needed to run the tests).

    git clone https://github.com/NVlabs/edm /tmp/edm
    git -C /tmp/edm checkout 008a4e5316c8e3bfe61a62f874bddba254295afb
    python scripts/make_edm_fixtures.py --upstream /tmp/edm --out tests/data
    # from an export without .git (e.g. `git archive 008a4e5 | tar -x -C /tmp/edm`): add --commit 008a4e5...

Nothing of EDM is copied into this repository: the original ``training/networks.py`` is imported from the
checkout at run time. The configurations, the deterministic weight recipe and the inputs are read from
tests/test_edm_networks.py itself (``KEY_CONFIGS``, ``PARITY_CONFIGS``, ``CONV_CONFIGS``,
``deterministic_fill``, ``parity_inputs``, ``conv_input``, ``init_stats``, ``pattern``), so the fixtures and the
tests cannot drift apart. What is written:

* ``edm_reference.json``: for every ``KEY_CONFIGS`` entry, EDM's class name, constructor kwargs, parameter
  count and ``state_dict()`` names and shapes in order (built on ``torch.device('meta')``, iDDPM on the CPU as it
  reads its own ``u`` table: facts only);
* ``edm_parity.pt``: for every ``PARITY_CONFIGS`` entry, (sum, sum of squares) of each state_dict tensor after
  ``torch.manual_seed(0)`` + construction (``init_stats``), and, after ``deterministic_fill`` in eval mode,
  the output for ``parity_inputs``, the gradient of ``(out · cotangent).sum()`` with respect to the input and,
  per parameter in ``named_parameters()`` order, (Σ g², Σ g · pattern(n, 7)); iDDPM's ``u`` table (M = 1000)
  and its (sigma_min, sigma_max); the outputs of single ``Conv2d`` layers (``CONV_CONFIGS``) on ``conv_input``.

The upstream checkout imports as it is (``torch_utils``, ``dnnlib``); where ``dnnlib``'s own imports
(``requests``, ``distutils``) are missing in the running Python they are stubbed in ``sys.modules`` at run time
(the network code does not use them). Run it in a throw-away process: it puts the checkout on ``sys.path``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_module(name: str, path: Path) -> types.ModuleType:
    """Import a file as a module (the test module that holds the recipe; its folder goes on sys.path, as
    pytest puts it, for the test modules it imports)."""
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upstream_commit(repo: Path, commit: str | None) -> str:
    """The checkout's commit (git), or ``commit`` for an export without .git."""
    if commit:
        return commit
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def import_upstream(repo: Path, module: str) -> types.ModuleType:
    """``module`` from the upstream checkout; stubs for dnnlib's imports that this Python lacks."""
    sys.path.insert(0, str(repo))
    for missing, attrs in (
        ("requests", {}),
        ("distutils.util", {"strtobool": lambda s: s.lower() in ("1", "y", "yes", "true", "on")}),
    ):
        try:
            importlib.import_module(missing)
        except ImportError:
            sys.modules[missing] = types.SimpleNamespace(**attrs)
    return importlib.import_module(module)


def reference_json(nets: types.ModuleType, recipe: types.ModuleType, source: str) -> str:
    """``edm_reference.json``: names, shapes and counts of EDM's networks for ``KEY_CONFIGS``."""
    out = {}
    for name, (class_name, kwargs) in recipe.KEY_CONFIGS.items():
        try:
            with torch.device("meta"):
                net = getattr(nets, class_name)(**kwargs)
        except RuntimeError:  # iDDPMPrecond reads values of its u table: build it for real
            net = getattr(nets, class_name)(**kwargs)
        out[name] = {
            "class_name": class_name,
            "init_kwargs": kwargs,
            "num_params": sum(p.numel() for p in net.parameters()),
            "tensors": [[k, list(v.shape)] for k, v in net.state_dict().items()],
        }
    # One tensor a line, like the committed file: diffs of a regenerated file stay readable.
    lines = [f'"source": {json.dumps(source)},', '"state_dicts": {']
    for i, (name, entry) in enumerate(out.items()):
        head = json.dumps({k: v for k, v in entry.items() if k != "tensors"})[:-1]
        rows = ",\n".join(json.dumps(t, separators=(",", ":")) for t in entry["tensors"])
        lines.append(f'{json.dumps(name)}: {head}, "tensors": [\n{rows}]}}' + ("," if i < len(out) - 1 else ""))
    return "{\n" + "\n".join(lines) + "\n}}\n"


def network_parity(nets: types.ModuleType, recipe: types.ModuleType, class_name: str, kwargs: dict) -> dict:
    """Seeded-init statistics, then output, input gradient and parameter-gradient statistics for the
    deterministic weights and inputs of tests/test_edm_networks.py."""
    torch.manual_seed(0)
    net = getattr(nets, class_name)(**kwargs)
    stats = recipe.init_stats(net)
    net.eval()  # dropout off, as the test runs ours
    recipe.deterministic_fill(net)
    x, sigma, labels, aug, cot = recipe.parity_inputs(kwargs["label_dim"], bool(kwargs.get("augment_dim")))
    x.requires_grad_(True)
    extra = {} if aug is None else {"augment_labels": aug}
    out = net(x, sigma, labels, **extra)
    (out * cot).sum().backward()
    names, grad_stats = [], []
    for k, p in net.named_parameters():
        g = torch.zeros_like(p, dtype=torch.float64) if p.grad is None else p.grad.double()
        names.append(k)
        grad_stats.append(
            torch.stack([g.square().sum(), (g * recipe.pattern(p.numel(), 7).double().reshape(p.shape)).sum()])
        )
    return {
        "init_stats": stats,
        "out": out.detach(),
        "x_grad": x.grad.detach(),
        "param_names": names,
        "param_grad_stats": torch.stack(grad_stats),
    }


def parity_record(nets: types.ModuleType, recipe: types.ModuleType) -> dict:
    """``edm_parity.pt``."""
    record = {name: network_parity(nets, recipe, cls, kw) for name, (cls, kw) in recipe.PARITY_CONFIGS.items()}
    class_name, kwargs = recipe.PARITY_CONFIGS["adm_iddpm"]
    iddpm = getattr(nets, class_name)(**kwargs)  # u and the sigma range depend on C_1, C_2 and M only
    record["iddpm_u"] = iddpm.u.detach().clone()
    record["iddpm_sigma_range"] = torch.tensor([iddpm.sigma_min, iddpm.sigma_max], dtype=torch.float64)
    record["conv"] = {}
    for name, kwargs in recipe.CONV_CONFIGS.items():
        layer = nets.Conv2d(**kwargs)
        recipe.deterministic_fill(layer)
        with torch.no_grad():
            record["conv"][name] = layer(recipe.conv_input())
    return record


def fixture_parser(doc: str, upstream: str) -> argparse.ArgumentParser:
    """The command line of a fixture script: ``--upstream`` (a checkout of ``upstream``), ``--out`` and
    ``--commit``; the description is the first paragraph of ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--upstream", type=Path, required=True, help=f"checkout of {upstream}")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data", help="where the two files go")
    parser.add_argument("--commit", help="upstream commit when --upstream is an export without .git")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = fixture_parser(__doc__, "github.com/NVlabs/edm (008a4e5)").parse_args(argv)
    commit = upstream_commit(args.upstream, args.commit)
    recipe = load_module("edm_fixture_recipe", ROOT / "tests" / "test_edm_networks.py")
    nets = import_upstream(args.upstream.resolve(), "training.networks")
    source = f"NVlabs/edm training/networks.py @ {commit}, torch {torch.__version__}; names/shapes/counts only"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "edm_reference.json").write_text(reference_json(nets, recipe, source))
    torch.save(parity_record(nets, recipe), args.out / "edm_parity.pt")
    print(f"wrote {args.out / 'edm_reference.json'} and {args.out / 'edm_parity.pt'} from NVlabs/edm@{commit}")


if __name__ == "__main__":
    main()
