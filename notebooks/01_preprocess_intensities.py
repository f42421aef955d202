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
# # 01 · Preprocessing and intensities: the cache, the dataset, the grey levels
#
# Every later notebook reads the data from one preprocessed **cache**, not from the DICOMs.
# This notebook
#
# 1. builds the cache: every DICOM decoded once, resized to a square and packed into one
#    memory-mapped uint8 array, with an index table and the train-split pixel statistics,
# 2. describes the dataset: class balance, the detailed classes, view position against the
#    target, age and sex, the sizes of the expert boxes and where in the image they lie,
# 3. looks at the raw grey levels: example images and intensity histograms per class,
# 4. compares simple intensity scalings side by side (/255, min-max, z-score with the train
#    statistics, percentile windowing, CLAHE),
# 5. shows the mean image of each class.
#
# All logic lives in `pneumolib.data.preprocess` and `pneumolib.data.explore`; the cells call it
# and show
# the results. In the `demo` profile the data are synthetic phantoms: the tables and figures
# show how the tools work, not facts about pneumonia.

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
# The same choice as in notebook 00: `rsna` where the real data (or its finished cache) is
# found, `demo` otherwise. The demo data are made here if notebook 00 has not made them yet
# (300 synthetic DICOMs of 256 px; nothing happens when they are already there).

# %%
# %matplotlib inline
# The package's figure functions return matplotlib Figures without touching pyplot; the inline
# backend renders each one passed to display().
import numpy as np
from IPython.display import display

import pneumolib as pl

paths = pl.colab.default_paths()
pl.colab.mount_drive(paths.drive)
profile = pl.colab.choose_profile(paths)
cfg = pl.colab.config_for(profile, paths)
if profile == "demo":
    pl.make_demo_data(paths.raw_demo, **pl.colab.DEMO_DATA)
print(f"raw: {cfg.raw}\ncache: {cfg.cache} ({cfg.cache_size} px)")

# %% [markdown]
# ## Build the cache
#
# `cache_for(cfg)` (`build_cache` with the config's settings) reads every DICOM once and writes
#
# | file | content |
# | --- | --- |
# | `images.npy` | uint8 (N, S, S): each image letterboxed to a square and area-resized to S px |
# | `index.csv` | per patient: `patientId, row, target, class, split, sex, age, view, boxes` |
# | `stats.json` | mean and std of the **train** pixels in [0, 1], the size, the split rule |
# | `errors.csv` | files that could not be read (empty when none) |
#
# Why a cache: decoding a 1024 x 1024 JPEG-compressed DICOM costs several milliseconds, and
# an epoch would pay it 26,684 times. Decoded once, a batch is a slice of a memory map.
# The JPEG frame is decoded at a reduced DCT scale (1024 -> 512 or 256 directly) where that
# still leaves enough pixels, and all CPU cores work at once; `benchmarks/preprocess.py`
# measures both against the naive one-`.npy`-per-image loop.
#
# The split is made here, per patient and stratified by target and view, so every later
# notebook trains, validates and tests on the same patients. The normalisation statistics come
# from the train split only: nothing about val or test leaks into training.
#
# **In Colab (`rsna`)** the cache is written to Drive (`cfg.cache`, about 1.7 GB at 256 px):
# a second session finds it finished and skips the build in a second (the raw DICOMs on the
# local disk are then not even needed). The build happens in `CACHE.partial/` and logs every
# finished chunk, so a build interrupted by a disconnect resumes where it stopped when you run
# this cell again; the folder is renamed to `cfg.cache` only when whole. A full build takes
# a few minutes on Colab's two CPU cores.

# %%
cache = pl.cache_for(cfg)
index = pl.read_index(cache)
images = pl.open_images(cache)
stats = pl.read_stats(cache)
size = stats.size
print(f"images: {images.dtype} {images.shape}, {images.nbytes / 2**20:,.0f} MiB")
print(f"train pixels: mean {stats.mean:.4f}, std {stats.std:.4f} (in [0, 1])")
index.head()

# %% [markdown]
# ## The dataset
#
# One row per patient. In RSNA about 22% of patients are positive ("Lung Opacity"); the
# negatives split into "Normal" and "No Lung Opacity / Not Normal" (something else is
# abnormal: a tube, a nodule, an effusion), which is why "negative" does not mean "healthy".
# AP views (bedside, sicker patients) are positive far more often than PA views: the view
# alone predicts the label to a degree, a shortcut a model can learn.

# %%
tables = pl.data.dataset_overview(index)
for name in ("class_balance", "classes", "view_target", "split_target"):
    print(f"\n{name}")
    display(tables[name])

# %%
display(pl.data.overview_figure(index))

# %% [markdown]
# ### Age and sex
#
# RSNA ages are read from the DICOM header; a few are implausible (over 100 years) and are
# drawn at 100. Patients with a missing age are left out of the age table.

# %%
display(tables["age_summary"])
display(tables["sex_target"])
display(pl.data.demographics_figure(index))

