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
# # 05 · CAM: where in the radiograph the network found its evidence
#
# A classifier that says "pneumonia" with a high AUC may still be looking at the wrong thing:
# a tube, a text marker, the position of the patient. Class activation maps show **where** the
# evidence for the positive class lies in each image, and the RSNA expert boxes let us score
# that against where the opacities really are:
#
# 1. make sure a trained run exists (notebook 03 trains it as `cfg.out`),
# 2. compute CAMs over the validation split and score the true positives against the boxes,
# 3. look at overlays, and at Grad-CAM on an earlier, finer layer,
# 4. read the localisation table, with confidence intervals and chance levels,
# 5. catch a shortcut: a model that reads a text marker instead of the lungs.
#
# The same from a terminal: `python -m pneumolib cam --run RUN [--split test] [--method
# gradcam --layer layer2] [--tolerance PX] [--tag NAME]` writes `RUN/cam_<split>.csv`,
# `RUN/cam_<split>.json` and overlays in `RUN/figures/cam_<split>/` (`cam_<split>_NAME.*`
# with a tag).

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
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import display

import pneumolib as pl

paths = pl.colab.default_paths()
pl.colab.mount_drive(paths.drive)
profile = pl.colab.choose_profile(paths)
cfg = pl.colab.config_for(profile, paths)
run_dir = Path(cfg.out)
print(f"profile: {profile}; run: {run_dir}")

# %% [markdown]
# ## The run
#
# Notebook 03 trains `cfg.out`. The `demo` profile makes its data, cache and run here if they
# are missing (each call returns at once when its output is already there); the `rsna` profile
# asks you to run notebook 03 first, since training takes a GPU and tens of minutes.

# %%
pl.colab.ensure_run(cfg, profile)

# %% [markdown]
# ## CAM and Grad-CAM
#
# Both read the feature maps $A_k$ (channels $k$, a coarse $h \times w$ grid) of one layer in a
# single forward pass, and draw $\mathrm{ReLU}(\sum_k w_k A_k)$, upsampled to the image and
# scaled to [0, 1]; they differ in the channel weights $w_k$:
#
# - **CAM** (Zhou et al., 2016) needs a global-average-pooling + linear head, as ResNet has.
#   The weights are the head's own: the map is the logit spread over the image (its mean plus
#   the bias *is* the logit). It exists only for the last layer (`layer4`: 1/32 of the input
#   side, a 7×7 grid at 224 px).
# - **Grad-CAM** (Selvaraju et al., 2017) takes the weights from the gradient of the logit,
#   averaged over the map, so it works on **any** convolutional layer. On `layer4` of a ResNet
#   it equals CAM; on `layer3` (1/16) or `layer2` (1/8) the map is finer but its units see less
#   of the image and are further from the decision.
#
# Only the **positive** part is drawn: evidence *for* pneumonia. We score the **true
# positives** (target 1 and a probability at or above a fixed threshold, so the scored set
# does not depend on notebook 04), where "why did it say pneumonia?" has an answer to check.
#
# Two scores per image, each with its chance level, the fraction of the image the boxes cover
# (what a map that knew nothing would get on average):
#
# - **pointing game**: does the map's maximum lie inside an expert box?
# - **energy in box**: the share of the map's total mass inside the boxes.
#
# The cell prints the summary line of `cam_run` and then what was scored.

# %%
summary = pl.cam_run(run_dir, "val", n_overlays=16)
print(
    f"scored: {summary['n']} true positives with a box among {summary['n_images']} val images "
    f"(target 1, probability at least {summary['threshold']:g}), {cfg.image_size} px inputs"
)

# %% [markdown]
# ## True positives, with the expert boxes
#
# Green: the radiologists' boxes; colour: the map (red = strongest evidence). The title has
# the predicted probability and whether the map's peak hit a box.

# %%
ids = pd.read_csv(run_dir / "cam_val.csv", dtype={"patientId": str}).patientId.head(8).tolist()
index = pl.read_index(cfg.cache)
if not ids:  # a run that predicts no positive: show the first positives instead
    ids = index[(index.split == "val") & (index.target == 1)].patientId.head(8).tolist()
