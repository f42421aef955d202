"""From a fresh Colab runtime (or a laptop) to the RSNA data on local disk, in a few calls.

Colab: Drive is mounted at /content/drive and holds what must outlive a session (kaggle.json,
the cache, the runs); the raw competition data goes to the runtime's local disk (/content/rsna)
because reading 26,684 small files through Drive is slow. Outside Colab every step falls back to
local folders (./pneumolib_data, or PNEUMOLIB_HOME) and says so, and without Kaggle access the
`demo` profile uses synthetic RSNA-shaped data from `pneumolib.synth`.

`setup()` runs every step and prints what it did; notebook 00 calls the steps one per cell.
The only outside boundaries are the `google.colab` module and the `kaggle` executable.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumolib.config import Config, demo_config, rsna_config
from pneumolib.progress import bar as progress_bar

COMPETITION = "rsna-pneumonia-detection-challenge"
TRAIN_DIR = "stage_2_train_images"
TEST_DIR = "stage_2_test_images"
LABELS_CSV = "stage_2_train_labels.csv"
CLASSES_CSV = "stage_2_detailed_class_info.csv"
LABEL_COLUMNS = ["patientId", "x", "y", "width", "height", "Target"]
CLASS_COLUMNS = ["patientId", "class"]
N_TRAIN_DICOMS = 26_684  # stage 2 training images, one per patient
N_LABEL_ROWS = 30_227  # one row per box; negatives have one row with an empty box
MARKER = ".pneumolib_complete.json"  # provenance of a download, written before the final rename
DRIVE_FOLDER = "pneumolib"  # under MyDrive
CACHE_FILES = ("images.npy", "index.csv", "stats.json")  # a complete cache (preprocess)
DEMO_DATA = {"n": 300, "size": 256, "seed": 0}  # the demo folder every notebook uses


@dataclass
class Paths:
    """Every folder the notebooks use, decided in one place (`default_paths`)."""

    root: Path  # persistent home: Drive folder in Colab, ./pneumolib_data or PNEUMOLIB_HOME locally
    raw: Path  # unzipped RSNA competition data, on local disk (fast small-file reads)
    cache: Path  # preprocessed caches (persistent: on Drive in Colab)
    runs: Path  # training runs: checkpoints, metrics (persistent: on Drive in Colab)
    kaggle_json: Path  # the user's Kaggle API token, kept beside the cache (never printed)
    demo_root: Path  # home of the `demo` profile: demo_config(demo_root) reads raw/cache/runs here
    raw_demo: Path  # synthetic RSNA-shaped data for the `demo` profile
    drive: Path | None = None  # Drive mount point in Colab; None outside Colab

    def describe(self, profile: str = "rsna") -> str:
        """The folders `profile` uses as aligned `name: path` lines, for printing."""
        cfg = config_for(profile, self)
        rows = {"raw": cfg.raw, "cache": cfg.cache, "runs": Path(cfg.out).parent}
        rows["kaggle.json"] = f"{self.kaggle_json}" + (
            " (not used by the demo profile)" if profile == "demo" else ""
        )
        if self.drive is not None:
            rows["drive"] = self.drive
        return "\n".join(f"{k:>11}: {v}" for k, v in rows.items())


@dataclass
class SetupResult:
    """What `setup` found: the chosen profile, its raw folder and the counts it verified."""

    profile: str  # "rsna" or "demo"
    raw: Path  # the raw folder of that profile
    paths: Paths
    counts: dict[str, int]


def in_colab() -> bool:
    """True inside Google Colab (the `google.colab` module imports)."""
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def default_paths(colab: bool | None = None, *, content: str | Path = "/content") -> Paths:
    """The folders for this machine; `colab=None` detects Colab.

    Colab: root = CONTENT/drive/MyDrive/pneumolib (Drive), raw = CONTENT/rsna (local disk).
    Locally: root = $PNEUMOLIB_HOME or ./pneumolib_data, raw = ROOT/rsna, demo_root =
    $PNEUMOLIB_HOME or ./pneumolib_demo. $PNEUMOLIB_RAW overrides raw on either.
    `content` is Colab's working folder; tests point it at a temporary one.
    """
    colab = in_colab() if colab is None else colab
    home = os.environ.get("PNEUMOLIB_HOME")
    if colab:
        content = Path(content)
        drive = content / "drive"
        root = drive / "MyDrive" / DRIVE_FOLDER
        raw = content / "rsna"
        demo_root = content / "pneumolib_demo"  # local disk: demo data is cheap to remake
    else:
        drive = None
        root = Path(home) if home else Path("pneumolib_data")
        raw = root / "rsna"
        demo_root = Path(home) if home else Path("pneumolib_demo")
    if os.environ.get("PNEUMOLIB_RAW"):
        raw = Path(os.environ["PNEUMOLIB_RAW"])
    return Paths(
        root=root,
        raw=raw,
        cache=root / "cache",
        runs=root / "runs",
        kaggle_json=root / "kaggle.json",
        demo_root=demo_root,
        raw_demo=demo_root / "raw",
        drive=drive,
    )


def config_for(profile: str, paths: Paths, **changes: Any) -> Config:
    """The preset for `profile` ("demo" | "rsna") with its folders taken from `paths`."""
    if profile == "demo":
        return demo_config(paths.demo_root, **changes)
    if profile == "rsna":
        return rsna_config(paths.root, **{"raw": str(paths.raw), **changes})
    raise ValueError(f"profile: expected 'demo' or 'rsna', got {profile!r}")


def mount_drive(mountpoint: str | Path | None = None) -> bool:
    """Mount Google Drive at `mountpoint` (default /content/drive) inside Colab; -> whether it did.

    Outside Colab it skips the mount and says so.
    """
    if not in_colab():
        print("not in Colab: skipping the Drive mount; local folders are used instead")
        return False
    from google.colab import drive

    mountpoint = "/content/drive" if mountpoint is None else mountpoint
    drive.mount(str(mountpoint))
    print(f"Drive mounted at {mountpoint}")
    return True


def gpu_report() -> str:
    """One line naming the GPU(s) and their memory, or saying that training runs on the CPU."""
    import torch  # imported here: a slow import that only this step needs

    if not torch.cuda.is_available():
        hint = " (Runtime > Change runtime type > GPU)" if in_colab() else ""
        return f"no GPU: CPU only{hint}"
    n = torch.cuda.device_count()
    props = torch.cuda.get_device_properties(0)
    return f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB ({n} device{'s' * (n > 1)})"


def kaggle_config_dir() -> Path:
    """Where the Kaggle CLI reads kaggle.json: $KAGGLE_CONFIG_DIR or ~/.kaggle."""
    env = os.environ.get("KAGGLE_CONFIG_DIR")
    return Path(env) if env else Path.home() / ".kaggle"


def install_kaggle_credentials(src: str | Path) -> Path:
    """Copy the user's kaggle.json to where the Kaggle CLI reads it, mode 600; returns that path.

    The token is checked (JSON with "username" and "key") but its content is never printed,
    logged or put into an error message.
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(
            f"kaggle.json not found at {src}: on kaggle.com open Settings > API > "
            "'Create New Token' and put the downloaded kaggle.json there"
        )
    data = src.read_bytes()
    try:
        token = json.loads(data)
    except ValueError:
        token = None  # the parser's message may quote the file: never show it
    ok = isinstance(token, dict) and all(
        isinstance(token.get(k), str) and token.get(k) for k in ("username", "key")
    )
    if not ok:
        raise ValueError(
            f"{src} is not a valid kaggle.json: expected JSON with non-empty "
            '"username" and "key" (make a new token on kaggle.com > Settings > API)'
        )
    dest_dir = kaggle_config_dir()
    dest_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    dest = dest_dir / "kaggle.json"
    tmp = dest_dir / f".kaggle.json.tmp-{os.getpid()}"
    # Created with mode 600 from the start, so the token is never readable by others.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, dest)
    print(f"Kaggle credentials installed at {dest} (mode 600)")
    return dest


