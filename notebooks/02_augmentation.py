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
# # 02 · Augmentation: what each transform does to a radiograph
#
# Training sees every radiograph slightly differently each epoch: tilted, shifted, zoomed,
# cropped, brighter or darker. This notebook shows exactly what each of those does to a cached
# radiograph and to its expert box, then the whole policy on a training batch, and checks the
# two properties the trainer relies on: the evaluation transform never changes, and the CPU
# warp (in loader workers) and the GPU warp (whole batches on the GPU) give the same image.
#
# The policy is the course's, written as `Config` fields (their defaults are the course's
# arguments; the cache cell below prints the values this notebook uses):
#
# | transform | course (torchvision) | `Config` fields |
# | --- | --- | --- |
# | tilt | `RandomAffine(degrees=...)` | `rotate_deg` |
# | translation | `RandomAffine(translate=...)` | `translate` |
# | scale | `RandomAffine(scale=...)` | `scale_min`, `scale_max` |
# | crop | `RandomResizedCrop(224, scale=...)` | `crop_scale_*`, `crop_ratio_*` |
# | intensity | (none) | `brightness`, `contrast` |
#
# The course chains these transforms, resampling the image once per transform. `pneumolib`
# composes the geometric ones into one affine matrix per image (`pneumolib.core.augment`) and
# resamples once, on uint8 pixels, so nothing blurs twice and a whole batch costs one call.

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

# %%
# %matplotlib inline
# The package's figure functions return matplotlib Figures without touching pyplot; the inline
# backend renders each one a cell ends with.
import cv2
import numpy as np
import torch

import pneumolib as pl

paths = pl.colab.default_paths()
pl.colab.mount_drive(paths.drive)
profile = pl.colab.choose_profile(paths)
cfg = pl.colab.config_for(profile, paths)

# %% [markdown]
# ## The cache
#
# The images come from the cache of notebook 01: radiographs decoded from the DICOMs (JPEG
# compressed, like RSNA's), resized to `cfg.cache_size` pixels and stored as uint8. The `demo`
# profile makes its synthetic data and cache here if they are missing; both calls return at
# once when the data is already there.

# %%
pl.colab.ensure_cache(cfg, profile)
index, images = pl.read_index(cfg.cache), pl.open_images(cfg.cache)
policy = pl.core.AugmentPolicy.from_config(cfg)
print(f"{len(index):,} images of {images.shape[1]} px; network input {cfg.image_size} px")
print(policy)

# %% [markdown]
# ## Each transform alone
#
# One positive training radiograph with its expert box (red). Each row keeps one transform of
# the policy and switches every other one off (`pl.core.single_transforms`); the first
# column is the evaluation transform (the whole image, resized), the others are random draws, with
# the drawn parameter above each panel. The box is warped with the same matrix as the image
# (`pl.core.warp_boxes`: the four corners warped, then their enclosing box), so it stays on
# the opacity. The last row is the full policy, every transform at once, as training uses it.

# %%
positives = index[(index.target == 1) & (index.split == "train")]
example = positives.iloc[0]
image = np.asarray(images[example.row])
print(f"patient {example.patientId}: boxes {example.boxes} (cache pixels)")
pl.core.show_transforms(image, example.boxes, policy=policy, out_size=cfg.image_size, seed=cfg.seed)

# %% [markdown]
# Reading the rows: the **tilt** (up to `rotate_deg` either way) is about what a patient
# leaning in the stand gives; **translation** moves the chest by up to `translate` of the
# side; **scale** zooms about the centre (black borders appear when it zooms out); the
# **crop** keeps a random part of the image (between `crop_scale_min` and all of its area, at
# a slightly changed aspect ratio) and stretches it to the network input, which both zooms in
# and shifts; **intensity** changes contrast and brightness about mid-grey, as different
# exposures do.
# The full-policy titles list every drawn parameter: tilt, zoom and crop on the first line,
# the shift on the second, contrast and brightness on the third.
# None flips left and right (`hflip=False`): the heart lies on the patient's left, which is
# the right-hand side of the image (radiographs are shown as if facing the patient), and the
# network may use that.

# %% [markdown]
# ## The policy on a training batch
#
# The same function the loader runs (`pl.core.augment_batch_cpu`) on six positive
# radiographs: each image gets its own draw. The random stream belongs to the batch
# (`pl.core.batch_rng(seed, epoch, batch)`), so a batch is the same whatever the number of
# loader workers and whether it is warped on the CPU or on the GPU.

# %%
batch = positives.iloc[:6]
rows = batch.row.to_numpy()
pl.core.show_policy_grid(
    images[rows], list(batch.boxes), policy=policy, out_size=cfg.image_size, seed=cfg.seed
)