ex = pl.cam_examples(run_dir, ids)
hits = pl.cam.pointing_game(ex["maps"], ex["boxes"])
titles = [f"p={p:.2f}  {'hit' if h else 'miss'}" for p, h in zip(ex["probs"], hits, strict=True)]
pl.cam.overlay_grid(ex["images"], ex["maps"], boxes=ex["boxes"], titles=titles, ncols=4)

# %% [markdown]
# ## One image, three layers
#
# Grad-CAM on `layer4` (the CAM layer), `layer3` and `layer2` of the same network and image.
# Deeper maps are coarser; earlier ones are sharper but show what a smaller patch looks like,
# not yet what the network concluded.

# %%
pid = ids[0]
layers = ["layer4", "layer3", "layer2"]
per_layer = [pl.cam_examples(run_dir, [pid], method="gradcam", layer=name) for name in layers]
pl.cam.overlay_grid(
    [per_layer[0]["images"][0]] * len(layers),
    np.concatenate([e["maps"] for e in per_layer]),
    boxes=per_layer[0]["boxes"] * len(layers),
    titles=[f"Grad-CAM {name}" for name in layers],
    ncols=len(layers),
)

# %% [markdown]
# ## The localisation table
#
# Means over the validation true positives with 95% bootstrap confidence intervals (images
# resampled). A score means something only against its chance level in the same row; with a
# few dozen images (the demo) the intervals are wide. Grad-CAM variants are written beside
# the default files (`cam_val_gradcam_layer3.csv`, ...). Below the table, one sentence per
# map says whether it beats chance: the interval that decides is the paired one of the
# difference (score minus chance, image by image), not the two intervals side by side.

# %%
summaries = {"CAM layer4": summary}
for name in ("layer3", "layer2"):
    summaries[f"Grad-CAM {name}"] = pl.cam_run(
        run_dir, "val", n_overlays=0, method="gradcam", layer=name, tag=f"gradcam_{name}"
    )
display(pl.cam.localisation_table(summaries))
print("\n".join(pl.cam.pointing_verdicts(summaries)))

# %% [markdown]
# Resolution limits the pointing game too: an upsampled map peaks where its strongest cell
# peaks, so a box that holds no cell's peak cannot be hit, however well the network
# localises. The cell below scores the best map each layer's grid could draw (each cell as
# bright as the share of it the boxes cover) on every positive image of the split: that is
# the ceiling of the pointing game on this data. Coarse grids and small boxes (the demo's)
# lower it; at 224 px on RSNA (larger boxes) it matters much less.

# %%
positives = index[(index.split == "val") & (index.target == 1)]
box_scale = cfg.image_size / pl.read_stats(cfg.cache).size  # cache pixels -> input pixels
for name, stride in {"layer4": 32, "layer3": 16, "layer2": 8}.items():  # ResNet's strides
    print(
        pl.cam.resolution_sentence(
            positives.boxes, size=cfg.image_size, stride=stride, layer=name, box_scale=box_scale
        )
    )

# %% [markdown]
# **Over training seeds.** One run's table is one draw: on the demo, how many positives the
# run finds, and where its maps point, change with the training seed. The table below is the
# same localisation table over several seeds of the demo run (mean and sd over seeds, from
# `results/cam_seeds.json`, written by `python benchmarks/cam_seeds.py`; the line printed
# above it says when and on what). Look for a map whose pointing game clears its chance level
# by more than the spread between seeds, and compare with the val AUCs of notebook 03: a
# network can rank faint and small opacities well from a coarse grid without its maps landing
# on them. The `easy` phantoms (crisp opacities, no label noise) are where `layer2` is
# expected to point, and `tests/cam/test_cam_run.py` checks that it does.

# %%
over_seeds = pl.results_table("cam_seeds", "localisation")
print(over_seeds.attrs["provenance"])
display(over_seeds)

# %% [markdown]
# ## A shortcut, caught
#
# Real portable (AP) films carry burned-in text, and AP films are far more often positive
# (notebook 01's view table shows by how much), since the sickest patients are the ones
# imaged at the bedside. A network rewarded for getting labels right can learn to read the
# text. To see what that looks like, we train the same model on **the same patients, labels
# and split with one difference**: a "PORTABLE" marker, planted so that reading it pays
# (every positive AP film carries it, and a quarter of the negative ones)
# (`make_demo_data(..., shortcut=True)`; the `demo` profile does this here, a few minutes on
# one CPU core; the `rsna` profile skips it, as real films cannot be remade without their
# text). Then two checks that catch it: score the marker model again on the same films
# with the marker removed (the clean cache), and see where Grad-CAM puts its evidence on the
# films that carry the marker. The sentences under the table say what this seed's runs show:
# look at the AUC with the marker removed against the clean model's, and at how much of the
# marker model's map lies on the marker against the marker's share of the image.

