"""Fault injection: each fault pneumolib handles today ends in one named line, and keeps what
was already done. Faults tested well elsewhere are listed here, not tested twice:

| fault | where it is tested |
| --- | --- |
| corrupt JPEG frame, truncated DICOM (preprocess: errors.csv, rest cached) | test_preprocess::test_bad_files_land_in_errors_csv |
| truncated / garbage / pixel-less DICOM (one-line DicomError naming the file) | test_dicom::test_truncated_file, test_garbage_bytes, test_dicom_without_pixel_data |
| non-DICOM file among the images (preprocess) | here: test_non_dicom_image_is_recorded_and_the_rest_cached |
| non-DICOM / broken PNG given to predict (one stderr line, rest scored) | test_predict::test_unreadable_file_is_reported_and_the_rest_scored, test_cli_subprocess_boundary |
| truncated DICOM given to predict | here: test_predict_names_a_truncated_dicom_and_scores_the_rest |
| unreadable checkpoint given to predict | test_predict::test_bad_checkpoint_is_a_one_line_error |
| label rows without images, images without labels | test_preprocess::test_bad_files_land_in_errors_csv; layout check: test_colab::test_verify_layout_names_what_is_off |
| label CSV with a missing column / bad value (file, line, column) | test_data::test_load_labels_errors_name_file_line_column; CLI: test_preprocess::test_cli_wrong_csv_exits_2_with_one_line |
| label file absent | test_data::test_missing_label_file, test_preprocess::test_missing_label_file_is_refused |
| label file that is not a CSV (binary, empty) | here: test_label_file_that_is_not_a_csv_is_one_line |
| preprocess crash or full disk mid-build (resumes to the identical cache) | test_preprocess::test_interrupted_build_resumes_to_the_identical_cache |
| Ctrl-C during preprocess, through the CLI (exit 130, CACHE.partial named) | here: test_interrupted_preprocess_cli_resumes_to_the_identical_cache |
| cache made with other parameters (refused unless --rebuild) | test_preprocess::test_other_params_refused_unless_rebuild |
| interrupt during training (resume equals uninterrupted) | test_train::test_interrupted_then_resumed_equals_uninterrupted |
| Ctrl-C during training through the CLI (exit 130, RUN named; history intact) | here: test_interrupted_training_cli_resumes_with_history_intact |
| resuming a run with other settings (refused) | test_train::test_resume_refuses_other_settings |
| sweep worker killed (SIGKILL): finished trials kept, the point resumed | test_tune::test_killed_worker_resumes_without_redoing_finished_points |
| sweep worker hung with a live heartbeat (re-queued) | test_tune::test_hung_worker_with_a_fresh_heartbeat_is_reaped_for_no_progress |
| Ctrl-C during a sweep (trial failed at once, finished kept) | here: test_interrupted_sweep_keeps_finished_trials |
| Kaggle key in the download's output, split across reads | test_colab::test_key_split_across_reads_is_never_printed |
| invalid kaggle.json (never echoed) | test_colab::test_invalid_kaggle_json_is_not_echoed |
"""  # noqa: E501 (a table: one row a line)

from __future__ import annotations

import contextlib
import functools
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from pneumolib import tune
from pneumolib.base.config import Config
from pneumolib.cli import main
from pneumolib.data import kaggle
from pneumolib.data import preprocess as pre
from pneumolib.data.labels import load_labels
from pneumolib.data.synth import make_demo_data
from pneumolib.train import loop as train

IMAGES, LABELS = pre.IMAGES_DIR, pre.LABELS_CSV
N, SIZE, CACHE = 40, 64, 32  # 40 phantoms of 64 px, cached at 32 px: every split has a positive
TINY = dict(  # about a second a run on 2 CPU cores: only the last layer learns
    model="resnet18",
    mode="feature-extraction",
    weights="none",
    cache_size=CACHE,
    image_size=CACHE,
    max_steps_per_epoch=1,
    batch_size=8,
    workers=0,
    device="cpu",
    eval_batch_size=64,
    schedule="none",
)


def cli_args(cfg: dict) -> list[str]:
    """`--field value` options for the train command."""
    return [a for k, v in cfg.items() for a in ("--" + k.replace("_", "-"), str(v))]


