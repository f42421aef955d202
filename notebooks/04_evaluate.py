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
# # 04 · Evaluate: metrics with confidence intervals, thresholds, calibration, subgroups
#
# This notebook evaluates the main run of notebook 03 (`cfg.out`, its `best.pt`) on the
# validation and the test split of the cache:
#
# 1. predictions for every patient of a split (`predictions_<split>.csv` in the run folder),
# 2. ROC AUC, average precision and Brier score with 95% bootstrap confidence intervals,
# 3. **thresholds chosen on validation** (the default threshold, Youden, best F1 and a
#    sensitivity target) and applied unchanged to test: the test split never picks its own
#    threshold,
# 4. the published references (course split, validation, the default threshold) beside this run,
# 5. ROC and precision-recall curves, confusion matrices, probability histograms,
# 6. calibration: why balanced training inflates the probabilities, the prior correction and
#    a fit on validation (Platt scaling), before/after reliability diagrams, what a calibrated
#    risk means,
# 7. subgroups (AP vs PA view, sex, age band),
# 8. sample predictions, the most confident mistakes first,
# 9. test-time augmentation (TTA) as an option,
# 10. the three-class twin of notebook 03.
#
# The same from a terminal: `python -m pneumolib evaluate --run RUN --split test [--tta]`
# writes the same files (`metrics_<split>.json`, `figures/*_<split>.png`) and prints a summary.
# Under each table a cell prints what it shows on this run, in sentences read from the same
# files; the text between the cells says what to look for and why.

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
# backend renders each one passed to display().
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

import pneumolib as pl

paths = pl.colab.default_paths()
pl.colab.mount_drive(paths.drive)
profile = pl.colab.choose_profile(paths)
cfg = pl.colab.config_for(profile, paths)
run_dir = Path(cfg.out)
print(f"profile: {profile}\n    run: {run_dir}\n  cache: {cfg.cache}")

# %% [markdown]
# ## The run
#
# Notebook 03 trains it. In the `demo` profile a missing run is made here (the same
# idempotent calls as notebooks 00, 01 and 03: data and cache are reused when present, and a
# finished run is not trained again); in `rsna`, train it in notebook 03 first.

# %%
pl.colab.ensure_run(cfg, profile)
print(sorted(f.name for f in run_dir.iterdir()))

# %% [markdown]
# ## Validation, then test
#
# Each call predicts every patient of the split (the same deterministic resize as validation
# during training), bootstraps 1,000 resamples for the intervals, and writes predictions,
# metrics and figures into the run folder. The test call takes its thresholds from the
# validation predictions of the same checkpoint. Each prints a one-line summary; the tables
# follow below (`print_table=False`: the command line prints them instead).

# %%
val = pl.evaluate_run(run_dir, "val", cache=cfg.cache, print_table=False)

# %%
test = pl.evaluate_run(run_dir, "test", cache=cfg.cache, print_table=False)

# %% [markdown]
# ## The model card
#
# The test call also wrote `MODEL_CARD.md` into the run folder (`python -m pneumolib card
# --run RUN` writes it again, e.g. after notebook 05's CAMs add localisation scores): the
# sections of Mitchell et al., "Model Cards for Model Reporting" (2019), every number read
# from the run's own files, with what the model is for, what it is not for, and what was not
# measured. A run trained on synthetic data says so at its top.

# %%
display(Markdown((run_dir / "MODEL_CARD.md").read_text()))

# %% [markdown]
# ## Ranking and calibration, with 95% confidence intervals
#
# ROC AUC and average precision do not depend on a threshold; the Brier score and the
# expected calibration error (ECE) measure how well the probabilities match the observed
# frequencies (lower is better). The intervals are percentile bootstrap intervals over
# patients: with a few hundred test patients they are wide, and two runs whose intervals
# overlap widely are not shown to differ. Average precision is read against the share of
# positives, what a random ranking scores.
#
# **On the demo** look at the width of the AUC interval, not only at the AUC: the phantoms
# are built to be as hard as RSNA (faint and small opacities, look-alikes, label noise; see
# notebook 01), so no model reaches a perfect AUC here, and with a few dozen test patients one
# number says little without its interval.

# %%
display(pl.summary_table({"val": val, "test": test}))
print(pl.evaluate.split_sentence(val))
print(pl.evaluate.split_sentence(test))

