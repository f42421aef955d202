"""Getting the RSNA competition data and checking it: the Kaggle token, the download, the layout.

`KaggleToken` holds the user's credentials with the key kept out of every repr and message;
`download_rsna` hands it to the Kaggle CLI in the child's environment (nothing is written),
echoes the CLI's progress with the key blanked out, and unzips into a folder that appears only
once `verify_layout` has passed. The only outside boundary is the `kaggle` executable.
`pneumolib.course.kaggle_token` decides where the token comes from, `pneumolib.course.colab`
the folders.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumolib.base.errors import UsageError
from pneumolib.base.progress import bar as progress_bar
from pneumolib.data.labels import CLASS_COLUMNS, CLASSES_CSV, LABEL_COLUMNS, LABELS_CSV
from pneumolib.data.labels import IMAGES_DIR as TRAIN_DIR

COMPETITION = "rsna-pneumonia-detection-challenge"
TEST_DIR = "stage_2_test_images"
N_TRAIN_DICOMS = 26_684  # stage 2 training images, one per patient
N_LABEL_ROWS = 30_227  # one row per box; negatives have one row with an empty box
MARKER = ".pneumolib_complete.json"  # provenance of a download, written before the final rename
MASK = "***"  # what a Kaggle key becomes in every message, repr and echoed line


@dataclass(frozen=True)
class KaggleToken:
    """A Kaggle API token and where it was found; the key never shows in a repr or a message.

    Made by `pneumolib.course.kaggle_token.find_kaggle_token`, the one rule for where it comes
    from; `download_rsna` hands it to the Kaggle CLI through `cli_env`.
    """

    source: str  # where it was found, for messages: a file, environment variables, Colab Secrets
    username: str
    key: str = field(repr=False)  # private: never printed, logged or written anywhere new

    def __repr__(self) -> str:
        return f"KaggleToken(source={self.source!r}, username={self.username!r}, key={MASK!r})"

    def cli_env(self) -> dict[str, str]:
        """The variables the Kaggle CLI reads its credentials from before any kaggle.json."""
        return {"KAGGLE_USERNAME": self.username, "KAGGLE_KEY": self.key}


class _KeyMask:
    """Blanks `key` out of a text stream that arrives in pieces, so a key split across two
    reads is caught too: the longest end of the text that could begin the key is held back
    until the next piece (or `flush`) shows whether it does."""

    def __init__(self, key: str | None, mask: str = MASK) -> None:
        self.key, self.mask, self._held = key or "", mask, ""

    def feed(self, text: str) -> str:
        """The part of everything fed so far that is safe to print now, key blanked out."""
        if not self.key:
            return text
        text = (self._held + text).replace(self.key, self.mask)
        keep = min(len(self.key) - 1, len(text))
        while keep and not self.key.startswith(text[-keep:]):
            keep -= 1
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What is still held back (the stream ended: it cannot become the key any more)."""
        text, self._held = self._held, ""
        return text