# %%
if profile == "demo":
    marker_run = pl.cam.shortcut_run(cfg, pl.colab.DEMO_DATA, paths.demo_root)
    marker_table = pl.cam.shortcut_table(run_dir, marker_run)
    print(marker_table.to_string())
    print("\n".join(pl.cam.shortcut_verdicts(marker_table, layer=pl.cam.MARKER_LAYER)))

# %% [markdown]
# The marker model's maps on test films that carry the marker (the marker sits in the top-left
# corner): where the heat lies is the second check.

# %%
if profile == "demo":
    truth = pl.data.read_truth(pl.Config.load(marker_run / "config.json").raw)
    test_ids = set(index.patientId[index.split == "test"])
    marked = truth[truth.marker & truth.patientId.isin(test_ids)].patientId.head(4).tolist()
    ex = pl.cam_examples(marker_run, marked, method="gradcam", layer=pl.cam.MARKER_LAYER)
    titles = [f"p={p:.2f}  target {t}" for p, t in zip(ex["probs"], ex["targets"], strict=True)]
    pl.cam.overlay_grid(ex["images"], ex["maps"], boxes=ex["boxes"], titles=titles, ncols=4)

# %% [markdown]
# **Over training seeds.** One seed's shortcut study is one draw too. The table below gives
# it over several seeds (mean and sd, from `results/cam_seeds.json`). Look at the AUC with the
# marker removed against the clean model's, and at its spread: a shortcut can cost a lot in
# one seed and little in another. Then compare the evidence on the marker with the marker's
# share of the image: a model that reads the text puts far more of its map there than a
# model that ignores it. Both checks work on real data too:
# score the model on films whose text is masked, and look at the maps of the films that carry
# it. (Grad-CAM on `layer2`, the finest map, does not see the text: check the decision layer
# for shortcuts.)

# %%
over_seeds = pl.results_table("cam_seeds", "shortcut")
print(over_seeds.attrs["provenance"])
display(over_seeds)

# %% [markdown]
# ## What "looks in the right place" means, and what it does not
#
# - A hit means the **strongest** evidence lies inside a box. It says nothing about evidence
#   elsewhere: a map can hit the box and still light up a tube or the image border; energy in
#   box is the score that sees the rest of the map.
# - The boxes are coarse rectangles around opacities, drawn by different radiologists; a map
#   that covers the opacity but not the box's corners is not wrong. Large boxes make hits easy,
#   which is why every score stands next to its chance level.
# - Only the positive evidence is drawn. A network may decide "pneumonia" mostly from the
#   *absence* of normal-looking lung (evidence against, which the ReLU removes); then the
#   positive map can point anywhere, even at the border, while the AUC is excellent. A low
#   pointing game is therefore a warning about what the network uses, not a verdict on its
#   accuracy, and a high one does not prove that it reasons like a radiologist.
# - Where a network looks can settle **later** than how well it classifies: a run whose val
#   AUC has reached its ceiling may still put its peaks on the body's edge, and runs that
#   differ only in the training seed can point very differently. Many misses lie just beside
#   a box: the strict game cannot tell "on the lesion's edge" from "elsewhere".
#   `cam_run(..., tolerance=px)` gives the usual tolerant variant (Zhang et al.: 15 px at
#   224). A perfect AUC does not say the maps have settled: score them on the checkpoint you
#   will use.
# - Maps are coarse (1/32 of the side for CAM) and their look depends on the layer (see above).
#   Compare methods and layers on the same images before trusting one picture.
# - Only true positives are scored: false negatives have no "why pneumonia" to check. The
#   overlays of a few false negatives and false positives are in `figures/cam_val/`
#   (`fn_*.png`, `fp_*.png`).

# %% [markdown]
# ## Next
#
# Notebook 06 tunes batch size and learning rate. For a report on the test split run
# `python -m pneumolib cam --run RUN --split test`.
