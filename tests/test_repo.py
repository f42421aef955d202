"""Repository hygiene: notebooks in sync with their .py twins and stripped; ruff and mypy clean."""

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
    assert names == ["00", "01", "02", "03", "04", "05", "06", "07"], names


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


def test_type_checker_is_clean_on_the_package():
    """mypy with pyproject's [tool.mypy] (default strictness). Its cache (.mypy_cache/, ignored
    by git) makes a re-run take seconds; the first run reads torch's stubs (~30 s)."""
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e .[test]")
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "pneumolib"], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]


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


# --- the package's shape: stages import only earlier stages, no cycles -------------------------

# Folders bottom to top: each imports only folders below it. `base` is the torch-free layer
# (errors, files, config, progress, plots, number formats, run-folder names, the metrics the
# trainer scores val with); `core` is the torch layer over `data`.
STAGES = [
    "base", "data", "core", "train", "evaluate", "cam", "detect", "tune", "predict", "submit",
    "course", "cli",
]  # fmt: skip
BASE: set[str] = set()  # modules exempt from the rule: none


def _module_imports() -> dict[str, set[str]]:
    """pneumolib module -> the pneumolib modules it imports at module level (not in functions)."""
    import ast

    pkg = ROOT / "pneumolib"
    names = {
        ".".join(p.relative_to(pkg).with_suffix("").parts).removesuffix(".__init__")
        for p in pkg.rglob("*.py")
    }
    graph = {}
    for name in names:
        path = pkg / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = pkg / name.replace(".", "/") / "__init__.py"
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pneumolib"):
                base = node.module.removeprefix("pneumolib").lstrip(".")
                for alias in node.names:
                    sub = f"{base}.{alias.name}".lstrip(".")
                    found.add(sub if sub in names else base)
        graph[name] = found - {""}
    return graph


def _rank(module: str) -> int:
    if module in BASE or module in ("__init__", "__main__"):
        return -1
    top = module.split(".")[0]
    return STAGES.index(top) if top in STAGES else len(STAGES)


def test_stages_import_only_earlier_stages_and_no_module_imports_in_a_cycle():
    graph = _module_imports()
    late = [
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if _rank(d) > _rank(m) and _rank(m) >= 0
    ]
    assert not late, f"imports of a later stage at module level: {late}"
    base_deps = [f"{m} -> {d}" for m in BASE & graph.keys() for d in graph[m] - BASE]
    assert not base_deps, f"the torch-free base must stand alone: {base_deps}"
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph.get(m, ()):
            assert state.get(d) != 1, f"import cycle: {' -> '.join([*path, m, d])}"
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_the_package_has_at_most_twelve_entries_at_its_top_level():
    entries = [
        p.name
        for p in (ROOT / "pneumolib").iterdir()
        if p.name not in ("__init__.py", "__main__.py", "__pycache__")
    ]
    assert len(entries) <= 12, sorted(entries)