def _echo_masked(stream: Any, key: str | None, chunk: int = 4096) -> str:
    """Echo the bytes of `stream` to stdout as they come, `key` blanked out of everything
    printed; -> the last 2,000 characters printed (for an error message)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    mask, tail = _KeyMask(key), ""
    while True:
        data = stream.read1(chunk)
        text = mask.feed(decoder.decode(data, final=not data))
        if not data:
            text += mask.flush()
        tail = (tail + text)[-2000:]
        sys.stdout.write(text)
        sys.stdout.flush()
        if not data:
            return tail


def _run_streaming(cmd: list[str], token: KaggleToken) -> tuple[int, str]:
    """Run `cmd` with `token` in its environment, echoing its output as it comes (Kaggle's
    progress bar); -> (exit code, tail).

    The key is blanked out of everything echoed and returned, should a tool ever print it,
    even where it is split across two reads.
    """
    env = {**os.environ, **token.cli_env()}  # the key goes to the child only, never to a file
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    tail = _echo_masked(proc.stdout, token.key)
    return proc.wait(), tail


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


def _dicom_ids(folder: Path) -> set[str]:
    """File stems of the .dcm files in `folder` (one directory listing; empty if absent)."""
    if not folder.is_dir():
        return set()
    return {e.name[:-4] for e in os.scandir(folder) if e.name.endswith(".dcm")}


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:  # a zip, an image, a UTF-16 export ...
        raise ValueError(f"{path}: not a readable CSV ({type(e).__name__})") from None
    if not rows or rows[0] != list(columns):
        got = ",".join(rows[0]) if rows else "an empty file"
        raise ValueError(f"{path}: expected columns {','.join(columns)}, got {got}")
    bad = next((i for i, r in enumerate(rows) if len(r) != len(columns)), None)
    if bad is not None:
        raise ValueError(f"{path}: line {bad + 1} has {len(rows[bad])} fields, not {len(columns)}")
    return rows[1:]


def verify_layout(raw: str | Path, expect_full: bool = False) -> dict[str, int]:
    """Check that `raw` is an unzipped RSNA folder; -> counts of DICOMs, rows, patients.

    Always: stage_2_train_images/*.dcm and both label CSVs exist with RSNA's columns, and every
    labelled patient has a DICOM. With `expect_full`: exactly 26,684 DICOMs and 30,227 label rows.
    Raises a one-line error naming what is off.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw}: data folder does not exist")
    for name in (LABELS_CSV, CLASSES_CSV):
        if not (raw / name).is_file():
            raise FileNotFoundError(f"{raw}: missing {name} (not an unzipped RSNA folder?)")
    dicoms = _dicom_ids(raw / TRAIN_DIR)
    n_dcm = len(dicoms)
    if n_dcm == 0:
        raise FileNotFoundError(f"{raw}: no .dcm files in {TRAIN_DIR}/")
    labels = _read_csv(raw / LABELS_CSV, LABEL_COLUMNS)
    classes = _read_csv(raw / CLASSES_CSV, CLASS_COLUMNS)
    patients = {r[0] for r in labels}
    missing = sorted(patients - dicoms)
    if missing:
        raise FileNotFoundError(
            f"{raw}: {len(missing)} labelled patients have no DICOM in {TRAIN_DIR}/, "
            f"e.g. {missing[0]}.dcm"
        )
    counts = {
        "train_dicoms": n_dcm,
        "label_rows": len(labels),
        "class_rows": len(classes),
        "patients": len(patients),
        "positive_patients": len({r[0] for r in labels if r[5] == "1"}),
        "test_dicoms": len(_dicom_ids(raw / TEST_DIR)),
    }
    if expect_full:
        if n_dcm != N_TRAIN_DICOMS:
            raise ValueError(
                f"{raw}: expected {N_TRAIN_DICOMS:,} DICOMs in {TRAIN_DIR}/, found {n_dcm:,} "
                "(incomplete download or unzip?)"
            )
        if len(labels) != N_LABEL_ROWS:
            raise ValueError(
                f"{raw / LABELS_CSV}: expected {N_LABEL_ROWS:,} rows, found {len(labels):,}"
            )
    return counts


def verified_counts(raw: Path, expect_full: bool) -> dict[str, int] | None:
    """Counts if `raw` holds verified RSNA data, else None (never raises)."""
    try:
        return verify_layout(raw, expect_full)
    except (OSError, ValueError):
        return None


def _data_root(folder: Path) -> Path:
    """The folder holding the label CSV: `folder` itself or its single subfolder."""
    if (folder / LABELS_CSV).exists():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir()]
    if len(subs) == 1 and (subs[0] / LABELS_CSV).exists():
        return subs[0]
    return folder


def _unzip(zip_path: Path, dest: Path) -> None:
    """Extract every member of `zip_path` into `dest`, with a progress bar."""
    with zipfile.ZipFile(zip_path) as zf:
        members = zf.infolist()
        for m in progress_bar(members, desc=f"unzip {zip_path.name}", unit="file"):
            zf.extract(m, dest)  # zipfile strips absolute paths and '..' from member names


def download_rsna(
    raw: str | Path,
    competition: str = COMPETITION,
    expect_full: bool = True,
    *,
    token: KaggleToken | None = None,
) -> Path:
    """Download the competition with the Kaggle CLI, unzip and verify it into `raw`; -> raw.

    Resumable and never half-done: a verified `raw` is left alone (re-running costs a directory
    listing); the zip waits in a sibling folder until it unzips into a temporary sibling that is
    verified and then renamed to `raw`, marker included, in one step.
    Running the CLI needs `token` (`pneumolib.course.kaggle_token.find_kaggle_token`); it is
    handed to the CLI as KAGGLE_USERNAME/KAGGLE_KEY in the child's environment only.
    """
    raw = Path(raw)
    try:
        counts = verify_layout(raw, expect_full)
    except (OSError, ValueError) as e:
        if raw.is_dir() and any(raw.iterdir()):  # someone else's files: never delete them
            raise RuntimeError(
                f"{raw} exists but is not complete RSNA data ({e}); "
                "move or delete it, or set PNEUMOLIB_RAW to another folder"
            ) from None
    else:
        print(f"RSNA data already at {raw} ({counts['train_dicoms']:,} DICOMs): skipping download")
        return raw
    dl_dir = raw.parent / f".{raw.name}-download"  # survives a failed unzip: no re-download
    zip_path = dl_dir / f"{competition}.zip"
    if zipfile.is_zipfile(zip_path):
        print(f"using the zip already downloaded at {zip_path}")
    else:
        kaggle = shutil.which("kaggle")
        if kaggle is None:
            raise RuntimeError("the kaggle command is not on PATH: pip install kaggle")
        if token is None:
            raise UsageError(f"downloading {competition} needs a Kaggle token: none was given")
        dl_dir.mkdir(parents=True, exist_ok=True)
        print(f"downloading {competition} (about 3.7 GB) to {dl_dir} ...")
        cmd = [kaggle, "competitions", "download", "-c", competition, "-p", str(dl_dir)]
        rc, tail = _run_streaming(cmd, token)
        if rc != 0:
            raise RuntimeError(
                f"kaggle download of {competition} failed (exit {rc}: {_last_line(tail)}); "
                f"accept the competition rules at https://www.kaggle.com/competitions/"
                f"{competition}/rules with the account of your token, and check that "
                f"the token from {token.source} is your current API token"
            )
        if not zipfile.is_zipfile(zip_path):
            raise RuntimeError(f"kaggle finished but {zip_path} is missing or not a zip file")
    tmp = raw.parent / f".{raw.name}-partial"
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of an interrupted unzip
    _unzip(zip_path, tmp)
    root = _data_root(tmp)
    counts = verify_layout(root, expect_full)
    stamp = {"counts": counts, "source": competition, "time": time.strftime("%Y-%m-%d %H:%M")}
    (root / MARKER).write_text(json.dumps(stamp))
    if raw.exists():
        raw.rmdir()  # empty (checked above)
    raw.parent.mkdir(parents=True, exist_ok=True)
    os.replace(root, raw)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(dl_dir, ignore_errors=True)  # the zip is no longer needed: free 3.7 GB
    print(f"unzipped and verified {counts['train_dicoms']:,} DICOMs into {raw}")
    return raw
