"""From a fresh Colab runtime (or a laptop) to the RSNA data on local disk, in a few calls.

Colab: Drive is mounted at /content/drive and holds what must outlive a session (the cache, the
runs, a kaggle.json if the user keeps one there); the raw competition data goes to the runtime's
local disk (/content/rsna) because reading 26,684 small files through Drive is slow. Outside
Colab every step falls back to local folders (./pneumolib_data, or PNEUMOLIB_HOME) and says so,
and without a Kaggle token the `demo` profile uses synthetic RSNA-shaped data from
`pneumolib.data.synth`. Where the token comes from is `pneumolib.course.kaggle_token`'s rule.

`setup()` runs every step and prints what it did; notebook 00 calls the steps one per cell.
Getting and checking the RSNA data is `pneumolib.data.kaggle`'s job; this module decides the folders
and the profile. Its only outside boundary is the `google.colab` module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from pneumolib.base.config import Config, demo_config, rsna_config
from pneumolib.base.errors import UsageError
from pneumolib.base.rundir import best_path
from pneumolib.course.kaggle_token import NEW_TOKEN, find_kaggle_token, missing_token
from pneumolib.data.cache_files import CACHE_FILES
from pneumolib.data.kaggle import (
    COMPETITION,
    TEST_DIR,
    download_rsna,
    verified_counts,
    verify_layout,
)

DRIVE_FOLDER = "pneumolib"  # under MyDrive


class DemoData(TypedDict):
    """`make_demo_data`'s keywords for the notebooks' demo folder (type-checked at `**`)."""

    n: int
    size: int
    seed: int


DEMO_DATA: DemoData = {"n": 300, "size": 256, "seed": 0}  # the demo folder every notebook uses


@dataclass
class Paths:
    """Every folder the notebooks use, decided in one place (`default_paths`)."""

    root: Path  # persistent home: Drive folder in Colab, ./pneumolib_data or PNEUMOLIB_HOME locally
    raw: Path  # unzipped RSNA competition data, on local disk (fast small-file reads)
    cache: Path  # preprocessed caches (persistent: on Drive in Colab)
    runs: Path  # training runs: checkpoints, metrics (persistent: on Drive in Colab)
    kaggle_json: Path  # pneumolib's place for kaggle.json, one of those `find_kaggle_token` reads
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
    from google.colab import drive  # exists only inside Colab

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


def choose_profile(paths: Paths, *, allow_download: bool = False, expect_full: bool = True) -> str:
    """ "rsna" where the real data is verified at paths.raw or its cache is built, else "demo".

    Prints the choice and why: the first line a notebook shows.

    With `allow_download` (notebook 00), "rsna" also where the data can be fetched: where
    `find_kaggle_token` finds a token (the line names its source, never the key), or in Colab
    (the download then needs one; Drive is not mounted yet when notebook 00 chooses).
    """
    if verified_counts(paths.raw, expect_full) is not None:
        print(f"profile: rsna (RSNA data verified at {paths.raw})")
        return "rsna"
    cache = Path(config_for("rsna", paths).cache)
    if all((cache / f).is_file() for f in CACHE_FILES):  # a new Colab session: raw is gone
        print(f"profile: rsna (RSNA cache found at {cache})")
        return "rsna"
    why = f"no verified RSNA data at {paths.raw}"
    if allow_download:
        colab = in_colab()
        token = find_kaggle_token(paths.kaggle_json, colab=colab)
        if token is not None:
            print(
                f"profile: rsna (will download the RSNA data to {paths.raw} with the Kaggle "
                f"token from {token.source})"
            )
            return "rsna"
        missing = missing_token(paths.kaggle_json, colab=colab)
        if paths.drive is not None:  # Colab: the download asks again, after the Drive mount
            where = f"in Colab: will download the RSNA data to {paths.raw}"
            print(f"profile: rsna ({where}; {missing} yet)")
            return "rsna"
        why += f", not in Colab and {missing}"
    print(f"profile: demo ({why}; using synthetic demo data at {paths.raw_demo})")
    return "demo"


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

    rsna: make the persistent cache/ and runs/ folders, then `download_rsna` into paths.raw with
    the token `find_kaggle_token` finds (skipped, token lookup included, when the data is
    already there; no token then is a one-line `UsageError` naming every place looked).
    demo: `pneumolib.data.synth.make_demo_data(paths.raw_demo, n=demo_n, size=demo_size,
    seed=seed)`; it writes nothing outside paths.demo_root.
    """
    if profile == "rsna":
        for folder in (paths.cache, paths.runs):  # on Drive in Colab: outlive the session
            folder.mkdir(parents=True, exist_ok=True)
        token = None
        if verified_counts(paths.raw, expect_full) is None:
            colab = in_colab()
            token = find_kaggle_token(paths.kaggle_json, colab=colab)
            if token is None:
                raise UsageError(
                    f"{missing_token(paths.kaggle_json, colab=colab)}: {NEW_TOKEN} and put "
                    f"the downloaded kaggle.json at {paths.kaggle_json}"
                )
        return download_rsna(paths.raw, competition, expect_full, token=token)
    if profile != "demo":
        raise ValueError(f"profile: expected 'demo' or 'rsna', got {profile!r}")
    # imported here, not at the top: notebook 00 imports colab before installing requirements
    from pneumolib.data.synth import make_demo_data

    print(
        f"demo profile: synthetic RSNA-shaped data at {paths.raw_demo} (n={demo_n}, {demo_size}px)"
    )
    return make_demo_data(paths.raw_demo, n=demo_n, size=demo_size, seed=seed)


