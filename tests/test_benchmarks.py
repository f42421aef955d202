"""benchmarks/gpu_check.sh: its CPU side runs, says the GPU stages were skipped, prints the
table; the 24,000-row epoch cache it tiles has the exact `preprocess` cache format; a benchmark
writes its results file (`course.results`) with every provenance field."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pneumolib.course import results
from pneumolib.data.labels import open_images, read_index, read_stats

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_gpu_check_without_a_gpu_runs_the_cpu_side_and_prints_the_table(tmp_path: Path):
    # CUDA hidden: on a machine with a GPU this still takes the quick CPU path.
    env = {**os.environ, "GPU_CHECK_N": "50", "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    committed = {p.name: p.read_bytes() for p in (ROOT / "results").glob("*.json")}
    report = tmp_path / "report"
    res = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--report", str(report)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "no CUDA GPU found: GPU stages skipped" in res.stdout
    assert re.search(r"^\| stage +\| setting +\| figure +\| target/ratio +\|$", res.stdout, re.M)
    rows = [ln.split("\t") for ln in (report / "results.tsv").read_text().splitlines()]
    assert not [r for r in rows if r[2].startswith("FAILED")], rows
    decode = [r for r in rows if r[0] == "decode" and r[1].startswith("opencv")]
    assert len(decode) == 1 and re.match(r"\d+ img/s \(50 images", decode[0][2]), decode
    assert any(r[0] == "train step" and "img/s end to end" in r[2] for r in rows), rows
    assert any(r[0] == "epoch" and " s by fit (train loop + val pass)" in r[2] for r in rows), rows
    assert any(r[0] == "detect step" and "(classifier " in r[2] for r in rows), rows
    assert sum(r[2] == "skipped" for r in rows) == 7  # cuda decode, probe, 4 train steps, epoch
    assert (report / "table.md").read_text().count("\n") == len(rows) + 2
    assert not list(tmp_path.glob("pneumolib_gpu_check*"))  # no work folder left behind
    # its train_step.py runs leave the committed figures alone (a test run writes no results/)
    assert {p.name: p.read_bytes() for p in (ROOT / "results").glob("*.json")} == committed


def test_tiled_epoch_cache_has_the_cache_format(demo_cache: Path, tmp_path: Path):
    gc = _gpu_check_module()
    big = gc.tile_cache(demo_cache, tmp_path / "big", n_train=150, n_val=40)
    idx, images, stats = read_index(big), open_images(big), read_stats(big)
    base_idx, base_images = read_index(demo_cache), open_images(demo_cache)
    assert images.shape == (190, *base_images.shape[1:]) and images.dtype == np.uint8
    assert list(idx.row) == list(range(190)) and idx.patientId.is_unique
    assert (idx.split == "train").sum() == 150 and (idx.split == "val").sum() == 40
    # row i is a copy of base row i % k, with that patient's target and boxes
    k = len(base_idx)
    for i in (0, k - 1, k, 189):
        b = base_idx.iloc[i % k]
        assert np.array_equal(images[i], base_images[b.row])
        assert idx.target[i] == b.target and idx.boxes[i] == b.boxes
    train = images[:150].astype(np.float64) / 255
    assert stats.n == 190 and stats.n_train == 150 and stats.size == images.shape[1]
    assert np.isclose(stats.mean, train.mean()) and np.isclose(stats.std, train.std())
    assert gc.tile_cache(demo_cache, tmp_path / "big", 150, 40) == tmp_path / "big"  # reused


def test_decode_agreement_of_a_cache_with_itself_and_with_a_shifted_copy(
    demo_cache: Path, tmp_path: Path
):
    gc = _gpu_check_module()
    assert gc._agreement(demo_cache, demo_cache) == (0.0, 0.0)
    other = gc.tile_cache(demo_cache, tmp_path / "copy", n_train=10, n_val=5)
    images = np.load(other / "images.npy", mmap_mode="r+")
    images[3] = np.clip(images[3].astype(int) + 2, 0, 255)  # one image 2 grey levels brighter
    images.flush()
    idx = read_index(other)
    idx["patientId"] = idx.patientId.str.rsplit("-", n=1).str[0]  # the base patients' ids
    idx.assign(boxes=idx.boxes.map(str)).to_csv(other / "index.csv", index=False)
    mean, worst = gc._agreement(demo_cache, other)
    assert 0 < worst <= 2 and np.isclose(mean, worst / 15, atol=0.01)


def test_a_quick_benchmark_run_writes_its_results_file_with_its_provenance(tmp_path: Path):
    args = ["--n", "64", "--size", "64", "--out-size", "32", "--images", "64", "--repeat", "1"]
    args += ["--work", str(tmp_path / "work"), "--results", str(tmp_path / "results")]
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/loader.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert re.search(r"^loader: package [\d,]+ img/s, course [\d,]+ img/s", res.stdout, re.M)
    record = json.loads((tmp_path / "results" / "loader.json").read_text())
    assert set(results.FIELDS) <= set(record)
    assert record["command"] == ["python", "benchmarks/loader.py", *args]  # argv as run
    assert set(results.VERSIONS) <= set(record["versions"]) and record["versions"]["torch"]
    assert set(results.MACHINE) <= set(record["machine"])
    assert record["machine"]["torch_threads"] == 1  # loader.py runs the consumer on one thread
    assert len(record["load_average"]) == 3
    summary = record["tables"]["summary"]
    assert summary["columns"] == ["benchmark", "package img/s", "baseline img/s", "ratio"]
    row = summary["rows"][0]
    assert row["ratio"] == pytest.approx(row["package img/s"] / row["baseline img/s"])
    rendered = results.render_markdown("loader", folders=[tmp_path / "results"])
    assert "--work DIR --results DIR` on " in rendered.splitlines()[-1]
