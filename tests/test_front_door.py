"""The package root and each stage folder re-export their public calls lazily (PEP 562): every
name resolves, none shadows a subpackage, and `import pneumolib` still loads no torch."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import pneumolib

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["base", "data", "core", "train", "evaluate", "cam", "tune", "course"]
CALLS = [  # what a notebook user calls, from the root
    "Config", "demo_config", "rsna_config", "make_demo_data", "build_cache", "cache_for", "fit",
    "evaluate_run", "cam_run", "compare_runs", "write_card", "sweep", "predict_files", "run_demo",
]  # fmt: skip


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_the_root_exposes_the_calls_and_loads_no_torch():
    assert set(CALLS) <= set(pneumolib.__all__)
    code = (
        "import sys, pneumolib as pl; names = [n for n in pl.__all__ if n != '__version__'];"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules));"
        "pl.compare_runs, pl.write_card, pl.Config, pl.evaluate.verdicts;"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    assert _run(code).splitlines() == ["[]", "[]"]


@pytest.mark.parametrize("package", ["pneumolib", *(f"pneumolib.{s}" for s in STAGES)])
def test_every_exported_name_resolves_and_none_shadows_a_submodule(package: str):
    pkg = importlib.import_module(package)
    folder = Path(pkg.__file__).parent
    submodules = {p.stem for p in folder.glob("*.py")} | {
        p.name for p in folder.iterdir() if (p / "__init__.py").exists()
    }
    assert pkg.__all__, f"{package} exports nothing"
    for name in pkg.__all__:
        value = getattr(pkg, name)
        if name in submodules:  # allowed only as that very module: importing it rebinds the name
            assert value is importlib.import_module(f"{package}.{name}"), f"{package}.{name}"
        assert name in dir(pkg)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        pkg.not_a_name  # noqa: B018


def test_a_missing_name_and_a_name_exported_twice_are_refused():
    from pneumolib.base.lazy import lazy_exports

    with pytest.raises(ValueError, match="two modules"):
        lazy_exports(
            "pneumolib", {"pneumolib.base.fmt": "with_ci", "pneumolib.base.rundir": "with_ci"}
        )


def _assigned_names(source: str) -> set[str]:
    """Names a notebook's code binds: assignments, loop targets, imports (`as` names included),
    function and class definitions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            bound = node.asname or node.name.split(".")[0]
            if node.asname:  # `from x import fit` binds the real fit; `import y as fit` does not
                names.add(bound)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


@pytest.mark.parametrize("nb", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")), ids=str)
def test_no_notebook_variable_takes_a_front_door_name(nb: Path):
    import jupytext

    code = "\n".join(
        c.source for c in jupytext.read(nb).cells if c.cell_type == "code" and "%" not in c.source
    )
    clash = _assigned_names(code) & (set(pneumolib.__all__) | set(STAGES))
    assert not clash, f"{nb.name} binds front-door names: {sorted(clash)}"
