"""`python -m pneumolib demo --quick`: every stage runs and the report shows its results."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from card_check import check_card_against_run  # tests/ is on sys.path (its conftest)

from pneumolib.cli import main


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_resumes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    run = out / "runs" / "resnet18"

    headings = ["## The data", "## Training", "## Test split", "## AP and PA apart"]
    headings += ["## Most confident mistakes", "## Where the network looks", "## Sweep"]
    for heading in [*headings, "## Seconds"]:
        assert heading in report
    assert report.index("## The data") < report.index("## Sweep")
    assert "labels disagree with their image" in report
    assert "| AP |" in report and "| PA |" in report  # the views reported apart
    assert "3 epochs" in report and "raw_200" in report
    table = report.split("## Where the network looks")[1].split("## Sweep")[0]
    assert "pointing game" in table and "chance (box area)" in table
    assert all(f"\n{split} " in table for split in ("val", "test"))
    assert "calibration.json" in report.split("## Test split")[1]  # the measured effect
    for name in ("metrics_val.json", "metrics_test.json", "calibration.json", "cam_test.csv"):
        assert (run / name).is_file(), name
    assert (run / "figures" / "roc_test.png").is_file()
    assert (run / "figures" / "cam_test").is_dir()  # overlays (3 epochs may find no positive)
    assert (out / "sweep" / "heatmap.png").is_file()
    seeds = pd.read_csv(out / "sweep" / "seeds.csv")
    assert len(seeds) == 12 and set(seeds.seed) == {0, 1, 2}  # 2 x 2 grid, once per seed
    assert (seeds.state == "complete").all()
    sweep = report.split("## Sweep")[1]
    assert "within noise" in sweep or "holds" in sweep  # a verdict, with the spread
    card = check_card_against_run(run)  # every number on the demo's card is the run's own
    assert "**Trained on synthetic data" in card.split("\n## ")[0]  # said at the top
    times = json.loads((out / "report.json").read_text())["times"]
    assert set(times) == {"data + preprocess", "train", "evaluate", "cam", "sweep"}

    # Run again: every stage finds its output and nothing is trained again.
    best = (run / "best.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert (run / "best.pt").stat().st_mtime_ns == best
    assert json.loads((out / "report.json").read_text())["times"]["train"] < times["train"]
