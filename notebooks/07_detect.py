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
# # 07 · Boxes: the challenge's own task, scored as Kaggle scores it
#
# The RSNA Pneumonia Detection Challenge asks for **boxes**: for each patient with pneumonia,
# one to four rectangles around the opacities, each with a confidence. The classifier of
# notebook 03 never saw a box; its class activation maps (notebook 05) say where its evidence
# lies. How far do those maps get on the real task?
#
# 1. turn the maps into boxes with a rule chosen on val (`cam` does it, `RUN/box_rule.json`),
# 2. score the test boxes with the challenge's metric, overall and for AP and PA films apart,
# 3. look at predicted boxes against the experts' boxes: hits, false boxes, missed boxes,
# 4. train a detector on the expert boxes, with and without the classifier as a gate, and
#    compare the three routes on the same patients,
# 5. write Kaggle's submission file for the test images.
#
# **The metric.** For each image and each IoU threshold t in 0.40, 0.45, ..., 0.75, count
# TP / (TP + FP + FN): predicted boxes are taken in order of confidence, each matching at most
# one still-unmatched expert box with IoU above t. The image's score is the mean over the
# thresholds, and the metric the mean over images. An image with no expert box counts only if
# boxes were predicted for it, and then scores 0: a false box costs as much as a missed one.
#
# The same from a terminal: `python -m pneumolib cam --run RUN --split test` writes
# `RUN/boxes_test.csv`, and `python -m pneumolib submit --run RUN --images FOLDER --out
# submission.csv` writes the file Kaggle takes.

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
# Notebook 03 trains `cfg.out`; the `demo` profile makes it here if it is missing.

# %%
pl.colab.ensure_run(cfg, profile)

# %% [markdown]
# ## Boxes from the maps
#
# Each map is cut at a fraction of its peak; each connected region larger than a minimum area
# becomes a box (at most four), with the confidence *calibrated probability x the region's
# peak*, and an image whose probability is under a floor gets no box at all. The method (CAM on
# the last layer, or Grad-CAM on an earlier, finer one), the fraction, the area and the floor are
# chosen on **val** by the metric, kept in `RUN/box_rule.json`, and applied unchanged to test.
# The cell prints the rule and its val score, then the test score.

# %%
summary = pl.cam_run(run_dir, "test", n_overlays=0)
rule, score = summary["box_rule"], summary["rsna_map"]
print(f"rule chosen on val: {rule}")
print(f"test: rsna_map {pl.with_ci(score['value'], score['ci'])} over {score['n_images']} images")

# %% [markdown]
# ## Overall, and AP and PA apart
#
# AP films are mostly bedside films of sicker patients: more of them are positive, and their
# opacities are larger. The score per view, each with its 95% CI over patients, says whether the
# boxes do better on one kind of film; overlapping intervals mean the data cannot tell.

# %%
table = pl.cam.box_score_table(run_dir, "test")
display(table.round(3))

# %% [markdown]
# ## Predicted boxes against the experts' boxes
#
# Test patients with expert boxes first, then ones the rule gave boxes without any. At IoU above
# 0.5: green, an expert box found; yellow dashed, an expert box missed; cyan, a predicted box
# that hits; red, a false box (its confidence beside it).

# %%
index = pl.read_index(cfg.cache)
test = index[index.split == "test"]
boxes = pl.cam.read_boxes(run_dir, "test")
has_box = test.boxes.map(len) > 0
with_truth = test[has_box].patientId.head(6).tolist()
false_only = [p for p in test[~has_box].patientId if len(boxes[p][1])][:2]
ids = with_truth + false_only
images, truths, preds = pl.cam.box_examples(run_dir, "test", ids)
titles = [f"{p[:8]}..." for p in ids]
display(pl.evaluate.box_outcome_grid(images, truths, preds, iou=0.5, titles=titles, ncols=4))