def one_error_line(err: str, *names: str) -> str:
    """The single `error:` line of stderr (no traceback; progress bars may share stderr),
    asserted to name each of `names`."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def ctrl_c_line(folder: Path) -> str:
    """The line Ctrl-C prints in every command (`cli.interrupt`)."""
    return f"interrupted: {folder} keeps the work done so far; re-run the same command to resume"


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean RSNA-shaped folder (read-only)."""
    return make_demo_data(tmp_path_factory.mktemp("faults") / "raw", n=N, size=SIZE, seed=2)


@pytest.fixture(scope="module")
def cache(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted cache of `raw` (the reference for resumed builds; read-only)."""
    out = tmp_path_factory.mktemp("faults") / "cache"
    return pre.build_cache(raw, out, size=CACHE, workers=1, progress=False)


# --- data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"PK\x03\x04\x00\xff\xfe\x00" * 50, b""], ids=["zip", "empty"])
def test_label_file_that_is_not_a_csv_is_one_line(tmp_path: Path, capsys, content: bytes) -> None:
    bad = tmp_path / "raw"
    (bad / IMAGES).mkdir(parents=True)
    (bad / LABELS).write_bytes(content)
    out = tmp_path / "cache"
    assert main(["preprocess", "--raw", str(bad), "--out", str(out), "--size", "32"]) == 2
    one_error_line(capsys.readouterr().err, str(bad / LABELS))
    assert not out.exists() and not out.with_name("cache.partial").exists()
    (bad / kaggle.CLASSES_CSV).write_bytes(content)
    (bad / IMAGES / "a.dcm").write_bytes(b"")
    with pytest.raises(ValueError) as err:  # the RSNA layout check names the file too
        kaggle.verify_layout(bad)
    assert str(bad / LABELS) in str(err.value) and "\n" not in str(err.value)


def test_non_dicom_image_is_recorded_and_the_rest_cached(raw: Path, tmp_path: Path, capsys):
    broken = tmp_path / "raw"
    shutil.copytree(raw, broken)
    ids = load_labels(broken / LABELS).patientId.tolist()
    text, jpeg = broken / IMAGES / f"{ids[4]}.dcm", broken / IMAGES / f"{ids[9]}.dcm"
    text.write_text("patientId,Target\nnot,an image\n")  # a CSV saved under a DICOM's name
    jpeg.write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))  # a bare JPEG header, no DICOM
    out = tmp_path / "cache"
    args = ["preprocess", "--raw", str(broken), "--out", str(out), "--size", str(CACHE)]
    assert main([*args, "--workers", "1"]) == 0
    printed = capsys.readouterr()
    assert "2 unreadable" in printed.out and str(out / "errors.csv") in printed.out
    assert "Traceback" not in printed.err
    errors = pd.read_csv(out / "errors.csv").set_index("patientId")
    assert sorted(errors.index) == sorted([ids[4], ids[9]])
    for f in (text, jpeg):
        assert errors.loc[f.stem, "path"] == str(f)
        assert "not a readable DICOM" in errors.loc[f.stem, "error"]
    index = pd.read_csv(out / "index.csv")
    assert len(index) == N - 2 and not set(index.patientId) & set(errors.index)


# --- interrupted work -------------------------------------------------------------------------


def test_interrupted_preprocess_cli_resumes_to_the_identical_cache(
    raw: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real, calls = pre._process_chunk, []

    def interrupted(job: tuple) -> list[dict]:
        calls.append(job)
        result = real(job)  # the 3rd chunk reaches the memory map but never the log
        if len(calls) == 3:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(pre, "build_cache", functools.partial(pre.build_cache, chunk=8))
    monkeypatch.setattr(pre, "_process_chunk", interrupted)
    out = tmp_path / "cache"
    args = ["preprocess", "--raw", str(raw), "--out", str(out), "--size", str(CACHE)]
    assert main([*args, "--workers", "1"]) == 130  # as every command (was 2)
    part = out.with_name("cache.partial")
    assert capsys.readouterr().err.strip().splitlines()[-1] == ctrl_c_line(part)
    assert not out.exists()
    monkeypatch.setattr(pre, "_process_chunk", real)
    assert main([*args, "--workers", "1"]) == 0
    assert f"16 of {N} images already done" in capsys.readouterr().out
    for name in ("images.npy", "index.csv"):
        assert (out / name).read_bytes() == (cache / name).read_bytes(), name
    assert not out.with_name("cache.partial").exists()


@pytest.fixture(scope="module")
def interrupted_run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`train` through the CLI, Ctrl-C in epoch 2 of 3, then the same command again."""
    out = tmp_path_factory.mktemp("faults") / "run"
    args = ["train", *cli_args({**TINY, "cache": cache, "out": out, "epochs": 3})]
    real = train.fit

    def crash(event: str, state: dict) -> None:
        if event == "step" and state["epoch"] == 1:  # after epoch 1's last.pt was written
            raise KeyboardInterrupt

    err = io.StringIO()  # capsys is per test: gather stderr here
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(train, "fit", lambda cfg: real(cfg, callback=crash, progress=False))
        first = main(args)
    before = pd.read_csv(out / "metrics.csv")
    second = main(args)  # the same command again, uninterrupted
    return {"out": out, "codes": (first, second), "err": err.getvalue(), "before": before}


@pytest.mark.slow
def test_interrupted_training_cli_resumes_with_history_intact(interrupted_run: dict) -> None:
    out = interrupted_run["out"]
    assert interrupted_run["codes"] == (130, 0)
    lines = interrupted_run["err"].strip().splitlines()  # (no progress bar in this run)
    assert lines == [ctrl_c_line(out)]  # the same form as preprocess: the folder named
    before, after = interrupted_run["before"], pd.read_csv(out / "metrics.csv")
    assert before.epoch.tolist() == [1] and after.epoch.tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(after.iloc[:1], before)  # epoch 1 kept as it was
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 3
    assert (out / "best.pt").exists()


@pytest.mark.slow
def test_predict_names_a_truncated_dicom_and_scores_the_rest(
    interrupted_run: dict, raw: Path, tmp_path: Path, capsys
) -> None:
    good = sorted((raw / IMAGES).glob("*.dcm"))[:2]
    cut = tmp_path / "cut.dcm"
    data = good[0].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    csv = tmp_path / "p.csv"
    ckpt = str(interrupted_run["out"] / "best.pt")
    args = ["predict", "--checkpoint", ckpt, str(good[0]), str(cut), str(good[1])]
    assert main([*args, "--out", str(csv), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and str(cut) in errors[0] and "truncated" in errors[0]
    assert "Traceback" not in err
    scored = pd.read_csv(csv)
    assert scored.file.tolist() == [str(good[0]), str(good[1])]
    assert np.all((scored.probability >= 0) & (scored.probability <= 1))


@pytest.mark.slow
def test_interrupted_sweep_keeps_finished_trials(cache: Path, tmp_path: Path) -> None:
    cfg = Config(cache=str(cache), out=str(tmp_path / "sweep"), **{**TINY, "epochs": 2})
    seen: list[str] = []

    def interrupt_second(event: str, state: dict) -> None:
        if event == "epoch" and state["run"] not in seen:
            seen.append(state["run"])
        if len(seen) == 2:  # the second point, after its first epoch's checkpoint
            raise KeyboardInterrupt

    kw = dict(max_micro_batch=8, progress=False)
    with pytest.raises(KeyboardInterrupt):
        tune.sweep(cfg, batch_sizes=[4, 8], lrs=[1e-3], callback=interrupt_second, **kw)
    study_dir = tmp_path / "sweep" / "grid"
    log = tune.sweep_log(study_dir)
    done, killed = seen
    assert log.event[log.run == done].tolist() == ["start", "complete"]
    assert log.event[log.run == killed].tolist() == ["start", "interrupted"]
    study = tune.load_sweep(tmp_path / "sweep")
    states = {t.user_attrs["run"]: t.state for t in study.get_trials()}
    assert states == {done: TrialState.COMPLETE, killed: TrialState.FAIL}  # no wait for grace
    mtime = (study_dir / done / "metrics.csv").stat().st_mtime_ns

    table = tune.sweep(cfg, batch_sizes=[4, 8], lrs=[1e-3], **kw)  # the same call again
    assert sorted(table.run) == sorted(seen) and set(table.state) == {"complete"}
    new = tune.sweep_log(study_dir).iloc[len(log) :]
    assert done not in set(new.run)  # finished: neither redone nor touched
    assert (study_dir / done / "metrics.csv").stat().st_mtime_ns == mtime
    resumed = new[new.run == killed]
    assert resumed.event.tolist() == ["resume", "complete"]
    assert resumed.detail.iloc[0].startswith("epoch 1/2")
    assert pd.read_csv(study_dir / killed / "metrics.csv").epoch.tolist() == [1, 2]
