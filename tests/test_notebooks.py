"""The notebooks run top to bottom (nbclient, the venv's own python3 kernel) so they never rot."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # kernel "python3" launches `python -m ipykernel_launcher`; jupyter_client swaps a bare `python` for
    # sys.executable, so the kernel is this venv's interpreter (no kernelspec install needed)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env={"OMP_NUM_THREADS": "1"} | dict(__import__("os").environ))
    return nb


def _text(nb) -> str:
    """Printed text and displayed markdown of every code cell."""
    return "\n".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_targets_notebook_runs_and_round_trips():
    nb = _run("01_targets.ipynb")
    text = _text(nb)
    assert "heatmaps         (18, 64, 112)" in text   # K+1 maps at stride 4 of the 256 x 448 padded input
    assert "decoded" in text and _images(nb) == 2
    # the crowd cell: DEKR's rules lose people of a generated dense crowd, the default rules nobody
    dekr = re.search(r"DEKR rules: lost (\d+) of (\d+)", text)
    assert dekr and int(dekr.group(1)) > 0 and "default rules: lost 0 of" in text


def test_ablations_notebook_reports_fixture_sweep_and_plots():
    nb = _run("02_ablations.ipynb")
    text = _text(nb)
    assert "FIXTURE" in text
    # bapose.report's table: width x size rows (seeds folded, n=2), the best marked, the failed job listed
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| 2 |" in line]
    assert len(rows) == 4 and sum(line.startswith("| ★ |") for line in rows) == 1
    assert "| model | data.input_size | AP |" in text and "CUDA out of memory (fixture)" in text
    assert "best: model=bapose_w48, data.input_size=640: val/AP 0.7000 (n=2)" in text and _images(nb) == 1


def test_kernel_is_this_interpreter():
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", "python3", sys.executable)
