"""One config truth: every report of a run (the model card, the training curves' table) uses the
config its checkpoint was trained with, read without torch from RUN/checkpoint_config.json; a
config.json edited after training changes nothing reported and is named in one warning line."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from card_check import sections, tables  # tests/ on sys.path

from pneumolib.base.config import demo_config
from pneumolib.base.rundir import (
    CHECKPOINT_CONFIG,
    record_checkpoint_config,
    trained_config,
)
from pneumolib.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _edit(run: Path, **changes: object) -> None:
    """Change fields of RUN/config.json by hand, as a user would."""
    path = run / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes, indent=2))


def _details(card: str) -> dict[str, str]:
    return {r["field"]: r["value"] for r in tables(sections(card)["Model details"])[0]}


def _lines(err: str, prefix: str) -> list[str]:
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith(prefix)]


def _fake_run(root: Path) -> Path:
    """config.json, a stand-in best.pt and the record train writes for it (no training)."""
    run = root / "run"
    run.mkdir(parents=True)
    cfg = demo_config(root, out=str(run), image_size=96)
    cfg.save(run / "config.json")
    (run / "best.pt").write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    record_checkpoint_config(run, "best.pt", sha256=sha, config=cfg.to_dict())
    return run


# --------------------------------------------------------------------------- the rule
def test_an_unedited_run_has_no_message(tmp_path: Path) -> None:
    found = trained_config(_fake_run(tmp_path))
    assert found.message is None and found.source == CHECKPOINT_CONFIG
    assert found.config.image_size == 96


def test_an_edit_is_named_and_ignored(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    _edit(run, image_size=256, lr=0.5)
    found = trained_config(run)
    assert found.config.image_size == 96  # as trained
    assert found.message == (
        f"warning: {run / 'config.json'} differs from the config best.pt was trained with "
        "(image_size: 96 -> 256, lr: 0.002 -> 0.5); reports use best.pt's"
    )


def test_fields_that_change_no_report_are_not_named(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    _edit(run, device="cpu", workers=3, patience=2)  # a resume on another machine may differ
    assert trained_config(run).message is None


def test_a_broken_config_json_is_named_and_the_record_still_reports(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    (run / "config.json").write_text('{"image_size": 25')
    found = trained_config(run)
    assert found.config.image_size == 96
    assert found.message is not None and found.message.startswith("warning: ")
    assert "config.json is not valid JSON" in found.message


def test_a_replaced_checkpoint_or_a_missing_record_falls_back_with_one_line(
    tmp_path: Path,
) -> None:
    run = _fake_run(tmp_path)
    _edit(run, image_size=256)
    (run / "best.pt").write_bytes(b"other weights")  # not the checkpoint the record describes
    found = trained_config(run)
    assert found.config.image_size == 256 and found.source == "config.json"
    assert found.message is not None and "does not describe the best.pt" in found.message
    (run / CHECKPOINT_CONFIG).unlink()  # a run folder from before the record
    found = trained_config(run)
    assert found.config.image_size == 256
    assert found.message is not None and found.message.startswith("note: ")
    assert "\n" not in found.message


def test_a_copied_checkpoint_keeps_its_config(tmp_path: Path) -> None:
    """last.pt copied over best.pt (faults.md's advice the other way round) is still known."""
    run = _fake_run(tmp_path)
    cfg = demo_config(tmp_path, out=str(run), image_size=80).to_dict()
    (run / "last.pt").write_bytes(b"later weights")
    record_checkpoint_config(
        run, "last.pt", sha256=hashlib.sha256(b"later weights").hexdigest(), config=cfg
    )
    shutil.copy(run / "last.pt", run / "best.pt")
    assert trained_config(run).config.image_size == 80


# --------------------------------------------------------------------------- a trained run
@pytest.fixture
def trained(demo_run: Path, tmp_path: Path) -> Path:
    """conftest's demo_run (trained at 64 px), copied: the tests write to it."""
    return Path(shutil.copytree(demo_run, tmp_path / "run"))


@pytest.mark.slow
def test_train_records_each_checkpoints_config(trained: Path) -> None:
    record = json.loads((trained / CHECKPOINT_CONFIG).read_text())
    for name in ("best.pt", "last.pt"):
        assert record[name]["sha256"] == hashlib.sha256((trained / name).read_bytes()).hexdigest()
        assert record[name]["config"]["image_size"] == 64


@pytest.mark.slow
def test_the_card_reports_the_trained_config_after_an_edit(trained: Path, capsys) -> None:
    assert main(["card", "--run", str(trained)]) in (0, None)
    out, err = capsys.readouterr()
    assert not _lines(err, "warning:") and not _lines(err, "note:")  # unedited: silent
    before = (trained / "MODEL_CARD.md").read_text()
    assert _details(before)["input size"].startswith("64 px")

    _edit(trained, image_size=256)
    assert main(["card", "--run", str(trained)]) in (0, None)
    out, err = capsys.readouterr()
    card = (trained / "MODEL_CARD.md").read_text()
    assert _details(card)["input size"].startswith("64 px")  # as trained, not as edited
    assert "From checkpoint_config.json" in sections(card)["Model details"]
    warnings = _lines(err, "warning:")
    assert len(warnings) == 1, err
    assert f"{trained / 'config.json'}" in warnings[0] and "image_size: 64 -> 256" in warnings[0]
    assert "warning" not in out


@pytest.mark.slow
def test_evaluate_test_names_the_edit_once(trained: Path, capsys) -> None:
    _edit(trained, image_size=256)
    assert main(["evaluate", "--run", str(trained), "--split", "test", "--n-boot", "50"]) in (
        0,
        None,
    )
    out, err = capsys.readouterr()
    assert len(_lines(err, "warning:")) == 1, err  # the card is written once, warned once
    assert _details((trained / "MODEL_CARD.md").read_text())["input size"].startswith("64 px")


@pytest.mark.slow
def test_best_epochs_reports_the_trained_config(trained: Path, capsys) -> None:
    from pneumolib.train.curves import best_epochs

    _edit(trained, mode="finetune")
    table = best_epochs([trained])
    assert table.loc["run", "mode"] == "scratch"  # demo preset, as trained
    assert len(_lines(capsys.readouterr().err, "warning:")) == 1


@pytest.mark.slow
def test_the_card_is_written_without_torch(trained: Path) -> None:
    _edit(trained, image_size=256)
    code = (
        "import sys; from pneumolib.evaluate.card import write_card; "
        f"write_card({str(trained)!r}); print('torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
    assert len(_lines(res.stderr, "warning:")) == 1
    assert _details((trained / "MODEL_CARD.md").read_text())["input size"].startswith("64 px")
