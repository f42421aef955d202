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
# # 03 · Train: ResNet18 by fine-tuning, feature extraction and from scratch
#
# This notebook trains a ResNet18 to tell pneumonia (lung opacity) from no pneumonia on the
# cache of notebook 01, in the three transfer modes the original study compares:
#
# | mode (`Config.mode`) | starts from | trains |
# | --- | --- | --- |
# | `finetune` | ImageNet weights | every layer |
# | `feature-extraction` | ImageNet weights | the final layer only (backbone and BN stats frozen) |
# | `scratch` | random weights | every layer (the course's baseline) |
#
# A fourth run asks whether RSNA's finer label helps: every patient is one of **Normal**, **No
# Lung Opacity / Not Normal** or **Lung Opacity**, and `task="three-class"` trains a 3-logit
# head on them (cross-entropy), reading the pneumonia probability as P(Lung Opacity), so it is
# evaluated and compared exactly like the binary runs.
#
# Each run writes a **run folder** (`config.json`, `metrics.csv`, `last.pt`, `best.pt`) that
# notebooks 04 and 05 evaluate. `pl.fit(cfg)` shows a progress bar per epoch and one line per
# epoch (loss, validation AUC, accuracy, learning rate, seconds), and saves a complete
# checkpoint after every epoch, so **nothing is lost when Colab disconnects**: reconnect, run
# the notebook from the top, and each run continues after its last finished epoch (a finished
# run does nothing). In Colab the runs live on Drive.
#
# The same training runs from a terminal: `python -m pneumolib train --cache CACHE --out RUN
# --mode finetune --epochs 10`, and on several GPUs with
# `torchrun --nproc-per-node 4 -m pneumolib train --cache CACHE --out RUN ...` (the effective
# batch size stays `--batch-size`, split over the GPUs).

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
from pathlib import Path

from IPython.display import display

import pneumolib as pl

paths = pl.colab.default_paths()
pl.colab.mount_drive(paths.drive)
profile = pl.colab.choose_profile(paths)
cfg = pl.colab.config_for(profile, paths)
print(pl.colab.gpu_report())

# %% [markdown]
# ## The cache
#
# Made by notebook 01; the `demo` profile makes its synthetic data and cache here if they are
# missing. Both calls return at once when the data is already there.

# %%
cache = pl.colab.ensure_cache(cfg, profile)

# %% [markdown]
# ## The runs
#
# Each run is a `Config` that differs from the profile's preset in a few fields
# (`pl.colab.study_runs` makes them; read it to change one); `cfg.out` is the run that notebooks
# 04–06 evaluate.
#
# **rsna** (GPU): fine-tuning from ImageNet weights is the main run; feature extraction
# starts from the same weights with a larger learning rate (only the last layer learns);
# scratch starts from random weights. The cell below prints each run's epochs and learning
# rate; each epoch's line says how many seconds it took.
#
# **demo** (CPU, no network, so no ImageNet weights): the scratch run comes first and is the
# main run (the preset's epochs on small synthetic radiographs, seconds each). ImageNet's
# stand-in is `pretext_weights`: a ResNet18 trained on **another task on other images**, to
# tell AP from PA films on phantoms that are not the demo's patients, as ImageNet is
# another task on other images for RSNA. Fine-tuning and feature extraction start from it.
# What to expect, and why: its features know film quality and heart size, not opacities.
# Feature extraction keeps them frozen, so it can find pneumonia only through what they
# carry (AP films are more often positive, and opacities change a film's grey levels a
# little). Fine-tuning lets every layer move, but starts from features tuned to another
# question.

# %%
runs = pl.colab.study_runs(cfg, profile, paths.demo_root)
for name, c in runs.items():
    print(
        f"{name:>18}: {c.out}  (mode {c.mode}, task {c.task}, weights {c.weights}, "
        f"{c.epochs} epochs, lr {c.lr:g})"
    )

# %% [markdown]
# ## The main run
#
# Watch the bar for the current epoch and the line each epoch ends with; a `*` marks a new
# best epoch, saved as `best.pt`: a higher validation AUC, or the same AUC at a lower
# validation loss (a small validation split can reach a perfect AUC early). The sentence after
# the last epoch says which epoch was kept, and whether the last epochs still moved: a val AUC
# that has flattened out will not be rescued by more epochs.

# %%
main = next(iter(runs))
summary = pl.fit(runs[main])
print(pl.evaluate.best_epoch_sentence(summary["history"], summary["monitor"]))

# %% [markdown]
# ## After a disconnect: run the cell again
#
# This is what re-running a training cell prints after Colab dropped the connection: it
# finds `last.pt` in the run folder and continues after the last finished epoch. The run is
# finished here, so it has nothing left to do. A run cannot be changed afterwards: a config
# that differs in anything that changes the result (the learning rate, or the number of
# epochs, over which the learning-rate schedule is laid out) is refused with a message that
# asks for a new run folder (`cfg.replace(out=...)`).

# %%
summary = pl.fit(runs[main])
print(f"{summary['epochs']} epochs in {summary['out']}; best val AUC {summary['best']:.4f}")

# %% [markdown]
# ## The other modes, and the three-class head

# %%
for name, c in list(runs.items())[1:]:
    print(f"--- {name}")
    pl.fit(c)