def _installed_key() -> str | None:
    try:
        key = json.loads((kaggle_config_dir() / "kaggle.json").read_bytes()).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) and key else None


class _KeyMask:
    """Blanks `key` out of a text stream that arrives in pieces, so a key split across two
    reads is caught too: the longest end of the text that could begin the key is held back
    until the next piece (or `flush`) shows whether it does."""

    def __init__(self, key: str | None, mask: str = "***") -> None:
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


def _run_streaming(cmd: list[str]) -> tuple[int, str]:
    """Run `cmd`, echoing its output as it comes (Kaggle's progress bar); -> (exit code, tail).

    The installed Kaggle key is blanked out of everything echoed and returned, should a tool
    ever print it, even where it is split across two reads.
    """
    key = _installed_key()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    tail = _echo_masked(proc.stdout, key)
    return proc.wait(), tail


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


def _dicom_ids(folder: Path) -> set[str]:
    """File stems of the .dcm files in `folder` (one directory listing; empty if absent)."""
    if not folder.is_dir():
        return set()
    return {e.name[:-4] for e in os.scandir(folder) if e.name.endswith(".dcm")}


def _read_csv(path: Path, columns: list[str]) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:  # a zip, an image, a UTF-16 export ...
        raise ValueError(f"{path}: not a readable CSV ({type(e).__name__})") from None
    if not rows or rows[0] != columns:
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


