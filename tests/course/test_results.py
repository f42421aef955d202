"""results/ as data (`course.results`): the README's and docs' results blocks agree with the
files, a changed figure makes a block stale, every file carries its provenance, the renderer
is deterministic, and a notebook reads the files from the installed package alone."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from pneumolib.base.errors import UsageError
from pneumolib.course import results

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"
SPEED = ("loader", "preprocess", "train_step", "full_scale")  # these record the load average


def _demo_results(folder: Path) -> Path:
    """A small results file (loader.json) in `folder`, written as a benchmark writes it."""
    table = results.make_table(
        [{"benchmark": "loader", "package img/s": 7702.4, "baseline img/s": 959.2, "ratio": 8.03}],
        formats={"package img/s": "num:0", "baseline img/s": "num:0", "ratio": "ratio"},
        notes="best of 3",
    )
    runs = results.make_table(
        [{"seed": 0, "auc": [0.8451, 0.0432], "diff": [0.035, -0.01, 0.08], "p": float("nan")}],
        formats={"auc": "mean_sd:3", "diff": "+ci:3"},
    )
    return results.write_results(
        "loader",
        {"summary": table, "runs": runs},
        command=["python", "benchmarks/loader.py", "--work", "/somewhere", "--repeat", "3"],
        folder=folder,
        load_avg=[1.25, 1.0, 0.5],
    )


def _block(name: str, body: str = "\nold\n") -> str:
    return f"# Title\n\ntext\n\n<!-- results: {name} -->{body}<!-- /results -->\n\nafter\n"


# --- the committed files and pages ----------------------------------------------------------


def test_readme_and_docs_have_no_stale_results_block():
    stale = results.sync_tables(results.documents(ROOT), check=True, folders=[RESULTS])
    assert stale == [], f"re-render them: python -m pneumolib results ({stale})"


def test_every_results_file_has_its_provenance():
    files = sorted(RESULTS.glob("*.json"))
    assert files, "results/ holds no results file"
    for path in files:
        record = json.loads(path.read_text())
        assert set(results.FIELDS) <= set(record), path.name
        assert record["name"] == path.stem and path.stem in results.NAMES, path.name
        assert record["command"][:2] == ["python", results.NAMES[path.stem]], path.name
        assert dt.datetime.strptime(record["date"], "%Y-%m-%dT%H:%M:%SZ"), path.name
        assert set(results.VERSIONS) <= set(record["versions"]), path.name
        assert record["versions"]["python"] and record["versions"]["numpy"], path.name
        assert set(results.MACHINE) <= set(record["machine"]), path.name
        assert record["machine"]["cpu"] and record["machine"]["cpu_count"], path.name
        if path.stem in SPEED:
            assert len(record["load_average"]) == 3, path.name
        assert record["tables"], path.name
        for name, table in record["tables"].items():
            assert table["rows"], f"{path.name}: {name} has no rows"
            assert all(set(r) <= set(table["columns"]) for r in table["rows"]), name
            assert set(table["formats"]) <= set(table["columns"]), name


def test_pyproject_ships_results_inside_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    inits = (ROOT / "pneumolib").rglob("__init__.py")
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in inits}
    assert folders <= set(tool["packages"]), "a package folder is missing from [tool.setuptools]"
    assert tool["package-dir"]["pneumolib._results"] == "results"
    assert tool["package-data"]["pneumolib._results"] == ["*.json"]
    assert results.package_folder() == ROOT / "pneumolib" / "_results"


# --- sync and check -------------------------------------------------------------------------


def test_sync_renders_a_block_and_check_finds_a_changed_figure(tmp_path: Path):
    _demo_results(tmp_path / "res")
    page = tmp_path / "README.md"
    page.write_text(_block("loader") + _block("loader/runs"))
    folders = [tmp_path / "res"]
    assert results.sync_tables([page], check=True, folders=folders) == [
        f"{page}: loader",
        f"{page}: loader/runs",
    ]
    assert "old" in page.read_text()  # check changes nothing
    assert len(results.sync_tables([page], check=False, folders=folders)) == 2
    text = page.read_text()
    assert "| loader | 7,702 | 959 | 8.03× |" in text and "+0.035 [-0.010, 0.080]" in text
    assert text.startswith("# Title") and text.endswith("after\n")
    assert results.sync_tables([page], check=True, folders=folders) == []
    page.write_text(text.replace("7,702", "7,703"))  # one figure typed over
    assert results.sync_tables([page], check=True, folders=folders) == [f"{page}: loader"]


def test_the_real_readme_with_one_figure_changed_is_stale(tmp_path: Path):
    copy = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", copy)
    results.sync_tables([copy], check=False, folders=[RESULTS])  # as `pneumolib results` would
    text = copy.read_text()
    block = re.search(r"^<!-- results: ([\w/-]+) -->\n(.*?)^<!-- /results -->", text, re.M | re.S)
    if block is None:
        pytest.skip("README.md has no results block")
    digit = re.search(r"\d", block[2])
    assert digit, "a results block without a figure"
    at = block.start(2) + digit.start()
    copy.write_text(text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1 :])
    stale = results.sync_tables([copy], check=True, folders=[RESULTS])
    assert stale == [f"{copy}: {block[1]}"]


def test_markers_in_code_blocks_are_examples_and_a_missing_close_is_one_line(tmp_path: Path):
    page = tmp_path / "dev.md"
    page.write_text("```\n<!-- results: NAME -->\n...\n<!-- /results -->\n```\n")
    assert results.sync_tables([page], check=True, folders=[tmp_path]) == []
    page.write_text("x\n<!-- results: loader -->\nno end\n")
    with pytest.raises(UsageError, match=r"dev.md line 2: .* has no <!-- /results -->"):
        results.sync_tables([page], check=True, folders=[tmp_path])


# --- rendering ------------------------------------------------------------------------------


def test_render_is_deterministic_and_names_command_date_and_machine(tmp_path: Path):
    path = _demo_results(tmp_path / "a")
    (tmp_path / "b").mkdir()
    shutil.copy(path, tmp_path / "b" / path.name)
    first = results.render_markdown("loader", folders=[tmp_path / "a"])
    assert first == results.render_markdown("loader", folders=[tmp_path / "a"])
    assert first == results.render_markdown("loader", folders=[tmp_path / "b"])
    lines = first.splitlines()
    assert lines[:2] == [
        "| benchmark | package img/s | baseline img/s | ratio |",
        "| --- | --- | --- | --- |",
    ]
    line = lines[-1]
    assert line.startswith("Made by `python benchmarks/loader.py --work DIR --repeat 3` on 20")
    assert "load average 1.25 at the start" in line and f"Python {sys.version.split()[0]}" in line


@pytest.mark.parametrize(
    ("value", "spec", "text"),
    [
        ([0.8451, 0.0432], "mean_sd:3", "0.845 ± 0.043"),
        ([0.0351, 0.018], "+mean_sd:3", "+0.035 ± 0.018"),
        (3.917, "ratio", "3.92×"),
        (7702.4, "num:0", "7,702"),
        ([0.856, 0.714, 0.972], "ci:3", "0.856 [0.714, 0.972]"),
        (0.1234, None, "0.123"),
        (12, None, "12"),
        (True, None, "yes"),
        (None, "mean_sd:3", "n/a"),
        ("2 of 3", None, "2 of 3"),
    ],
)
def test_cell_formats(value, spec, text):
    assert results.format_cell(value, spec) == text


# --- lookup: package data first, then the repository ----------------------------------------


def test_results_table_reads_the_package_data_without_the_repository(tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "pneumolib" / "_results"
    _demo_results(package)
    monkeypatch.setattr(results, "package_folder", lambda: package)
    monkeypatch.setattr(results, "repo_folder", lambda: None)  # no checkout: a Colab install
    df = results.results_table("loader")
    assert isinstance(df, pd.DataFrame) and list(df.columns)[0] == "benchmark"
    assert df.loc[0, "ratio"] == "8.03×" and df.attrs["notes"] == "best of 3"
    assert df.attrs["provenance"].startswith("Made by `python benchmarks/loader.py")
    raw = results.results_table("loader", "runs", raw=True)
    assert raw.loc[0, "auc"] == [0.8451, 0.0432] and raw.loc[0, "p"] is None  # NaN stored as null
    with pytest.raises(UsageError, match=r"cam_seeds\.json not found .*benchmarks/cam_seeds\.py"):
        results.results_table("cam_seeds")
    with pytest.raises(UsageError, match="no table 'nope'"):
        results.results_table("loader", "nope")


def test_a_test_run_never_writes_the_committed_folder(monkeypatch):
    before = {p.name: p.read_bytes() for p in RESULTS.glob("*.json")}
    table = results.make_table([{"a": 1}])
    assert results.write_results("loader", {"t": table}, command=["python", "x"]) is None
    assert {p.name: p.read_bytes() for p in RESULTS.glob("*.json")} == before
    with pytest.raises(UsageError, match="unknown results file"):
        results.write_results("mine", {"t": table}, command=["python", "x"], folder="/tmp")
