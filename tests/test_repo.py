"""Repository hygiene: notebooks in sync with their .py twins and stripped; ruff clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_numbered_notebook_is_there():
    names = [p.stem[:2] for p in NOTEBOOKS]
    assert names == ["00", "01", "02", "03", "04", "05", "06"], names


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_py_twin_and_has_no_outputs(nb: Path):
    import jupytext

    twin = nb.with_suffix(".py")
    assert twin.exists(), f"{nb.name} has no jupytext twin {twin.name}"
    cells_nb = jupytext.read(nb).cells
    cells_py = jupytext.read(twin).cells
    src = [(c.cell_type, c.source.strip()) for c in cells_nb]
    assert src == [(c.cell_type, c.source.strip()) for c in cells_py], (
        f"{nb.name} and {twin.name} differ: run `jupytext --sync {twin}`"
    )
    raw = json.loads(nb.read_text())
    assert not any(c.get("outputs") for c in raw["cells"]), f"{nb.name} has outputs committed"
    assert not any(c.get("execution_count") for c in raw["cells"] if c["cell_type"] == "code")
    text = nb.read_text()
    assert "/work/" not in text and "/root/" not in text, f"{nb.name} holds a machine path"


def test_ruff_clean():
    res = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stdout[-3000:]


def test_notebook_extras_include_ipywidgets():
    """tqdm.auto draws its bars as widgets in a notebook; without ipywidgets every notebook
    shows a TqdmWarning ("IProgress not found")."""
    import re

    test_extra = re.search(r"^test = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    assert test_extra and '"ipywidgets' in test_extra.group(1)  # tomllib: Python >= 3.11 only
    assert "ipywidgets" in (ROOT / "requirements-test.txt").read_text()


def test_preprocess_and_demo_data_start_without_torch():
    """`preprocess` and `make-demo-data` read labels and DICOMs only: importing torch would cost
    2-6 s before the first file is read."""
    code = (
        "import sys; import pneumolib.cli, pneumolib.data.preprocess, pneumolib.data.synth;"
        "import pneumolib.data.labels, pneumolib.data.explore, pneumolib.data.intensities;"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