# %% [markdown]
# ### The boxes
#
# Positive patients have one or more expert boxes (`[x, y, w, h]`, here in cache pixels). The
# heat map adds up the boxes pixel by pixel: opacities sit in the lower and outer lung fields,
# the centre (spine, heart) and the edges are almost never boxed. A model whose attention
# lands outside this region is looking at something else (notebook 05 checks that).

# %%
display(tables["boxes_per_patient"])
display(pl.data.box_size_figure(index, size))

# %%
positives = index[index.target == 1]
heat = pl.data.box_heatmap(index, size)
mean_positive = pl.data.mean_image(images, positives["row"].to_numpy())
print(f"total box area {heat.sum():,.0f} px^2 over {len(positives):,} positive patients")
display(pl.data.box_heatmap_figure(heat, len(positives), background=mean_positive))

# %% [markdown]
# ## Raw intensities
#
# The cache keeps the grey levels of the DICOMs as they were (0..255, bright = dense), only
# resized. The same grey ramp is used for every image below, so differences in exposure and
# contrast between images show as they are. Every figure of the series colours the classes
# the same way (`pneumolib.base.plots.CLASS_COLOURS`): pneumonia ("Lung Opacity", positive) red,
# "Normal" and the negatives blue, "No Lung Opacity / Not Normal" purple.

# %%
display(pl.data.class_examples_figure(images, index, per_class=4))

# %% [markdown]
# The histograms pool the pixels of up to 500 images per class (a seeded sample); the right
# panel shows how bright each image is on average, i.e. how much the exposure varies, as one
# outline per class over the same bins (they span the range of the means, not all of 0..255).
#
# Two spikes stand out in the pixel histogram. In the `demo` profile, the tall peak near grey
# level **12** is the air around the body: the phantoms (`pneumolib.data.synth`) start from a
# background of 12, which each film's exposure (x0.85 to x1.15) and the noise spread into a
# hump; portable AP films, with their lower contrast, lift their air towards grey (more of
# them are positive, hence a lower, wider peak for "Lung Opacity"). The spike at **255** is
# saturation: down the spine, where the ribs and the heart add to it, the phantom exceeds 255
# and is clipped, so every brighter value lands on 255.
# In real radiographs the dark peak is the air and the collimated border around the patient,
# and a spike at 255 comes from burned-in markers and text and from regions clipped when the
# DICOM was windowed to 8 bits.

# %%
display(pl.data.intensity_histograms_figure(images, index, by="class", max_per_group=500))

# %% [markdown]
# ## Scalings side by side
#
# A network wants inputs of a known range. Five simple choices, each applied to one uint8
# image:
#
# | scaling | range | note |
# | --- | --- | --- |
# | /255 | [0, 1] | fixed; keeps exposure differences between images |
# | min-max | [0, 1] | per image; one bright marker or a dark border sets the contrast |
# | z-score | [-m/s, (1-m)/s] | fixed, train mean m and std s: what `pneumolib` feeds the model |
# | percentile 1-99 | [0, 1] | per image; the extreme 1% at either end no longer set the contrast |
# | CLAHE | [0, 1] | local histogram equalisation: lung texture stands out, noise too |
#
# Each column is drawn on its own output range. /255 and z-score are then the same picture
# (both are fixed linear maps): they differ in the numbers the network sees, as the histograms
# in the last row show. The per-image scalings (min-max, percentile) and CLAHE change what the
# picture looks like, and differently for each image: two patients' lungs no longer share a
# grey level. `pneumolib` trains on z-scored /255 values and leaves contrast changes to the
# augmentation (notebook 02).
#
# **On the demo** min-max barely changes a film: on every phantom the spine reaches 255 and
# the air lies near 0, so the extremes are already set (a real film's borders and markers do
# the same). The percentile scaling visibly stretches the flatter, noisier portable (AP) films,
# the very difference between views that a model could otherwise learn; CLAHE brings out lung
# texture and noise alike.

# %%
rng = np.random.default_rng(0)
examples = [images[r] for r in rng.choice(index["row"].to_numpy(), size=3, replace=False)]
display(pl.data.scalings_figure(examples, stats.mean, stats.std))

# %% [markdown]
# ## Mean image per class
#
# The average of every image of a class (summed in chunks from the memory map). The second
# row subtracts the mean "Normal" image: red where a class is brighter on average. Brighter
# lower lung fields in "Lung Opacity" are the opacities; differences at the heart, the
# shoulders and the borders come from the view and the patients, not from pneumonia.

# %%
means = pl.data.mean_images(images, index, by="class")
display(pl.data.mean_image_figure(means, reference="Normal"))

# %% [markdown]
# ## Next
#
# The cache is built and understood. Notebook 02 shows the augmentation every training batch
# gets, and notebook 03 trains a first model on the cache: batches come straight from
# `images.npy`, are augmented and z-scored with `stats.json`, and the split made here decides
# which patients train, validate and test.
