"""The repository's URL: declared once (pyproject), agreed with by the eight install cells and
the README's Colab badges, rewritten for a fork in one command; the install cell itself."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pneumolib.cli import main
from pneumolib.course import publish

ROOT = Path(__file__).resolve().parents[2]
OURS = "https://github.com/pneumolib/pneumolib"
FORK = "https://github.com/someone/pneumolib-fork"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of what publish reads and writes: pyproject, README and the numbered notebooks."""
    (tmp_path / "notebooks").mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    for nb in (ROOT / "notebooks").glob("[0-9][0-9]_*.*"):
        if nb.suffix in (".py", ".ipynb"):
            shutil.copy(nb, tmp_path / "notebooks" / nb.name)
    return tmp_path


def _install_cell(py: Path) -> str:
    """The percent-format cell of `py` holding the PNEUMOLIB_SOURCE form field."""
    cells = [c for c in py.read_text().split("\n# %%") if "PNEUMOLIB_SOURCE = " in c]
    assert len(cells) == 1, f"{py.name}: {len(cells)} install cells"
    return cells[0].removeprefix("\n").strip()


def _files_named(problems: list[str]) -> list[str]:
    return sorted({line.split(":")[0] for line in problems})


def test_repository_agrees_with_its_declared_url():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(ROOT / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["urls"]["Repository"]
    assert publish.declared_url(ROOT) == declared == OURS  # the regex reads what TOML reads
    assert publish.notebooks(ROOT) == [
        p.stem for p in sorted((ROOT / "notebooks").glob("0[0-7]_*.py"))
    ]
    assert len(publish.notebooks(ROOT)) == 8
    assert publish.check_sources(ROOT) == []


def test_the_eight_install_cells_are_identical():
    cells = {py.name: _install_cell(py) for py in sorted((ROOT / "notebooks").glob("0*_*.py"))}
    assert len(cells) == 8
    first = cells["00_setup.py"]
    assert first.startswith(f'PNEUMOLIB_SOURCE = "git+{OURS}"  # @param {{type:"string"}}')
    assert [name for name, cell in cells.items() if cell != first] == []


@pytest.mark.parametrize("changed", ["notebooks/03_train.py", "notebooks/04_evaluate.ipynb"])
def test_one_changed_install_cell_is_reported(repo: Path, changed: str):
    assert publish.check_sources(repo) == []
    path = repo / changed
    text = path.read_text()
    assert text.count("github.com/pneumolib/pneumolib") == 1
    path.write_text(text.replace("github.com/pneumolib/pneumolib", "github.com/other/place"))
    problems = publish.check_sources(repo)
    assert _files_named(problems) == [changed], problems
    assert "git+https://github.com/other/place" in problems[0]


def test_a_missing_form_field_is_reported(repo: Path):
    path = repo / "notebooks" / "05_cam.py"
    path.write_text(path.read_text().replace("PNEUMOLIB_SOURCE = ", "SOURCE = "))
    problems = publish.check_sources(repo)
    assert problems == [
        f"notebooks/05_cam.py: install cell has no PNEUMOLIB_SOURCE form field; expected git+{OURS}"
    ]


@pytest.mark.parametrize(
    "old, new",
    [
        (
            "pneumolib/blob/main/notebooks/02_augmentation",
            "other/blob/main/notebooks/02_augmentation",
        ),
        (
            "pneumolib/blob/main/notebooks/02_augmentation",
            "pneumolib/blob/dev/notebooks/02_augmentation",
        ),
    ],
    ids=["repository", "branch"],
)
def test_one_changed_badge_is_reported(repo: Path, old: str, new: str):
    readme = repo / "README.md"
    assert readme.read_text().count(old) == 1
    readme.write_text(readme.read_text().replace(old, new))
    problems = publish.check_sources(repo)
    assert len(problems) == 1, problems
    assert problems[0].startswith("README.md: Colab badge of 02_augmentation is https://")


def test_rewrite_for_a_fork(repo: Path):
    before = {p.name: json.loads(p.read_text()) for p in (repo / "notebooks").glob("*.ipynb")}
    changed = publish.rewrite_sources(repo, FORK + ".git/", branch="dev")
    assert len(changed) == 2 + 2 * 8 and "pyproject.toml" in changed and "README.md" in changed
    assert publish.declared_url(repo) == FORK
    assert publish.check_sources(repo) == []  # the badges' branch, dev, is taken as given
    assert publish.check_sources(repo, FORK, branch="dev") == []
    assert publish.check_sources(repo, OURS)[0].startswith("pyproject.toml:")
    on_main = publish.check_sources(repo, branch="main")
    assert len(on_main) == 8 and _files_named(on_main) == ["README.md"]
    for name in publish.notebooks(repo):
        for path in (repo / "notebooks" / f"{name}.py", repo / "notebooks" / f"{name}.ipynb"):
            text = path.read_text()
            assert f"git+{FORK}" in text and "pneumolib/pneumolib" not in text, path.name
        nb = json.loads((repo / "notebooks" / f"{name}.ipynb").read_text())
        old = before[f"{name}.ipynb"]
        assert nb["metadata"] == old["metadata"]
        assert [c.get("outputs") for c in nb["cells"]] == [c.get("outputs") for c in old["cells"]]
        assert [c["id"] for c in nb["cells"]] == [c["id"] for c in old["cells"]]
    readme = (repo / "README.md").read_text()
    assert readme.count("colab.research.google.com/github/someone/pneumolib-fork/blob/dev/") == 8
    assert "github/pneumolib/pneumolib" not in readme
    assert publish.rewrite_sources(repo, FORK, branch="dev") == []  # nothing left to change


def test_rewrite_back_restores_the_files_byte_for_byte(repo: Path):
    files = sorted(p for p in repo.rglob("*") if p.is_file())
    original = {p: p.read_bytes() for p in files}
    publish.rewrite_sources(repo, FORK)
    publish.rewrite_sources(repo, OURS)
    assert [p for p in files if p.read_bytes() != original[p]] == []


@pytest.mark.parametrize(
    "url",
    [
        "https://gitlab.com/someone/pneumolib",
        "git@github.com:someone/pneumolib.git",
        "http://github.com/someone/pneumolib",
        "https://github.com/someone",
        "/content/drive/MyDrive/pneumolib",
    ],
)
def test_a_url_that_is_not_a_github_repository_is_refused(repo: Path, url: str):
    files = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"https://github\.com/OWNER/NAME"):
        publish.rewrite_sources(repo, url)
    assert all(p.read_bytes() == data for p, data in files.items())