# %% [markdown]
# ## Curves and comparison
#
# Loss (train solid, validation dashed) and validation AUC per epoch; the star marks each
# run's best epoch, the one kept in `best.pt`. The training loss is measured on augmented
# batches, with positives weighted up (`pos_weight`, negatives / positives of the training
# split; the demo draws class-balanced batches instead), the validation loss on plain images
# at their real class mix, so follow each curve over the epochs rather than comparing the
# two. The table has the validation metrics at that epoch (accuracy, precision and recall at
# the default threshold; notebook 04 picks thresholds properly and reports the test split with
# confidence intervals) and the training time; the sentence under it orders the runs.
#
# **On the demo** the two runs that start from the AP-vs-PA classifier start from features
# that do not see opacities: look at whether fine-tuning catches up with scratch, and at what
# freezing those features costs. With a few dozen
# validation patients the gaps are of the size of their confidence intervals, so the paired
# comparison below, not this table, decides whether two modes differ. On RSNA, ImageNet
# features (edges, textures) are more general than a view classifier's, and fine-tuning
# usually wins.

# %%
folders = {name: c.out for name, c in runs.items()}
pl.train.plot_history(folders)

# %%
best_table = pl.train.best_epochs(folders)
display(best_table.round(3))
print(pl.evaluate.best_epochs_sentence(best_table))

# %% [markdown]
# ## Which mode wins, on the same patients
#
# The table above is validation at the best epoch, each run with its own interval. The
# question the study asks is paired: on the **same test patients**, does fine-tuning rank
# them better than feature extraction or training from scratch? `pl.compare_runs` evaluates
# every run on test, resamples the patients once for all runs (1,000 times), and gives each
# pair's difference with its 95% interval, plus DeLong's test for the AUC difference
# (`python -m pneumolib compare --run A --run B --run C` from a terminal). A gap whose
# interval includes 0 is not shown by these patients.
#
# Read the sentences under the tables: first the runs by test AUC, each with its own
# interval, then one verdict per pair. On the demo's few dozen test patients the intervals
# are wide: look at which pairs the verdicts separate and which they cannot, rather than at
# the order of the AUCs. One training run per mode says little, because the interval is over
# patients and a second seed moves each AUC too; *Over training seeds*, below, shows whether
# an order holds.

# %%
for c in runs.values():
    pl.evaluate_run(c.out, "test", figures=False, print_table=False)
modes = [runs[m].out for m in ("finetune", "feature-extraction", "scratch")]
by_mode = pl.compare_runs(modes, "test")
display(by_mode["runs"].set_index("run").round(3))
display(by_mode["pairs"].set_index(["a", "b"]).round(3))
print(pl.evaluate.ranking_sentence(by_mode))
print("\n".join(pl.verdicts(by_mode)))

# %% [markdown]
# ## Does the extra label help?
#
# The same comparison for the binary main run and its three-class twin (same mode, weights,
# schedule and seed; only the head and the loss differ). Both are scored by their pneumonia
# probability, so the AUC difference answers whether learning the "Not Normal" class as its
# own class changes how well pneumonia is ranked. Notebook 04 shows the three-class run's
# own metrics (per-class AUC, the 3 × 3 confusion matrix, macro-F1).
#
# **On the demo** expect the extra label to hurt: the three-class head learns more slowly on
# a few hundred phantoms, and balanced draws over three classes give the positives a third of
# each batch instead of half. Whether one seed's gap is more than resampling noise is what the
# verdict says; *Over training seeds* below shows whether it repeats. On RSNA it has not been
# measured.

# %%
labels = pl.compare_runs([runs[main].out, runs["three-class"].out], "test")
display(labels["runs"].set_index("run")[["n", "roc_auc", "roc_auc_lo", "roc_auc_hi"]].round(3))
print(pl.evaluate.ranking_sentence(labels))
print("\n".join(pl.verdicts(labels)))

# %% [markdown]
# ## Over training seeds
#
# One training run per mode answers for one seed: the initial weights and the order of the
# batches move a run's AUC as much as the patients do. `benchmarks/study_seeds.py` trains
# every run of this notebook's demo study again with other seeds and evaluates each on the
# same test patients; its results file (`results/study_seeds.json`) holds the test AUC of
# each mode over the seeds (mean and standard deviation) and how often a paired interval
# excluded 0. The line under the table says which command made it, when and on what.
#
# Look for an order that holds over seeds: a pair whose mean difference is small beside its
# spread, or whose paired interval excludes 0 in few seeds, has no order on these phantoms,
# however clear one seed made it look. On RSNA with ImageNet weights the order may differ.

# %%
over_seeds = pl.results_table("study_seeds")
display(over_seeds)
print(over_seeds.attrs["provenance"])

# %% [markdown]
# ## The run folder
#
# Everything needed to evaluate the run or to continue it: the whole config, the metrics per
# epoch and two complete checkpoints (`last.pt` to resume, `best.pt` to evaluate). Checkpoints
# load with `torch.load(path, weights_only=True)`; `pneumolib.core.models.load_checkpoint_model`
# rebuilds the model from one.

# %%
for f in sorted(Path(cfg.out).iterdir()):
    if f.is_file():
        print(f"{f.name:>12}  {f.stat().st_size / 1e6:6.2f} MB")

# %% [markdown]
# ## Next
#
# Notebook 04 evaluates `cfg.out` on the test split (`python -m pneumolib evaluate --run RUN`),
# notebook 05 shows where the network looks (CAM), notebook 06 tunes batch size and learning
# rate.