# %% [markdown]
# ## Thresholds: chosen on validation, applied unchanged to test
#
# The threshold named by its value is the fixed default; `youden` maximises sensitivity +
# specificity − 1, `best_f1` the F1 score, and `sens@…` is the highest threshold that still
# finds the target share of the positives (the sensitivity target is in its name). These
# three come from the validation predictions, on the calibrated probability (see
# *Calibration* below; calibration moves the numbers, not which patients fall on either side
# of a chosen point); choosing them on test would make the test numbers optimistic.
# `predict` applies one of them by name (`--operating-point`, `sens90` by default).
#
# What to look for: the thresholds differ, though two of them often coincide (the first
# sentence says which); the sensitivity target tends to sit lowest, buying recall with
# precision; on calibrated probabilities the default is a demanding threshold, since few
# patients reach a risk of one in two. Then compare recall on val and on test at each
# threshold: a threshold tuned on a few dozen patients does not carry over exactly, and the
# sentences under the tables say by how much.

# %%
pd.DataFrame(
    {
        "chosen on val": {k: v["threshold"] for k, v in val["thresholds"].items()},
        "used on test": {k: v["threshold"] for k, v in test["thresholds"].items()},
    }
)

# %%
print("validation")
display(pl.metrics_table(val))
print("test (thresholds from validation)")
display(pl.metrics_table(test))
print("\n".join(pl.evaluate.threshold_sentences(val, test)))

# %% [markdown]
# ## Beside the published references
#
# The references are validation accuracy and precision at the default threshold on the
# **course split** of the **real RSNA data** (the first 24,000 patients train, the rest
# validation): the course's published checkpoint and the tuned model of the blog post, in the
# table below beside this run. They compare like with like only for a run on the real data
# whose cache was built with `--split course`; the note says which split rule this cache used.
# **In the demo profile the numbers are demo numbers**: the phantoms are made as hard as
# radiographs on purpose, but they are not radiographs, so a demo score compares with nothing
# published.

# %%
print(val["reference_note"])
pd.DataFrame(val["reference"]).set_index("source")[
    ["accuracy", "accuracy_lo", "accuracy_hi", "precision", "precision_lo", "precision_hi"]
].round(4)

# %% [markdown]
# ## ROC and precision-recall curves (test)
#
# The markers are the validation-chosen operating points, placed where they land on test;
# the legend gives each point's coordinates. Thresholds that land on the same point are drawn
# as nested outlines of different shapes, and the legend says which ones coincide.
#
# **On the demo** the ROC curve bends well away from the top-left corner: some positives
# (faint or small opacities, or labels the image does not support) score below many
# negatives. The precision-recall curve falls early for the same reason.

# %%
pred_val = pl.read_predictions(run_dir, "val")
pred_test = pl.read_predictions(run_dir, "test")
thresholds = {k: v["threshold"] for k, v in val["thresholds"].items()}
y, p = pred_test["target"].to_numpy(), pred_test["prob"].to_numpy()
display(pl.evaluate.plot_roc(y, p, thresholds=thresholds))
display(pl.evaluate.plot_pr(y, p, thresholds=thresholds))

# %% [markdown]
# ## Confusion matrices (test)
#
# One column per threshold: counts on top, fractions of each true class below (the diagonal
# of the lower row is specificity, then sensitivity).

# %%
pl.evaluate.plot_confusion_grid(y, p, thresholds)

# %% [markdown]
# ## Calibration: from a score to a risk
#
# **Why balanced training inflates the probabilities.** A class-balanced batch shows the
# network a positive half the time, whatever the prevalence π of the population; it learns
# the odds of that world, whose log-odds are 0, so its logit is too high by −logit(π). A
# positive-class weight w (`pos_weight`, by default negatives / positives) does the same: it
# multiplies the positives' likelihood, adding log w. Both are known in closed form, so
# `evaluate` first undoes them with the train prevalence (the *prior correction*: p =
# sigmoid(logit + shift)); the sentence under the table works it out for this run. A network
# is rarely exactly the closed form's, though: it can be over- or under-confident (a
# *temperature* T, p = sigmoid(logit / T + shift)), and its bias can differ from the one the
# prior predicts (*Over training seeds*, below, shows how much from one seed to the next).
# So for the binary task `evaluate` fits *Platt scaling* on the validation predictions by
# default, p = sigmoid(a (logit + shift) + b), minimising their negative log-likelihood: a
# scale and a bias, starting from the prior correction (`--calibration temperature` keeps the
# prior's bias and fits T alone; a three-class run always does that). Every step is an
# increasing function of the logit, so the ranking, and the AUC, do not change; only what a
# number means does. The fit is written to `calibration.json` in the run folder, with the
# operating points chosen on the calibrated validation probabilities, so `predict
# --checkpoint RUN/best.pt` applies both with nothing else to pass.

