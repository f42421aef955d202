"""Figures as data: every multi-seed and benchmark figure that README.md, docs/ or a notebook
quotes lives in one JSON file of `results/`, written by the script that measured it
(`write_results`), read back here for a notebook (`results_table`) and rendered into the
Markdown blocks that quote it (`sync_tables`, `python -m pneumolib results [--check]`).

Schema of `results/NAME.json` (`schema: 1`)::

    {
      "schema": 1,
      "name": "loader",                              # the file's stem, one of NAMES
      "command": ["python", "benchmarks/loader.py", "--repeat", "2"],   # argv as run
      "date": "2026-01-31T12:00:00Z",                # UTC, when the file was written
      "versions": {"python": "3.11.7", "pneumolib": "0.1.0", "torch": "2.4.1", "torchvision":
                   ..., "numpy": ..., "opencv": ..., "pydicom": ..., "pandas": ...},  # null: absent
      "machine": {"cpu": "AMD EPYC", "cpu_count": 2, "torch_threads": 1,  # null: torch not loaded
                  "omp_num_threads": "1", "gpu": null, "platform": "Linux-6.1-x86_64"},
      "load_average": [1.02, 0.95, 0.61],   # 1/5/15 min at the start; null: not a speed benchmark
      "tables": {                                    # in display order; the first is the default
        "summary": {
          "columns": ["benchmark", "package img/s", "baseline img/s", "ratio"],
          "formats": {"package img/s": "num:0", "baseline img/s": "num:0", "ratio": "ratio"},
          "rows": [{"benchmark": "loader", "package img/s": 7702.4, ...}],
          "notes": "what to look for (optional)"
        }
      }
    }

Cell formats (`formats`, per column): `num:D` (D decimals, thousands separated; `+num:D`
signed), `mean_sd:D` / `+mean_sd:D` (a `[mean, sd]` pair: "0.845 ± 0.043"), `ci:D` / `+ci:D`
(`[value, low, high]`: "0.856 [0.714, 0.972]"), `ratio` ("3.92×"), `text`. Without one: an int
as is, a float at 3 decimals, text as is; null (or NaN) is "n/a". D defaults to 3.

A Markdown block is the text between a line `<!-- results: NAME -->` (or
`<!-- results: NAME/TABLE -->`) and the next line `<!-- /results -->` (markers count on a line
of their own, outside code blocks). Its content is `render_markdown(NAME, TABLE)`: the table,
then one sentence saying which command made it, when, and on what.

Lookup: the installed package's data (`pneumolib/_results/`, where pyproject.toml maps
`results/` in a wheel) first, then the repository's `results/` (a checkout, an editable install).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pneumolib.base import fmt
from pneumolib.base.errors import UsageError
from pneumolib.base.files import atomic_write

SCHEMA = 1
# Each results file and the script that writes it.
NAMES = {
    "study_seeds": "benchmarks/study_seeds.py",
    "cam_seeds": "benchmarks/cam_seeds.py",
    "calibration_seeds": "benchmarks/calibration_seeds.py",
    "loader": "benchmarks/loader.py",
    "preprocess": "benchmarks/preprocess.py",
    "train_step": "benchmarks/train_step.py",
    "full_scale": "benchmarks/full_scale.py",
    "detect_seeds": "benchmarks/detect_seeds.py",
}
FIELDS = ("schema", "name", "command", "date", "versions", "machine", "load_average", "tables")
VERSIONS = ("python", "pneumolib", "torch", "torchvision", "numpy", "opencv", "pydicom", "pandas")
MACHINE = ("cpu", "cpu_count", "torch_threads", "omp_num_threads", "gpu", "platform")
# Options whose value is a path of the machine that ran the command: rendered as a placeholder.
PATH_OPTIONS = {"--work": "DIR", "--results": "DIR", "--dir": "DIR", "--cache": "CACHE"}
PATH_OPTIONS |= {"--compare": "OTHER/results.json"}
# versions key -> (its module, the distributions that install it)
_PACKAGES = {
    "torch": ("torch", ("torch",)),
    "torchvision": ("torchvision", ("torchvision",)),
    "numpy": ("numpy", ("numpy",)),
    "opencv": ("cv2", ("opencv-python-headless", "opencv-python", "opencv-contrib-python")),
    "pydicom": ("pydicom", ("pydicom",)),
    "pandas": ("pandas", ("pandas",)),
}
_OPEN = re.compile(r"^<!-- results: (?P<name>[\w-]+)(?:/(?P<table>[\w-]+))? -->[ \t]*$", re.M)
_CLOSE = re.compile(r"^<!-- /results -->[ \t]*$", re.M)
_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)  # a code block

Table = dict[str, Any]


# --- where the files are ----------------------------------------------------------------------


def package_folder() -> Path:
    """`pneumolib/_results` of the installed package (present in a wheel install only)."""
    return Path(__file__).resolve().parents[1] / "_results"


def repo_folder() -> Path | None:
    """The repository's `results/` when the package runs from a checkout, else None."""
    root = Path(__file__).resolve().parents[2]
    return root / "results" if (root / "pyproject.toml").is_file() else None