# %% [markdown]
# ## What box labels add: a detector
#
# The classifier's maps were never told where the boxes are. A detector is: FCOS (torchvision)
# on the same ResNet18 with a feature pyramid, trained on the train split's expert boxes,
# negatives included, with the classifier's augmentation moving the boxes with the image, and
# judged each epoch by the metric on val. It starts from the classifier's own backbone: ImageNet
# weights need the network, and on the demo the classifier's backbone is the realistic start.
# On the `demo` profile a few epochs on the CPU; on `rsna` the GPU and more epochs. A
# disconnected run resumes. The same from a terminal: `python -m pneumolib detect --cache CACHE
# --out RUN --weights CLASSIFIER_RUN`.

# %%
det_dir = run_dir.parent / "detector"
det_epochs, det_batch = (4, 8) if profile == "demo" else (12, 16)  # small batches: more steps
start = dict(weights=str(run_dir), mode="finetune")  # the classifier's backbone, all trained
pl.detect.fit_detector(
    cfg.replace(out=str(det_dir), epochs=det_epochs, batch_size=det_batch, **start)
)

# %% [markdown]
# ## Three routes on test
#
# The detector's boxes, and the same boxes **gated** by the classifier: a patient keeps them
# only where the calibrated classifier calls the film positive at its val-chosen `youden`
# point, which removes boxes on films the classifier finds clear (the winning entries did
# this). Each score has its 95% CI over patients; the differences below are paired, on the
# same patients and the same bootstrap resamples, so they are what to read: an interval that
# excludes 0 is a difference this data can see.

# %%
det = pl.detect.evaluate_detector(det_dir, "test", gate=run_dir)
scores = {"CAM boxes": summary["rsna_map"], "detector": det["rsna_map"],
          "detector + gate": det["rsna_map_gated"]}  # fmt: skip
routes = pd.DataFrame(
    [
        {
            "route": name,
            "rsna_map": s["value"],
            "95% CI": pl.with_ci(s["value"], s["ci"]),
            "images": s["n_images"],
        }
        for name, s in scores.items()
    ]  # fmt: skip
).set_index("route")
display(routes.round(3))
pairs = pl.evaluate.compare_boxes([det_dir, run_dir], "test")["box_pairs"].iloc[0]
gate = det["gate_difference"]
diff_ci = [pairs.rsna_map_diff_lo, pairs.rsna_map_diff_hi]
print(f"detector - CAM boxes: {pl.with_ci(pairs.rsna_map_diff, diff_ci)}")
print(f"gated - detector: {pl.with_ci(gate['value'], gate['ci'])}")

# %% [markdown]
# AP and PA films apart, for the CAM boxes and the detector:

# %%
by_view = pd.concat(
    {
        "CAM boxes": pl.cam.box_score_table(run_dir, "test"),
        "detector": pl.cam.box_score_table(det_dir, "test"),
    }  # fmt: skip
)
display(by_view.round(3))

# %% [markdown]
# ## The submission file
#
# Kaggle's test folder, `stage_2_test_images/`, has no labels: `submit` writes one row per DICOM,
# `patientId,PredictionString`, with `confidence x y width height ...` in the original image's
# pixels and an empty string where there is no box. Notebook 00 downloads the folder to the
# runtime's local disk, which a new Colab session no longer has: `fetch_data` downloads it again
# (the `demo` profile has a small unlabelled folder of its own). This cell submits the CAM
# boxes; `pl.submit.submit(det_dir, ..., gate=run_dir)` submits the gated detector's instead.

# %%
raw = pl.colab.fetch_data(paths, profile)
submission = run_dir / "submission.csv"
written = pl.submit.submit(run_dir, raw / "stage_2_test_images", submission, progress=False)
print(f"{len(written)} rows, {(written.PredictionString != '').sum()} with boxes -> {submission}")
display(written.head())

# %% [markdown]
# ## Submitting
#
# The competition is closed, but Kaggle still scores late submissions. Upload `submission.csv`
# on the competition's page (*Late Submission*), or with the Kaggle CLI and your own token:
# `kaggle competitions submit -c rsna-pneumonia-detection-challenge -f submission.csv -m "CAM
# boxes"`. The private leaderboard score is the same metric as above, on Kaggle's own test
# labels. The best entries were ensembles of box-trained detectors with a classifier that
# removes false positives; boxes from a classifier's maps show what image labels alone give.