def test_a_bad_branch_is_refused(repo: Path):
    with pytest.raises(ValueError, match="branch name"):
        publish.rewrite_sources(repo, FORK, branch="dev) [x](y")
    assert publish.check_sources(repo) == []  # nothing written


def test_publish_command(repo: Path, tmp_path_factory, monkeypatch, capsys):
    monkeypatch.chdir(repo / "notebooks")  # the root is found by walking up
    assert main(["publish", "--check"]) == 0
    py = repo / "notebooks" / "06_tuning.py"
    py.write_text(py.read_text().replace("pneumolib/pneumolib", "other/place"))
    capsys.readouterr()
    assert main(["publish", "--check"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("notebooks/06_tuning.py: install cell has git+https://github.com/other/")
    assert main(["publish", "--repo", FORK]) == 0
    assert "18 file(s) now point at " + FORK in capsys.readouterr().out
    assert main(["publish", "--check", "--repo", FORK]) == 0
    assert main(["publish", "--check", "--repo", OURS]) == 1
    assert main(["publish", "--repo", "https://example.org/x/y"]) == 2
    assert main(["publish"]) == 2  # neither --repo nor --check
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    capsys.readouterr()
    assert main(["publish", "--check"]) == 2
    assert "no pneumolib repository" in capsys.readouterr().err


@pytest.fixture
def colab(monkeypatch):
    """A stand-in Colab for the install cell: `google.colab` imports, pneumolib is not installed,
    and pip and the Drive mount are recorded instead of run."""
    calls: dict[str, list] = {"pip": [], "mount": []}
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    google.colab.drive = types.SimpleNamespace(mount=calls["mount"].append)
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    real = importlib.util.find_spec
    fake = lambda name, *a: None if name == "pneumolib" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", fake)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls["pip"].append(cmd[-1]))
    return calls


def _run_install_cell(source: str | None = None) -> None:
    """Run notebook 00's install cell, its form field set to `source` as Colab's form does."""
    cell = _install_cell(ROOT / "notebooks" / "00_setup.py")
    if source is not None:
        cell = cell.replace(f'"git+{OURS}"', json.dumps(source), 1)
    exec(compile(cell, "00_setup.py install cell", "exec"), {})


def test_install_cell_in_colab(colab, tmp_path: Path):
    _run_install_cell()
    assert colab["pip"] == [f"git+{OURS}"]
    _run_install_cell(f" {FORK} ")  # a bare GitHub URL, pasted with spaces
    wheel = tmp_path / "pneumolib-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    _run_install_cell(str(wheel))
    assert colab["pip"][1:] == [f"git+{FORK}", str(wheel)]
    with pytest.raises(FileNotFoundError, match="PNEUMOLIB_SOURCE '/content/drive/MyDrive/nope'"):
        _run_install_cell("/content/drive/MyDrive/nope")
    assert colab["mount"] == ["/content/drive"]  # a Drive path: Drive mounted before looking
    assert len(colab["pip"]) == 3


def test_install_cell_outside_colab_installs_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", None)  # import fails: not in Colab
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    _run_install_cell("/no/such/folder")
    assert calls == []