def format_counts(counts: dict[str, int]) -> str:
    """The counts from `verify_layout` as aligned lines."""
    return "\n".join(f"{k:>17}: {v:,}" for k, v in counts.items())


def counts_note(counts: dict[str, int], profile: str) -> str:
    """One line that explains `test_dicoms` and the Kaggle token for `profile` (never the
    token's content)."""
    test = (
        f"test_dicoms {counts.get('test_dicoms', 0):,}: Kaggle's unlabelled "
        f"{TEST_DIR}/ is used only for the submission file (notebook 07); the val and test "
        "splits come from the labelled training images"
    )
    if profile == "demo":
        return f"{test}. A Kaggle token is needed only for the rsna profile."
    return f"{test}. The Kaggle token is read only to download the data, and never printed."


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
    print(f"verified {raw}:\n{format_counts(counts)}\n{counts_note(counts, profile)}")
    return SetupResult(profile=profile, raw=raw, paths=paths, counts=counts)


# --- what the later notebooks need before they start -------------------------------------


def ensure_cache(cfg: Config, profile: str) -> Path:
    """The cache notebook 01 builds; in `demo` its data and cache are made here if missing.

    Both steps return at once when their output is already there, so every notebook can call
    this first and still be run on its own.
    """
    # imported here, not at the top: notebook 00 imports colab before installing requirements
    from pneumolib.data.preprocess import cache_for
    from pneumolib.data.synth import make_demo_data

    if profile == "demo":
        make_demo_data(cfg.raw, **DEMO_DATA)
    return cache_for(cfg)


def study_runs(cfg: Config, profile: str, demo_root: str | Path) -> dict[str, Config]:
    """The runs notebook 03 trains, by name, main run first: the three transfer modes and the
    main run's three-class twin. `rsna`: fine-tuning from ImageNet is the main run, feature
    extraction (lr 1e-3) and scratch beside it. `demo` (no network): scratch is the main run,
    and fine-tuning and feature extraction start from `demo.pretext_weights(demo_root)`, an
    AP-vs-PA classifier trained on other phantoms (ImageNet's stand-in; made once)."""
    runs_dir = Path(cfg.out).parent
    if profile == "demo":
        # imported here, not at the top: notebook 00 imports colab before installing torch
        from pneumolib.course.demo import pretext_weights

        pretrained = str(pretext_weights(demo_root))
        runs = {
            "scratch": cfg,
            "finetune": cfg.replace(
                mode="finetune",
                weights=pretrained,
                epochs=10,
                lr=1e-3,
                out=str(runs_dir / "resnet18_finetune"),
            ),
            "feature-extraction": cfg.replace(
                mode="feature-extraction",
                weights=pretrained,
                epochs=8,
                out=str(runs_dir / "resnet18_feature_extraction"),
            ),
        }
    else:
        runs = {
            "finetune": cfg,
            "feature-extraction": cfg.replace(
                mode="feature-extraction",
                lr=1e-3,
                out=str(runs_dir / "resnet18_feature_extraction"),
            ),
            "scratch": cfg.replace(
                mode="scratch", weights="none", out=str(runs_dir / "resnet18_scratch")
            ),
        }
    return runs | {"three-class": three_class_run(cfg)}


def three_class_run(cfg: Config) -> Config:
    """The main run's three-class twin (notebooks 03 and 04): `cfg` with `task="three-class"`,
    in `resnet18_three_class` beside it; everything else, seed included, is the same."""
    return cfg.replace(task="three-class", out=str(Path(cfg.out).parent / "resnet18_three_class"))


def ensure_run(cfg: Config, profile: str) -> Path:
    """The run notebook 03 trains at `cfg.out`; in `demo` it is trained here if missing."""
    # imported here, not at the top: notebook 00 imports colab before installing requirements
    from pneumolib.train.loop import fit

    run = Path(cfg.out)
    if not best_path(run).exists():
        if profile != "demo":
            raise FileNotFoundError(f"{best_path(run)} not found: train the run in notebook 03")
        ensure_cache(cfg, profile)
        fit(cfg)
    return run
