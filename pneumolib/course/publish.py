"""Where the repository is published: one declared URL and the places derived from it.

`[project.urls] Repository` in pyproject.toml is the one declared place. Derived from it: the
default of `PNEUMOLIB_SOURCE` in every notebook's install cell (`git+URL`, in the .py twin and
the .ipynb) and the README's Open-in-Colab badges. `check_sources` lists where they disagree;
`rewrite_sources` points them all at a fork (`python -m pneumolib publish --repo URL`).
Standard library only: it runs before anything heavy is installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pneumolib.base.errors import UsageError
from pneumolib.base.files import atomic_write

_COLAB = "https://colab.research.google.com/github"
_GITHUB = re.compile(r"https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?")
# The install cell's form field: PNEUMOLIB_SOURCE = "..."  # @param {type:"string"}
_FIELD = re.compile(r'^(PNEUMOLIB_SOURCE = ")([^"]*)("[ \t]+#[ \t]*@param)', re.M)
_BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^\s)]*?/notebooks/(\w+)\.ipynb")
_URLS_TABLE = re.compile(r"^\[project\.urls\][ \t]*$(.*?)(?=^\[|\Z)", re.M | re.S)
_REPOSITORY = re.compile(r'^(Repository[ \t]*=[ \t]*")([^"]*)(")', re.M)


def github_url(url: str) -> str:
    """`https://github.com/OWNER/NAME` for `url` (a trailing `.git` or `/` dropped).

    Only GitHub works: the Colab badges open notebooks from GitHub. Anything else: ValueError.
    """
    m = _GITHUB.fullmatch(url.strip())
    if not m:
        raise UsageError(
            f"expected a repository URL https://github.com/OWNER/NAME "
            f"(Colab badges open GitHub only), got {url!r}"
        )
    return f"https://github.com/{m[1]}/{m[2]}"


def pip_source(url: str) -> str:
    """What pip installs from: `git+https://github.com/OWNER/NAME`."""
    return "git+" + github_url(url)


def badge_url(url: str, notebook: str, branch: str = "main") -> str:
    """The Colab link that opens `notebooks/<notebook>.ipynb` of `url` on `branch`."""
    if not re.fullmatch(r"[\w./-]+", branch):
        raise UsageError(f"expected a git branch name (letters, digits, . _ - /), got {branch!r}")
    owner_name = github_url(url).removeprefix("https://github.com/")
    return f"{_COLAB}/{owner_name}/blob/{branch}/notebooks/{notebook}.ipynb"


def find_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) with pyproject.toml and notebooks/."""
    here = (Path.cwd() if start is None else Path(start)).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    raise FileNotFoundError(
        f"no pneumolib repository (pyproject.toml and notebooks/) at or above {here}: "
        "run from the repository"
    )


def _repository_match(text: str) -> re.Match[str]:
    # A regex, not tomllib: the same line is rewritten in place, and tomllib needs Python 3.11.
    table = _URLS_TABLE.search(text)
    m = _REPOSITORY.search(text, table.start(1), table.end(1)) if table else None
    if m is None:
        raise UsageError('pyproject.toml: no Repository = "..." under [project.urls]')
    return m


def declared_url(root: str | Path) -> str:
    """`[project.urls] Repository` of ROOT/pyproject.toml: the one declared repository URL."""
    return _repository_match((Path(root) / "pyproject.toml").read_text())[2]


def notebooks(root: str | Path) -> list[str]:
    """The numbered notebooks' names (`00_setup`, ...), from their .py twins."""
    return sorted(p.stem for p in (Path(root) / "notebooks").glob("[0-9][0-9]_*.py"))


def _field_values(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".ipynb":  # a cell's source: a list of lines (nbformat) or one string
        code = [c["source"] for c in json.loads(text)["cells"] if c["cell_type"] == "code"]
        text = "\n".join("".join(src) for src in code)
    return [m[2] for m in _FIELD.finditer(text)]


def _set_field(text: str, source: str) -> str:
    return _FIELD.sub(lambda m: m[1] + source + m[3], text)


def check_sources(
    root: str | Path, url: str | None = None, *, branch: str | None = None
) -> list[str]:
    """One line per place that disagrees with the repository URL (default: the declared one).

    Checked: pyproject's Repository (when `url` is given), each notebook's install-cell default
    in the .py and the .ipynb, and one Colab badge per notebook in README.md on `branch`
    (default: the branch of the first badge, so that all badges open one branch).
    """
    root = Path(root)
    declared = declared_url(root)
    repo = github_url(url if url is not None else declared)
    problems = []
    if declared != repo:
        problems.append(f"pyproject.toml: [project.urls] Repository is {declared}, not {repo}")
    names = notebooks(root)
    if not names:
        problems.append("notebooks/: no numbered notebooks (NN_name.py)")
    for name in names:
        for path in (root / "notebooks" / f"{name}.py", root / "notebooks" / f"{name}.ipynb"):
            rel = path.relative_to(root).as_posix()
            found = _field_values(path) if path.exists() else []
            if found != [pip_source(repo)]:
                what = ", ".join(found) if found else "no PNEUMOLIB_SOURCE form field"
                problems.append(f"{rel}: install cell has {what}; expected {pip_source(repo)}")
    badges = [(m[1], m[0]) for m in _BADGE.finditer((root / "README.md").read_text())]
    if branch is None:
        first = re.search(r"/blob/([^/]+)/notebooks/", badges[0][1]) if badges else None
        branch = first[1] if first else "main"
    for name in names:
        found = [link for nb, link in badges if nb == name]
        expected = badge_url(repo, name, branch)
        if found != [expected]:
            what = ", ".join(found) if found else "missing"
            problems.append(f"README.md: Colab badge of {name} is {what}; expected {expected}")
    for nb, link in badges:
        if nb not in names:
            problems.append(f"README.md: Colab badge {link} names no notebook in notebooks/")
    return problems


def _write(path: Path, text: str) -> bool:
    """Replace `path` with `text` atomically (temporary file + rename); -> whether it changed."""
    if path.read_text() == text:
        return False
    atomic_write(path, text)
    return True


def _rewrite_ipynb(text: str, source: str) -> str:
    nb = json.loads(text)
    for cell in (c for c in nb["cells"] if c["cell_type"] == "code"):
        if isinstance(cell["source"], list):  # one string per line, as nbformat writes it
            cell["source"] = [_set_field(line, source) for line in cell["source"]]
        else:
            cell["source"] = _set_field(cell["source"], source)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"  # as jupytext/nbformat write it


def rewrite_sources(root: str | Path, url: str, *, branch: str = "main") -> list[str]:
    """Point pyproject, every install cell (.py and .ipynb) and the README badges at `url`.

    -> the files that changed (relative to `root`). Outputs and metadata are left as they are.
    """
    root = Path(root)
    repo = github_url(url)  # ValueError before anything is written
    badge_url(repo, "00", branch)  # the same for the branch
    source = pip_source(repo)
    edits: dict[Path, str] = {}
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    m = _repository_match(text)
    edits[pyproject] = text[: m.start(2)] + repo + text[m.end(2) :]
    for name in notebooks(root):
        py = root / "notebooks" / f"{name}.py"
        edits[py] = _set_field(py.read_text(), source)
        ipynb = py.with_suffix(".ipynb")
        if ipynb.exists():
            edits[ipynb] = _rewrite_ipynb(ipynb.read_text(), source)
    readme = root / "README.md"
    edits[readme] = _BADGE.sub(lambda b: badge_url(repo, b[1], branch), readme.read_text())
    return [p.relative_to(root).as_posix() for p, new in edits.items() if _write(p, new)]