# %%
cal = pl.evaluate.read_calibration(run_dir)
fitted = {"method": cal.method, "prior shift (logit)": round(cal.shift[-1], 3)}
fitted |= {"temperature": round(cal.temperature, 3), "Platt a, b": [round(v, 3) for v in cal.platt]}
fitted |= {"train prevalence": cal.train_prevalence, "val prevalence": cal.val_prevalence}
display(pd.Series(fitted, name="calibration.json"))
display(pd.Series(cal.operating_points, name="operating points (calibrated val probability)"))
print(pl.evaluate.prior_sentence(cal))

# %% [markdown]
# Step by step on both splits: the network's mean probability, after the prior correction
# alone, and after the fit, against the share of patients who are positive. A calibrated mean
# close to the share positive is the first thing to check; the diagram below checks it bin by
# bin.

# %%
pl.evaluate.calibration_steps({"val": pred_val, "test": pred_test}, cal).round(3)

# %% [markdown]
# The test figures before and after, each with its 95% bootstrap interval: expected
# calibration error (ECE), Brier score and negative log-likelihood (lower is better).

# %%
block = test["calibration"]
before_after = {
    when: {k: pl.with_ci(block[when][k], block[when][f"{k}_ci"]) for k in ("ece", "brier", "nll")}
    for when in ("raw", "calibrated")
}
display(pd.DataFrame(before_after))
print(pl.evaluate.calibration_sentence(test))

# %% [markdown]
# ### Over training seeds
#
# One run's calibration says little about the next: the raw probabilities of the same recipe
# trained with another seed can sit far from the share positive in either direction, and the
# prior correction alone does not always bring them back. `benchmarks/calibration_seeds.py`
# trains the demo's main run with several seeds and reports, per seed, the mean raw
# probability and the test ECE raw, after the prior correction alone, with a temperature and
# with Platt scaling (`results/calibration_seeds.json`; the line under the table says which
# command made it, when and on what). Look for the method whose ECE stays low on every seed:
# that is why Platt scaling is the default.

# %%
cal_seeds = pl.results_table("calibration_seeds")
display(cal_seeds)
print(cal_seeds.attrs["provenance"])

# %% [markdown]
# The reliability diagram puts the observed frequency of pneumonia (with its 95% Wilson
# interval) against the mean predicted probability, bin by bin, for the raw and the
# calibrated probabilities: on the diagonal, a probability can be read as a risk. The bins
# hold equal numbers of cases (with confident predictions, equal-width bins would be nearly
# all empty); the figure says how many bins there are and why, when there are few. With a
# few dozen test patients the intervals are wide: calibration is estimated, like any metric.

# %%
display(pl.evaluate.plot_reliability(y, p, raw=pred_test["prob_raw"].to_numpy()))
display(pl.evaluate.plot_prob_hist(y, p, thresholds=thresholds))

# %% [markdown]
# **What a calibrated risk means.** Of a hundred patients who are each given a calibrated
# risk p, about 100 p have pneumonia: the number is a risk in the population the model was
# calibrated on (the validation split's). Below, the test patients the calibrated model put
# in a band of risks, how many of them were positive, and the same band of the raw
# probabilities: the calibrated band's share positive should sit near its mean probability,
# the raw band's need not. A calibrated probability carries over only to a population like
# the calibration one: at another hospital, with another prevalence, fit it again on its
# patients (`evaluate` on a validation split of theirs).

# %%
risk_band = (0.2, 0.4)  # around a calibrated risk of 0.3
print(pl.evaluate.risk_band_sentence(pred_test, *risk_band))

# %% [markdown]
# ## Subgroups: AP vs PA view, sex, age band (test)
#
# In the RSNA data, AP films (often bedside, sicker patients) carry far more pneumonia than
# PA films, so a model can score well overall partly by recognising the view. Per-view AUC
# shows how well it ranks *within* each kind of film. Small groups have wide intervals; "n/a"
# marks a group where the metric is undefined (e.g. AUC with only one class in the group).
#
# **On the demo** AP films are positive more often than PA films (as in RSNA) and look
# different (portable: flatter, noisier, a larger heart). Compare the two views' AUCs with
# their intervals: with a handful of positives per view a subgroup's AUC, or the difference
# between two, means nothing without its interval. The sentences name the groups whose AUC is
# undefined.

# %%
sub = pd.DataFrame(test["subgroups"])
cols = ["variable", "group", "n", "n_pos", "roc_auc", "roc_auc_lo", "roc_auc_hi"]
cols += ["sensitivity", "specificity"]
display(sub[sub["threshold_name"] == "youden"][cols].round(3))
for variable in ("view", "sex", "age_band"):
    print(pl.evaluate.subgroup_sentence(test, variable))