def _verified(raw: Path, expect_full: bool) -> dict[str, int] | None:
    """Counts if `raw` holds verified RSNA data, else None (never raises)."""
    try:
        return verify_layout(raw, expect_full)
    except (OSError, ValueError):
        return None


def choose_profile(paths: Paths, *, allow_download: bool = False, expect_full: bool = True) -> str:
    """ "rsna" where the real data is verified at paths.raw or its cache is built, else "demo".

    Prints the choice and why: the first line a notebook shows.

    With `allow_download` (notebook 00), "rsna" also where the data can be fetched: in Colab
    (a kaggle.json is then required) or where paths.kaggle_json exists.
    """
    if _verified(paths.raw, expect_full) is not None:
        print(f"profile: rsna (RSNA data verified at {paths.raw})")
        return "rsna"
    cache = Path(config_for("rsna", paths).cache)
    if all((cache / f).is_file() for f in CACHE_FILES):  # a new Colab session: raw is gone
        print(f"profile: rsna (RSNA cache found at {cache})")
        return "rsna"
    if allow_download and (paths.drive is not None or paths.kaggle_json.is_file()):
        print(f"profile: rsna (will download the RSNA data to {paths.raw})")
        return "rsna"
    why = f"no verified RSNA data at {paths.raw}"
    if allow_download:
        why += f", not in Colab and no kaggle.json at {paths.kaggle_json}"
    print(f"profile: demo ({why}; using synthetic demo data at {paths.raw_demo})")
    return "demo"


def _data_root(folder: Path) -> Path:
    """The folder holding the label CSV: `folder` itself or its single subfolder."""
    if (folder / LABELS_CSV).exists():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir()]
    if len(subs) == 1 and (subs[0] / LABELS_CSV).exists():
        return subs[0]
    return folder


def _unzip(zip_path: Path, dest: Path) -> None:

    with zipfile.ZipFile(zip_path) as zf:
        members = zf.infolist()
        for m in progress_bar(members, desc=f"unzip {zip_path.name}", unit="file"):
            zf.extract(m, dest)  # zipfile strips absolute paths and '..' from member names


