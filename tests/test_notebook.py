"""notebooks/toy2d.ipynb runs top to bottom with the package API (so it cannot rot)."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NB = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "toy2d.ipynb"


@pytest.mark.slow
def test_toy2d_notebook_executes(tmp_path):
    nb = nbformat.read(NB, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "precision:" in outputs and "round 2" in outputs