def search_folders() -> list[Path]:
    """Where `read_results` looks, in order: the package's data, then the repository's."""
    repo = repo_folder()
    return [package_folder(), *([repo] if repo else [])]


def script_command(script: str | Path, argv: Sequence[str] | None = None) -> list[str]:
    """The command a benchmark script ran as: `python benchmarks/NAME.py ARGS` (ARGS: `argv`,
    or this process's own when None)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return ["python", f"benchmarks/{Path(script).name}", *args]


# --- provenance -------------------------------------------------------------------------------


def _version(key: str) -> str | None:
    """The version of a loaded module (e.g. torch's `2.4.1+cu121`), else its distribution's."""
    module, dists = _PACKAGES[key]
    if module in sys.modules:
        return getattr(sys.modules[module], "__version__", None)
    for dist in dists:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    return None


def versions() -> dict[str, str | None]:
    """The versions a figure depends on (None: not installed)."""
    from pneumolib import __version__

    found = {k: _version(k) for k in _PACKAGES}
    return {"python": platform.python_version(), "pneumolib": __version__, **found}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict[str, Any]:
    """CPU model, cores, the threads torch used (None when the script never loaded torch), the
    OMP_NUM_THREADS it ran with, the GPU (CUDA device 0, if any) and the platform."""
    torch = sys.modules.get("torch")
    gpu = None
    if torch is not None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": gpu,
        "platform": platform.platform(),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages now (a speed benchmark records them at its start)."""
    return [round(x, 2) for x in os.getloadavg()]


# --- writing ----------------------------------------------------------------------------------


def make_table(
    rows: pd.DataFrame | Iterable[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
    formats: Mapping[str, str] | None = None,
    notes: str | None = None,
) -> Table:
    """One named table of a results file: `rows` (dicts or a DataFrame's records), the column
    order (default: the first row's keys), per-column formats and optional notes."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else [dict(r) for r in rows]
    cols = list(columns) if columns is not None else list(records[0] if records else [])
    unknown = sorted(set(formats or {}) - set(cols))
    if unknown:
        raise ValueError(f"formats for columns not in the table: {unknown}")
    table: Table = {"columns": cols, "formats": dict(formats or {}), "rows": _plain(records)}
    if notes:
        table["notes"] = notes
    return table


def _plain(x: Any) -> Any:
    """JSON-ready: numpy scalars and arrays to Python, tuples to lists, NaN and inf to None."""
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        x = x.tolist()  # numpy scalars and arrays
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_results(
    name: str,
    tables: Mapping[str, Table],
    *,
    command: Sequence[str],
    folder: str | Path | None = None,
    load_avg: Sequence[float] | None = None,
) -> Path | None:
    """Write `FOLDER/NAME.json` (default: the repository's `results/`) with `tables` (each from
    `make_table`) and this process's provenance: `command` (argv as run: `script_command`), the
    date, versions, machine and `load_avg` (a speed benchmark's, taken at its start). Under
    pytest (PYTEST_CURRENT_TEST, which a test's subprocesses inherit) the default folder is
    never written: a test must not change the committed figures."""
    if name not in NAMES:
        raise UsageError(f"unknown results file {name!r}: expected one of {', '.join(NAMES)}")
    if not tables:
        raise ValueError("a results file needs at least one table")
    out = Path(folder) if folder is not None else repo_folder()
    if out is None:
        raise UsageError(f"{name}: no repository results/ folder here: give a folder to write to")
    if folder is None and os.environ.get("PYTEST_CURRENT_TEST"):
        print(f"results: {name}.json not written (a test run; give it a folder)")
        return None
    record = {
        "schema": SCHEMA,
        "name": name,
        "command": [str(a) for a in command],
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": versions(),
        "machine": machine(),
        "load_average": _plain(list(load_avg)) if load_avg is not None else None,
        "tables": dict(tables),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    atomic_write(path, json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    print(f"results: {path}")
    return path


# --- reading ----------------------------------------------------------------------------------


def find_results(name: str, folders: Sequence[str | Path] | None = None) -> Path:
    """The first `FOLDER/NAME.json` of `folders` (default: `search_folders()`); a one-line
    UsageError naming the file and how to make it when none has it."""
    where = [Path(f) for f in (folders if folders is not None else search_folders())]
    for folder in where:
        if (folder / f"{name}.json").is_file():
            return folder / f"{name}.json"
    script = NAMES.get(name)
    make = f"run `python {script}` in a checkout" if script else f"known: {', '.join(NAMES)}"
    looked = ", ".join(str(f) for f in where) or "nowhere"
    raise UsageError(
        f"results file {name}.json not found (looked in {looked}): {make}, "
        "or install a pneumolib that ships it"
    )


def read_results(name: str, *, folders: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """The record of results file NAME (the schema above), from the first folder that has it."""
    path = find_results(name, folders)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in FIELDS if k not in record]
    if missing:
        raise UsageError(f"{path}: missing {', '.join(missing)}: re-run {NAMES.get(name)}")
    return record


def _table(record: Mapping[str, Any], table: str | None) -> Table:
    tables = record["tables"]
    key = table if table is not None else next(iter(tables))
    if key not in tables:
        raise UsageError(f"{record['name']}.json has no table {key!r}: it has {', '.join(tables)}")
    return tables[key]


def results_table(
    name: str,
    table: str | None = None,
    *,
    raw: bool = False,
    folders: Sequence[str | Path] | None = None,
) -> pd.DataFrame:
    """Table `table` (default: the first) of results file NAME as a DataFrame in its column
    order: cells formatted as rendered (`raw=True`: the stored values). `.attrs` holds
    "provenance" (`provenance_line`) and "notes"."""
    return _frame(read_results(name, folders=folders), table, raw=raw)


def _frame(record: Mapping[str, Any], table: str | None, *, raw: bool = False) -> pd.DataFrame:
    t = _table(record, table)
    cols, formats = t["columns"], t.get("formats", {})
    rows = [
        {c: r.get(c) if raw else format_cell(r.get(c), formats.get(c)) for c in cols}
        for r in t["rows"]
    ]
    df = pd.DataFrame(rows, columns=cols)
    df.attrs["provenance"] = provenance_line(record)
    df.attrs["notes"] = t.get("notes", "")
    return df


# --- rendering --------------------------------------------------------------------------------


def _number(x: Any, digits: int, *, signed: bool = False) -> str:
    if fmt.num(x, digits=digits) == "n/a":
        return "n/a"
    return f"{float(x):{'+' if signed else ''},.{digits}f}"


def format_cell(value: Any, spec: str | None = None) -> str:
    """A cell as text, by its column's format (see the module docstring)."""
    kind, _, d = (spec or "").partition(":")
    digits, signed, kind = int(d or 3), kind.startswith("+"), kind.lstrip("+")
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if kind == "text" or isinstance(value, str):
        return str(value)
    if kind == "num":
        return _number(value, digits, signed=signed)
    if kind == "ratio":
        return f"{_number(value, 2)}×"
    if kind == "mean_sd":
        mean, sd = value
        return f"{_number(mean, digits, signed=signed)} ± {_number(sd, digits)}"
    if kind == "ci":
        v, lo, hi = value
        ci = fmt.interval([lo, hi], digits=digits)
        return f"{_number(v, digits, signed=signed)} {ci}".rstrip()
    if kind:
        raise ValueError(f"unknown cell format {spec!r}")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_cell(v) for v in value)
    return fmt.num(value, digits=3)


def shown_command(command: Sequence[str]) -> str:
    """The command as a reader would type it: a path of the machine that ran it (the value of
    `--work`, `--results`, ...) shown as a placeholder (DIR)."""
    args = list(command)
    for i, a in enumerate(args):
        option = a.split("=", 1)[0]
        if option in PATH_OPTIONS and "=" in a:
            args[i] = f"{option}={PATH_OPTIONS[option]}"
        elif i > 0 and args[i - 1] in PATH_OPTIONS:
            args[i] = PATH_OPTIONS[args[i - 1]]
    return shlex.join(args)


def provenance_line(record: Mapping[str, Any] | str) -> str:
    """One sentence: made by `CMD` on DATE, torch X, the machine (and its load at the start)."""
    if isinstance(record, str):
        record = read_results(record)
    m, v = record["machine"], record["versions"]
    where = f"{m['gpu']} + {m['cpu']}" if m.get("gpu") else m["cpu"]
    threads = m.get("torch_threads")
    cores = f"{m['cpu_count']} cores" + (f", torch threads {threads}" if threads else "")
    load = record.get("load_average")
    at_start = f", load average {load[0]:.2f} at the start" if load else ""
    torch = f"torch {v['torch']}, " if v.get("torch") else ""
    return (
        f"Made by `{shown_command(record['command'])}` on {record['date'][:10]}, {torch}"
        f"Python {v['python']}, {where} ({cores}{at_start})."
    )


def _markdown_row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def render_markdown(
    name: str, table: str | None = None, *, folders: Sequence[str | Path] | None = None
) -> str:
    """Table `table` (default: the first) of results file NAME as a Markdown table, then a blank
    line and its provenance sentence. The same file always renders the same text."""
    record = read_results(name, folders=folders)
    df = _frame(record, table)
    lines = [_markdown_row(df.columns), _markdown_row("---" for _ in df.columns)]
    lines += [_markdown_row(row) for row in df.itertuples(index=False)]
    return "\n".join([*lines, "", provenance_line(record)])


# --- Markdown blocks --------------------------------------------------------------------------


def documents(root: str | Path) -> list[Path]:
    """The Markdown files whose results blocks are kept in sync: README.md, data_README.md and
    docs/*.md of the repository ROOT (those that exist)."""
    root = Path(root)
    found = [root / n for n in ("README.md", "data_README.md") if (root / n).is_file()]
    return found + sorted((root / "docs").glob("*.md"))


def _synced(text: str, where: str, folders: Sequence[str | Path] | None) -> tuple[str, list[str]]:
    """`text` with every results block re-rendered -> (new text, the blocks that changed)."""
    out, changed, pos = [], [], 0
    fences = [f.span() for f in _FENCE.finditer(text)]
    for m in _OPEN.finditer(text):
        if any(a <= m.start() < b for a, b in fences):
            continue  # a marker shown in a code block, as an example
        if m.start() < pos:
            line = text.count("\n", 0, m.start()) + 1
            raise UsageError(f"{where} line {line}: a results block opens inside another")
        close = _CLOSE.search(text, m.end())
        if close is None:
            line = text.count("\n", 0, m.start()) + 1
            raise UsageError(f"{where} line {line}: {m[0].strip()} has no <!-- /results -->")
        body = "\n" + render_markdown(m["name"], m["table"], folders=folders) + "\n"
        if text[m.end() : close.start()] != body:
            changed.append(f"{where}: {m['name']}" + (f"/{m['table']}" if m["table"] else ""))
        out += [text[pos : m.end()], body]
        pos = close.start()
    return "".join([*out, text[pos:]]), changed


def sync_tables(
    paths: Iterable[str | Path],
    *,
    check: bool,
    folders: Sequence[str | Path] | None = None,
) -> list[str]:
    """Re-render every results block of the Markdown files `paths` from the results files (read
    from `folders`, default `search_folders()`). Returns the blocks that differed, as
    "FILE: NAME[/TABLE]": rewritten, or with `check=True` left as they are (stale)."""
    stale = []
    for path in paths:
        text = Path(path).read_text()
        new, changed = _synced(text, str(path), folders)
        stale += changed
        if changed and not check:
            atomic_write(path, new)
    return stale
