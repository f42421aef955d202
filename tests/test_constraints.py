"""The declared dependency bounds, the constraints files that test them and requirements.txt
agree: a bound cannot move without the lowest set that proves it, and the Colab set names what
Colab preinstalls. (CI's Colab leg, `.ci/colab_leg`, is the run that proves the Colab set.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="tomllib: Python >= 3.11")

ROOT = Path(__file__).resolve().parents[1]
# What the issue found differs on Colab (numpy 2.0, OpenCV 4.12, torch 2.8, ipywidgets 7.7, ...).
COLAB_PACKAGES = {
    "numpy",
    "pandas",
    "scikit-learn",
    "matplotlib",
    "opencv-python-headless",
    "torch",
    "torchvision",
    "ipywidgets",
}


def _declared() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {r.name.lower(): r for r in map(Requirement, deps)}


def _pins(name: str) -> dict[str, Version]:
    """constraints/NAME: package -> pinned version (`pkg==X`, comments allowed)."""
    pins = {}
    for line in (ROOT / "constraints" / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+]*)", line)
            assert m, f"constraints/{name}: expected 'package==version', got {line!r}"
            pins[m.group(1).lower()] = Version(m.group(2))
    return pins


def _lower_bound(req: Requirement) -> Version:
    (spec,) = [s for s in req.specifier if s.operator == ">="]
    return Version(spec.version)


def test_every_dependency_has_a_lower_bound_only():
    for name, req in _declared().items():
        assert [s.operator for s in req.specifier] == [">="], f"{name}: {req.specifier}"


def test_lowest_set_pins_exactly_the_declared_lower_bounds():
    declared, pins = _declared(), _pins("lowest.txt")
    assert set(pins) == set(declared)
    for name, req in declared.items():
        bound = _lower_bound(req)
        # 4.8 -> 4.8.0.76: the first release of the bound itself, not a later one
        assert pins[name] in req.specifier, f"{name}=={pins[name]} outside {req.specifier}"
        assert pins[name].release[: len(bound.release)] == bound.release, (name, pins[name])


def test_true_lower_bounds():
    declared = {name: _lower_bound(req) for name, req in _declared().items()}
    assert declared["torch"] >= Version("2.4")  # GradScaler; weights_only checkpoint loads
    assert declared["torchvision"] >= Version("0.19")
    assert declared["optuna"] >= Version("4.0")  # JournalFileBackend (tune.storage)
    assert declared["pydicom"] >= Version("3.0.1")  # 3.0.0 warns on every import


def test_colab_set_names_what_colab_preinstalls_and_allows_our_bounds():
    pins, declared = _pins("colab.txt"), _declared()
    assert COLAB_PACKAGES <= set(pins)
    assert pins["opencv-python-headless"].release[:2] == (4, 12)
    assert pins["torch"].release[:2] == (2, 8) and pins["numpy"].release[:2] == (2, 0)
    for name, version in pins.items():
        if name in declared:
            assert version in declared[name].specifier, f"Colab's {name} {version} refused"
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["test"]
    ipywidgets = next(r for r in map(Requirement, test_extra) if r.name == "ipywidgets")
    assert pins["ipywidgets"] in ipywidgets.specifier


def test_requirements_files_repeat_pyproject():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def lines(name: str) -> set[str]:
        text = (ROOT / name).read_text().splitlines()
        return {ln.split("#")[0].strip() for ln in text if ln.split("#")[0].strip()}

    assert lines("requirements.txt") == {str(Requirement(d)) for d in data["dependencies"]}
    test_extra = {str(Requirement(d)) for d in data["optional-dependencies"]["test"]}
    assert lines("requirements-test.txt") == test_extra | {"-r requirements.txt"}


def test_ci_runs_the_readme_command_then_the_colab_leg():
    readme = (ROOT / "README.md").read_text().splitlines()
    (command,) = [ln for ln in readme if ln.startswith('python -m pip install -q -e ".[test]" &&')]
    ci, leg = (ROOT / ".ci" / "run").read_text(), (ROOT / ".ci" / "colab_leg").read_text()
    assert "set -euo pipefail" in ci and "set -euo pipefail" in leg  # a failing leg fails CI
    assert ci.index(command) < ci.index("bash .ci/colab_leg")
    assert "constraints=constraints/colab.txt" in leg and "notebooks/02_augmentation.ipynb" in leg