# %%
pl.evaluate.plot_subgroups(sub, "roc_auc", threshold_name="youden", overall=test["roc_auc"])

# %% [markdown]
# ## Sample predictions (test)
#
# The most confident mistakes first, if there are any (false positives with the highest
# probability, false negatives with the lowest), then correct calls at random; right/wrong at the
# validation-chosen Youden threshold, expert boxes in yellow. Mistakes are where to look for
# label noise, devices and unusual films.
#
# **On the demo** we can check what a second reader would: `pl.data.read_truth` says what each
# phantom really shows. The table after the figure lists the most confident mistakes with
# that truth: some are label noise (the model saw the opacity the label missed, or rightly
# ignored a box drawn on nothing), others are faint opacities or look-alikes.

# %%
pl.evaluate.sample_predictions_figure(pred_test, cfg.cache, metrics=test, n=12)

# %%
if profile == "demo":
    youden = thresholds["youden"]
    truth = pl.data.read_truth(cfg.raw).drop(columns=["view", "label"])
    wrong = pred_test[(pred_test.prob >= youden) != (pred_test.target == 1)]
    wrong = wrong.assign(confidence=(wrong.prob - youden).abs()).nlargest(6, "confidence")
    cols = ["patientId", "prob", "target", "label_noise", "faint", "small", "mimic"]
    print(wrong.merge(truth, on="patientId")[cols].round(3).to_string(index=False))

# %% [markdown]
# ## Test-time augmentation (optional)
#
# `tta=True` averages the probabilities over deterministic variants of each image (the plain
# resize, small shifts along x and y and a zoom in and out; a horizontal flip only for runs
# trained with flips; the sentence names them). Thresholds again come from validation, this
# time from TTA predictions. It costs one forward pass per variant and image; the files get a
# `_tta` suffix. Look at whether the AUC moves by more than its interval: on a model that has
# not learned invariance to these small moves, averaging helps; otherwise it only costs time.

# %%
test_tta = pl.evaluate_run(run_dir, "test", tta=True, cache=cfg.cache)
display(pl.summary_table({"test": test, "test + TTA": test_tta}))
print(pl.evaluate.tta_sentence(test, test_tta))

# %% [markdown]
# ## The three-class head
#
# Notebook 03 also trains the main run's twin on RSNA's three classes (Normal, No Lung
# Opacity / Not Normal, Lung Opacity; `task="three-class"`), made here if missing in the
# `demo` profile. Its pneumonia probability is P(Lung Opacity), so every table above applies
# to it unchanged; it adds one-vs-rest AUC per class, the 3 × 3 confusion matrix (columns:
# the most probable class) and macro-F1, each with a 95% bootstrap interval.
#
# **On the demo** expect the three-class twin to tell the classes apart unevenly: the
# one-vs-rest AUCs differ from class to class, and its most probable class leans towards one
# of them (the sentence counts the calls per class). Its pneumonia AUC is the Lung Opacity
# row, which is what the comparison below puts against the binary run.

# %%
three = pl.colab.three_class_run(cfg)
pl.colab.ensure_run(three, profile)
pl.evaluate_run(three.out, "val", cache=cfg.cache, print_table=False, figures=False)
test3 = pl.evaluate_run(three.out, "test", cache=cfg.cache, print_table=False)
display(pl.evaluate.class_table(test3["three_class"]))
display(pl.evaluate.confusion_table(test3["three_class"]))
print(pl.evaluate.three_class_sentence(test3["three_class"]))

# %% [markdown]
# Does the extra label help the pneumonia AUC? The binary run and its three-class twin on the
# same test patients, with the paired bootstrap interval of the difference (one resampling of
# the patients for both runs) and DeLong's test. The verdict is for one training seed;
# notebook 03's *Over training seeds* table (`results/study_seeds.json`) shows whether the
# binary run's lead repeats over seeds.

# %%
labels = pl.compare_runs([run_dir, three.out], "test")
display(
    labels["pairs"]
    .set_index(["a", "b"])[["roc_auc_diff", "roc_auc_diff_lo", "roc_auc_diff_hi", "delong_p"]]
    .round(3)
)
print(pl.evaluate.ranking_sentence(labels))
print("\n".join(pl.verdicts(labels)))

# %% [markdown]
# ## The files
#
# Everything above is in the run folder, for reports and for notebook 05 (CAM).

# %%
for f in sorted(run_dir.glob("*_*.*")) + sorted((run_dir / "figures").glob("*.png")):
    print(f.relative_to(run_dir))
