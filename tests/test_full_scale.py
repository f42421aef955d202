"""benchmarks/full_scale.py at a tiny scale: every stage runs, checks pass, the table is whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "full_scale.py"
STAGES = (
    "data",
    "preprocess",
    "train",
    "loader epoch",
    "evaluate val",
    "evaluate test",
    "cam test",
    "predict",
    "tune",
)


def test_rsna_patients_has_the_real_counts():
    sys.path.insert(0, str(SCRIPT.parent))
    from full_scale import rsna_patients

    p = rsna_patients(26_684, seed=0)
    assert len(p) == 26_684 and p.patientId.is_unique
    assert (p.n_boxes > 0).sum() == 6_012
    assert p.n_boxes.sum() + (p.n_boxes == 0).sum() == 30_227  # label rows
    assert p["class"].value_counts().to_dict() == {
        "No Lung Opacity / Not Normal": 11_821,
        "Normal": 8_851,
        "Lung Opacity": 6_012,
    }
    assert (p.view == "AP").sum() == 12_173
    assert ((p.n_boxes > 0) == (p["class"] == "Lung Opacity")).all()


@pytest.mark.slow
def test_full_scale_tiny_run(tmp_path):
    work = tmp_path / "work"
    cmd = [sys.executable, str(SCRIPT), "--n", "120", "--distinct", "24", "--work", str(work)]
    cmd += ["--dicom-size", "256", "--cache-size", "64", "--image-size", "32"]
    cmd += ["--steps", "1", "--predict-n", "12"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    table = (work / "results.md").read_text()
    assert table.strip() in r.stdout
    for stage in STAGES:
        assert f"| {stage} |" in table
    rows = json.loads((work / "results.json").read_text())["rows"]
    assert [row["stage"] for row in rows] == list(STAGES)
    assert all(row["rc"] == 0 and row["peak_pss_gb"] > 0 for row in rows)
    assert not (work / "raw").exists()  # without --keep the DICOMs are removed