# %% [markdown]
# The boxes in numbers, for the first image of that batch: the warp matrix maps cache pixels
# to network-input pixels, and `warp_boxes` gives the box the network would see (boxes that
# leave the image entirely are dropped, the rest are clipped to it).

# %%
res = pl.core.augment_batch_cpu(
    np.asarray(images[rows]),
    out_size=cfg.image_size,
    policy=policy,
    rng=pl.core.batch_rng(cfg.seed, 0, 0),
    train=True,
)
print("matrix (cache px -> input px):\n", np.round(res["mats"][0], 3))
print("box before:", batch.boxes.iloc[0])
print(
    "box after: ",
    np.round(pl.core.warp_boxes(batch.boxes.iloc[0], res["mats"][0], cfg.image_size), 1).tolist(),
)

# %% [markdown]
# ## Evaluation is deterministic, training is reproducible
#
# Validation, test and prediction use the evaluation transform: the whole image resized to the
# network input, no randomness. Training draws are random but repeat exactly for the same
# (seed, epoch, batch), which is what makes an interrupted run resume to the same result.

# %%
sample = np.asarray(images[rows])
ev1 = pl.core.augment_batch_cpu(
    sample, out_size=cfg.image_size, policy=policy, rng=None, train=False
)
ev2 = pl.core.augment_batch_cpu(
    sample, out_size=cfg.image_size, policy=policy, rng=None, train=False
)
tr1 = pl.core.augment_batch_cpu(
    sample, out_size=cfg.image_size, policy=policy, rng=pl.core.batch_rng(0, 3, 7), train=True
)
tr2 = pl.core.augment_batch_cpu(
    sample, out_size=cfg.image_size, policy=policy, rng=pl.core.batch_rng(0, 3, 7), train=True
)
tr3 = pl.core.augment_batch_cpu(
    sample, out_size=cfg.image_size, policy=policy, rng=pl.core.batch_rng(0, 4, 7), train=True
)
print("eval twice, identical:              ", np.array_equal(ev1["images"], ev2["images"]))
print("train, same (seed, epoch, batch):   ", np.array_equal(tr1["images"], tr2["images"]))
print("train, next epoch, different draw:  ", not np.array_equal(tr1["images"], tr3["images"]))

# %% [markdown]
# ## CPU warp and GPU warp agree
#
# There is one warp, bilinear at exact float coordinates, and both paths read the same
# matrices. On a GPU the trainer runs torch's `grid_sample` on whole batches (float out). On a
# CPU the loader workers round it to whole grey levels (uint8 out, a quarter of the bytes),
# with OpenCV's `cv2.warpAffine` where this machine's OpenCV computes exact bilinear (faster
# on a worker's single thread), else with `grid_sample` itself. Some OpenCV versions round
# the source coordinates to 1/32 pixel, which moves sharp edges by grey levels, so the
# package decides by measuring: `pl.core.cv2_warp_is_exact()` warps a hard test pattern once
# both ways. The first cell prints which path this machine takes. The second warps the six
# images both ways and prints what it measured; the figure's title comes from the same call
# (without a GPU the torch path runs on the CPU: same code; the figure names the device).
# Look for a difference of at most about half a grey level: the CPU path's rounding.

# %%
exact = pl.core.cv2_warp_is_exact()
cpu_warp = "cv2.warpAffine" if exact else "grid_sample, rounded to uint8"
print(
    f"OpenCV {cv2.__version__}: warpAffine is {'' if exact else 'not '}exact bilinear on this "
    f"machine, so the CPU path runs {cpu_warp}"
)

# %%
device = "cuda" if torch.cuda.is_available() else "cpu"
agreement = pl.core.warp_agreement(
    sample, policy=policy, out_size=cfg.image_size, seed=cfg.seed, device=device
)
print(
    f"measured here (torch {torch.__version__}): CPU path vs torch path on "
    f"{agreement['device']}: max difference {agreement['max']:.2f} grey levels, "
    f"mean {agreement['mean']:.3f}, pixels off by more than 1: {agreement['frac_over_1']:.1%}, "
    f"same matrices: {agreement['same_matrices']}"
)
pl.core.compare_warps(agreement, index=0)

# %% [markdown]
# ## Next
#
# Notebook 03 trains a ResNet18 with this policy (`python -m pneumolib train`, or
# `pl.fit(cfg)`). To try another policy, change the fields, e.g. `cfg.replace(rotate_deg=10)`,
# and re-run the cells above to see it before spending a training run on it.
