"""The model card's sections on use (Mitchell et al., 2019): intended use, ethical
considerations, and caveats and recommendations (the AP/PA confound, label noise, thresholds,
inputs unlike the training films, what was not measured). Torch-free, as the card is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from pneumolib.base.fmt import num


def intended_use_section() -> list[str]:
    return [
        "## Intended use",
        "",
        "- Primary use: teaching and research. The model shows how a chest-radiograph "
        "classifier is trained, evaluated with confidence intervals, calibrated, checked across "
        "subgroups and explained; it is a worked example, not a product.",
        "- Primary users: students, researchers and engineers learning these methods.",
        "- Out of scope: any clinical use. It is not a medical device, has no regulatory "
        "clearance (FDA, CE, UKCA or other), and must not be used to diagnose, triage, screen "
        "or make any decision about a patient. Also out of scope: lateral films, other "
        "modalities and findings, and images from other hospitals, devices or populations "
        "without a new validation; reading its probabilities as risks.",
        "",
    ]


def ethics_section(synthetic: bool | None) -> list[str]:
    data = (
        "- Data: synthetic phantoms, no patients behind them: no privacy risk, and no evidence "
        "about patients either."
        if synthetic
        else "- Data: de-identified public images released for research (RSNA Pneumonia "
        "Detection Challenge, from NIH ChestX-ray14); the patients did not consent to this use "
        "in particular. Do not try to re-identify them."
    )
    return [
        "## Ethical considerations",
        "",
        data,
        "- Harm: a missed pneumonia (false negative) delays treatment; a false positive can "
        "mean needless antibiotics. A model that looks accurate invites more trust than its "
        "evidence supports (automation bias).",
        "- Fairness: only view, sex and age band are reported, with wide intervals; how the "
        "model does for groups the data does not describe is unknown.",
        "",
    ]


def caveats_section(
    *,
    index: pd.DataFrame | None,
    metrics: Mapping[str, Mapping[str, Any] | None],
    noisy_labels: tuple[int, int] | None,
    missing: Sequence[str],
) -> list[str]:
    lines = ["## Caveats and recommendations", ""]
    lines += [_confound(index, metrics)]
    noise = (
        f" In this synthetic data {noisy_labels[0]} of {noisy_labels[1]} labels disagree with "
        "their image by design (demo_truth.csv)."
        if noisy_labels
        else ""
    )
    lines += [
        "- Label noise: each RSNA label is one reading (or a small consensus) of one film, and "
        "readers of chest films disagree often (kappa about 0.4-0.75); every figure here "
        f"measures agreement with these labels, not with the disease.{noise}",
        "- Thresholds: pick the operating point for the use at hand, on validation data of the "
        "population it is used on; none of the ones above is right for every use.",
        _inputs(metrics),
        "- Not measured: validation on another hospital or population, prospective use, "
        "comparison with radiologists, effect on patient outcomes, robustness to other "
        "scanners and image processing, ethnicity and other unrecorded factors"
        + ("; " + "; ".join(missing) if missing else "")
        + ".",
        "",
    ]
    return lines


def _inputs(metrics: Mapping[str, Any]) -> str:
    """What `predict` does with an input unlike the training films, and how often test is
    flagged (metrics_<split>.json's `ood`)."""
    text = (
        "- Other inputs: `predict` leaves the decision empty for an input that is not like "
        "the training films (colour, tiny, another modality or body part, or far from their "
        "features: RUN/ood.npz)."
    )
    split = "test" if metrics.get("test") else "val" if metrics.get("val") else None
    ood = (metrics.get(split) or {}).get("ood") if split else None
    if ood:
        text += (
            f" On {split}, {ood['flagged']:.1%} of films are flagged by the learned check "
            f"(threshold at the {ood['quantile']:g} quantile of held-out films)."
        )
    return text


def _confound(index: pd.DataFrame | None, metrics: Mapping[str, Any]) -> str:
    """The AP/PA confound, with this data's prevalence per view and the AUC within each view."""
    text = (
        "- The AP/PA confound: AP films are mostly portable films of sicker patients and look "
        "different (flatter, noisier, a larger heart), so a model can score the view instead "
        "of the opacity."
    )
    if index is not None and "view" in index:
        prev = index.groupby(index["view"].astype(str))["target"].mean()
        if {"AP", "PA"} <= set(prev.index):
            text += (
                f" Here AP films are positive {num(float(prev['AP']))} of the time against "
                f"{num(float(prev['PA']))} for PA (index.csv)."
            )
    split = "test" if metrics.get("test") else "val" if metrics.get("val") else None
    if split:
        m = metrics[split]
        # roc_auc is the same on every threshold's row of a group
        within = {
            r["group"]: r.get("roc_auc") for r in m.get("subgroups", []) if r["variable"] == "view"
        }
        if within:
            parts = ", ".join(f"{g} {num(v)}" for g, v in within.items())
            text += (
                f" ROC AUC on {split}: {num(m.get('roc_auc'))} overall, within each view "
                f"{parts}; the within-view figures are the ones free of this cue."
            )
    return text
