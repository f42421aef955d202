# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Setup: from a fresh runtime to the RSNA data
#
# This notebook takes a fresh Google Colab runtime to the RSNA Pneumonia Detection Challenge
# data on the runtime's local disk, ready for the rest of the series:
#
# 1. install `pneumolib` (Colab only; locally it is already importable),
# 2. choose the profile (`rsna`: the real data; `demo`: synthetic data) and the folders,
# 3. mount Google Drive, which keeps the cache and the runs (and a `kaggle.json`, if you keep
#    your token there) between sessions,
# 4. report the GPU,
# 5. download the competition with the Kaggle CLI and unzip it to `/content/rsna`,
# 6. verify the layout and the file counts.
#
# **Before you start:** accept the competition rules on
# [kaggle.com/competitions/rsna-pneumonia-detection-challenge](https://www.kaggle.com/competitions/rsna-pneumonia-detection-challenge/rules)
# and make an API token (kaggle.com > Settings > API > *Create New Token*, which downloads
# `kaggle.json`). pneumolib uses the first of these places that holds a token:
#
# 1. the environment variables `KAGGLE_USERNAME` and `KAGGLE_KEY`;
# 2. the Kaggle CLI's `kaggle.json`: `$KAGGLE_CONFIG_DIR/kaggle.json`, else
#    `~/.kaggle/kaggle.json`, else (Linux, without a `~/.kaggle` folder)
#    `$XDG_CONFIG_HOME/kaggle/kaggle.json` (by default `~/.config/kaggle/kaggle.json`);
# 3. pneumolib's `kaggle.json`: in Colab `MyDrive/pneumolib/kaggle.json` on your Drive, locally
#    `./pneumolib_data/kaggle.json` (or `$PNEUMOLIB_HOME/kaggle.json`);
# 4. in Colab, the Secrets `KAGGLE_USERNAME` and `KAGGLE_KEY` (the key icon in the left bar, with
#    *Notebook access* turned on).
#
# The first two are where the Kaggle CLI itself looks, in its order: if `kaggle` already works
# on your machine, there is nothing to do. The download hands the token to the Kaggle CLI in its
# environment; it is never copied, and the key is never printed. See `data_README.md` for the
# data itself.
#
# **Outside Colab** the same cells skip the Drive mount, use local folders
# (`$PNEUMOLIB_HOME`, `./pneumolib_data`, `./pneumolib_demo`) and, without a Kaggle token, make
# synthetic demo data instead of downloading; each cell says what it did.
#
# Re-running is cheap: data that is already there and verified is not downloaded again.

# %%
PNEUMOLIB_SOURCE = "git+https://github.com/pneumolib/pneumolib"  # @param {type:"string"}
# Where Colab installs pneumolib from: a git URL, a folder on Drive (for example
# /content/drive/MyDrive/pneumolib) or a .whl file. Outside Colab nothing is installed (the
# package is already importable). `python -m pneumolib publish` rewrites the default for a fork.
# `pneumolib.course.colab.in_colab` cannot run before the install, so its check is written out here.
import importlib.util
import os
import subprocess
import sys

try:
    import google.colab  # noqa: F401

    IN_COLAB = True
except ImportError:
    IN_COLAB = False

if IN_COLAB and importlib.util.find_spec("pneumolib") is None:
    source = PNEUMOLIB_SOURCE.strip()
    if source.startswith("https://github.com/"):
        source = "git+" + source  # pip clones a repository only with the git+ prefix
    if source.startswith("/content/drive/"):
        from google.colab import drive

        drive.mount("/content/drive")
    if "://" not in source and not os.path.exists(source):
        raise FileNotFoundError(
            f"PNEUMOLIB_SOURCE {source!r} not found: give a git URL, a folder or a .whl file"
        )
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", source], check=True)

# %% [markdown]
# ## Profile and folders
#
# Every folder is decided in one place, `pl.colab.default_paths()`. In Colab: the persistent
# folder is `/content/drive/MyDrive/pneumolib` (Drive) and the raw data goes to `/content/rsna`
# (local disk: Drive is slow for 26,684 small files). The profile is `rsna` where the real data
# is there or can be downloaded, `demo` otherwise. The first line says which, and why: the place
# the Kaggle token came from, or every place it looked. In Colab the profile is `rsna` even
# before a token is found, since Drive is mounted only in the next cell; the Data cell looks
# again.

# %%
import pneumolib as pl

paths = pl.colab.default_paths()
profile = pl.colab.choose_profile(paths, allow_download=True)
print(paths.describe(profile))

# %% [markdown]
# ## Google Drive
#
# Mounted only inside Colab; Colab asks you to allow access the first time. Outside Colab
# the cell says that it skipped the mount.

# %%
mounted = pl.colab.mount_drive(paths.drive)  # True where Drive was mounted

# %% [markdown]
# ## GPU
#
# Training on the full data wants a GPU (in Colab: *Runtime > Change runtime type > GPU*).
# The demo profile runs on the CPU.

# %%
print(pl.colab.gpu_report())

# %% [markdown]
# ## Data
#
# `rsna`: find the Kaggle token (the places above, in their order), run `kaggle competitions
# download -c rsna-pneumonia-detection-challenge` with it (a few minutes in Colab), unzip to a
# temporary folder, verify, and rename it to `/content/rsna`: an interrupted run never leaves a
# half-unzipped folder behind. `demo`: write the synthetic RSNA-shaped DICOMs of
# `pl.colab.DEMO_DATA`, the same folder the later notebooks use.

# %%
raw = pl.colab.fetch_data(paths, profile)  # demo: pl.colab.DEMO_DATA (300 DICOMs, 256 px)

# %% [markdown]
# ## Verify
#
# The layout the rest of the series reads, and its counts. The full data has 26,684 training
# DICOMs and 30,227 label rows (one per box) for 26,684 patients, 6,012 of them positive.
# `test_dicoms` counts Kaggle's unlabelled test images (`stage_2_test_images/`): only the
# submission file of notebook 07 uses them (the val and test splits are made from the
# labelled training images); the demo data has a few of its own. The last line says so, and
# whether the Kaggle token is needed (only the `rsna` profile reads it; its key is never
# printed).

# %%
counts = pl.data.verify_layout(raw, expect_full=(profile == "rsna"))
print(f"{profile} data at {raw}")
print(pl.colab.format_counts(counts))
print(pl.colab.counts_note(counts, profile))

# %% [markdown]
# ## Next
#
# The data is in place. The following notebooks start with
# `paths = pl.colab.default_paths(); profile = pl.colab.choose_profile(paths)` and
# `cfg = pl.colab.config_for(profile, paths)`, so they pick the same profile and folders.
# A new Colab session starts with an empty local disk, so `/content/rsna` is gone; the cache and
# the runs on Drive remain. Once the cache is built (notebook 01), later sessions need only the
# Drive mount; run this notebook again when you need the raw data.
