"""Imports point down only (docs/architecture.md): a module may import modules of lower layers (or its own
subpackage); only training/ and cli.py import lightning or wandb; only training/ touches torch.distributed."""

import ast
import pathlib
import shutil

PKG = pathlib.Path(__file__).resolve().parents[1] / "src" / "ddo_lightning"
# checkpoints/ sits above networks/: importing a released checkpoint builds our network from its
# recorded constructor arguments (docs/architecture.md, "Layers").
RANK = {
    "protocols": 0,
    "errors": 0,
    "files": 1,
    "unpickle": 1,
    "pixels": 1,
    "schedules": 1,
    "losses": 1,
    "likelihood": 2,
    "objectives": 3,
    "samplers": 2,
    "networks": 3,
    "data": 3,
    "metrics": 3,
    "checkpoints": 4,
    "training": 5,
    "fetch": 5,
    "config_files": 5,
    "commands": 6,
    "cli": 7,
}
# The command-line front is one layer in several modules: cli.py, its help and run-directory support, and
# `ddo slurm` (launch/), whose config check builds the run exactly as `ddo fit` would, through cli.py.
GROUP = {"cli_help": "cli", "run_dir": "cli", "launch": "cli"}


def imported_names(path: pathlib.Path, root: pathlib.Path):
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):  # imports under `if TYPE_CHECKING:` are annotations, not dependencies
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            skip |= {id(n) for n in ast.walk(node)}
    here = list(path.relative_to(root).with_suffix("").parts)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module or ""
            else:
                yield ".".join(["ddo_lightning", *here[: -node.level], *([node.module] if node.module else [])])


def violations(root: pathlib.Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel == pathlib.Path("__init__.py"):
            continue
        own = GROUP.get(rel.with_suffix("").parts[0], rel.with_suffix("").parts[0])
        if own not in RANK:
            bad.append(f"{rel}: module not placed in a layer")
            continue
        for name in imported_names(path, root):
            parts = name.split(".")
            if len(parts) > 1:
                parts[1] = GROUP.get(parts[1], parts[1])
            if (
                parts[0] == "ddo_lightning"
                and len(parts) > 1
                and parts[1] != own
                and RANK.get(parts[1], 99) >= RANK[own]
            ):
                bad.append(f"{rel} imports {name} (not a lower layer)")
            if parts[0] in ("lightning", "pytorch_lightning", "wandb") and own not in ("training", "cli"):
                bad.append(f"{rel} imports {name} (only training/ and cli.py may)")
            if name.startswith("torch.distributed") and own != "training":
                bad.append(f"{rel} imports {name} (only training/ may)")
    return bad


def test_imports_point_down():
    assert violations(PKG) == []


def test_checker_reports_an_upward_import(tmp_path):
    copy = tmp_path / "ddo_lightning"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "losses.py", "a") as f:
        f.write("\nfrom .training import DDOModule\nimport lightning\n")
    assert violations(copy) == [
        "losses.py imports ddo_lightning.training (not a lower layer)",
        "losses.py imports lightning (only training/ and cli.py may)",
    ]