def download_rsna(
    raw: str | Path, competition: str = COMPETITION, expect_full: bool = True
) -> Path:
    """Download the competition with the Kaggle CLI, unzip and verify it into `raw`; -> raw.

    Resumable and never half-done: a verified `raw` is left alone (re-running costs a directory
    listing); the zip waits in a sibling folder until it unzips into a temporary sibling that is
    verified and then renamed to `raw`, marker included, in one step.
    Needs kaggle.json installed (`install_kaggle_credentials`).
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
        dl_dir.mkdir(parents=True, exist_ok=True)
        print(f"downloading {competition} (about 3.7 GB) to {dl_dir} ...")
        cmd = [kaggle, "competitions", "download", "-c", competition, "-p", str(dl_dir)]
        rc, tail = _run_streaming(cmd)
        if rc != 0:
            raise RuntimeError(
                f"kaggle download of {competition} failed (exit {rc}: {_last_line(tail)}); "
                f"accept the competition rules at https://www.kaggle.com/competitions/"
                f"{competition}/rules with the account of your token, and check that "
                f"kaggle.json in {kaggle_config_dir()} is your current API token"
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


def fetch_data(
    paths: Paths,
    profile: str,
    *,
    demo_n: int = DEMO_DATA["n"],
    demo_size: int = DEMO_DATA["size"],
    seed: int = DEMO_DATA["seed"],
    competition: str = COMPETITION,
    expect_full: bool = True,
) -> Path:
    """Put the data of `profile` on disk and return its raw folder.

    rsna: make the persistent cache/ and runs/ folders, install kaggle.json from
    paths.kaggle_json, then `download_rsna` into paths.raw (skipped, credentials included,
    when the data is already there).
    demo: `pneumolib.synth.make_demo_data(paths.raw_demo, n=demo_n, size=demo_size,
    seed=seed)`; it writes nothing outside paths.demo_root.
    """
    if profile == "rsna":
        for folder in (paths.cache, paths.runs):  # on Drive in Colab: outlive the session
            folder.mkdir(parents=True, exist_ok=True)
        if _verified(paths.raw, expect_full) is None:
            install_kaggle_credentials(paths.kaggle_json)
        return download_rsna(paths.raw, competition, expect_full)
    if profile != "demo":
        raise ValueError(f"profile: expected 'demo' or 'rsna', got {profile!r}")
    from pneumolib.synth import make_demo_data

    print(
        f"demo profile: synthetic RSNA-shaped data at {paths.raw_demo} (n={demo_n}, {demo_size}px)"
    )
    return make_demo_data(paths.raw_demo, n=demo_n, size=demo_size, seed=seed)


def format_counts(counts: dict[str, int]) -> str:
    """The counts from `verify_layout` as aligned lines."""
    return "\n".join(f"{k:>17}: {v:,}" for k, v in counts.items())


def counts_note(counts: dict[str, int], profile: str, paths: Paths) -> str:
    """One line that explains `test_dicoms` and kaggle.json for `profile` (paths only, never
    the token's content)."""
    test = (
        f"test_dicoms {counts.get('test_dicoms', 0):,}: Kaggle's unlabelled "
        f"{TEST_DIR}/ (the demo has none) is not used; the val and test splits come from "
        "the labelled training images"
    )
    if profile == "demo":
        return f"{test}. kaggle.json ({paths.kaggle_json}) is needed only for the rsna profile."
    return f"{test}. kaggle.json ({paths.kaggle_json}) is read only to download the data."


def setup(
    paths: Paths | None = None,
    *,
    demo_n: int = DEMO_DATA["n"],
    demo_size: int = DEMO_DATA["size"],
    seed: int = DEMO_DATA["seed"],
    competition: str = COMPETITION,
    expect_full: bool = True,
) -> SetupResult:
    """Every step of notebook 00 in one call, printing what each did.

    Choose the profile, mount Drive (Colab only), report the GPU, fetch the data (Kaggle or
    demo) and verify it. `expect_full` applies to the rsna profile.
    """
    paths = default_paths() if paths is None else paths
    profile = choose_profile(paths, allow_download=True, expect_full=expect_full)
    if paths.drive is not None:
        mount_drive(paths.drive)
    else:
        home = paths.root if profile == "rsna" else paths.demo_root
        print(f"not in Colab: skipping the Drive mount; using local folders under {home}")
    print(gpu_report())
    raw = fetch_data(
        paths,
        profile,
        demo_n=demo_n,
        demo_size=demo_size,
        seed=seed,
        competition=competition,
        expect_full=expect_full,
    )
    counts = verify_layout(raw, expect_full=expect_full and profile == "rsna")
    print(f"verified {raw}:\n{format_counts(counts)}\n{counts_note(counts, profile, paths)}")
    return SetupResult(profile=profile, raw=raw, paths=paths, counts=counts)


# --- what the later notebooks need before they start -------------------------------------


def ensure_cache(cfg: Config, profile: str) -> Path:
    """The cache notebook 01 builds; in `demo` its data and cache are made here if missing.

    Both steps return at once when their output is already there, so every notebook can call
    this first and still be run on its own.
    """
    from pneumolib.preprocess import cache_for
    from pneumolib.synth import make_demo_data

    if profile == "demo":
        make_demo_data(cfg.raw, **DEMO_DATA)
    return cache_for(cfg)


def ensure_run(cfg: Config, profile: str) -> Path:
    """The run notebook 03 trains at `cfg.out`; in `demo` it is trained here if missing."""
    from pneumolib.train import fit

    run = Path(cfg.out)
    if not (run / "best.pt").exists():
        if profile != "demo":
            raise FileNotFoundError(f"{run / 'best.pt'} not found: train the run in notebook 03")
        ensure_cache(cfg, profile)
        fit(cfg)
    return run
