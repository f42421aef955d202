"""Calibration over training seeds: the demo's run trained with three seeds, each evaluated on
val (where `evaluate` fits RUN/calibration.json) and test, raw against calibrated.

    python benchmarks/calibration_seeds.py [--work DIR] [--seeds 0,1,2] [--n-boot 1000]
        [--epochs N] [--image-size PX] [--quick] [--results DIR]

The data are the `demo` command's (`course.demo`: 500 phantoms of 1,024 px, realism "rsna", one
cache for all seeds) and each run is `demo_config` with only the training seed changed (balanced
batches; 20 epochs and 128 px unless `--epochs`, `--image-size`; `--quick`: 200 phantoms and 3
epochs, a smoke test). Prints one row per
seed: test ECE raw -> calibrated (95% bootstrap CIs), Brier and NLL the same way, the mean
probability raw and calibrated against the share positive, the fitted temperature, and whether
the test AUC is the same raw and calibrated; writes WORK/results.json and RESULTS/
calibration_seeds.json (`course.results`, default: the repository's results/). Runs already
trained in WORK are reused (resume). Not a speed benchmark: a calibration figure quoted over seeds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd
from sklearn import metrics as skm

from pneumolib.base.config import demo_config
from pneumolib.base.fmt import with_ci
from pneumolib.base.metrics import expected_calibration_error, reliability
from pneumolib.base.rundir import read_predictions
from pneumolib.course.demo import DEMO_N, DEMO_SIZE, make_cache
from pneumolib.course.results import make_table, script_command, write_results
from pneumolib.evaluate import calibration as cal
from pneumolib.evaluate.calibration import read_calibration
from pneumolib.evaluate.run import evaluate_run
from pneumolib.train.loop import fit


def one_seed(
    work: Path,
    seed: int,
    *,
    n_boot: int,
    quick: bool,
    epochs: int | None,
    image_size: int | None,
    method: str | None,
) -> dict:
    """Train (or resume) the demo run with training seed `seed` (and `epochs`, `image_size`,
    default the preset's), evaluate val then test -> one row of test calibration figures."""
    n, epochs = (200, 3) if quick else (DEMO_N, epochs)
    base = demo_config(work, raw=str(work / f"raw_{n}"), cache=str(work / f"cache_{n}"))
    base = base if epochs is None else base.replace(epochs=epochs)
    base = base if image_size is None else base.replace(image_size=image_size)
    name = f"e{base.epochs}_{base.image_size}px_seed{seed}"
    make_cache(base, n=n, size=DEMO_SIZE, progress=False)  # its split is the preset's (seed 0)
    cfg = base.replace(seed=seed, out=str(work / "runs" / name))
    fit(cfg, progress=False)
    val, m = (
        evaluate_run(
            cfg.out, split, n_boot=n_boot, figures=False, print_table=False, calibration=method
        )
        for split in ("val", "test")
    )
    c = m["calibration"]
    pred = read_predictions(cfg.out, "test")
    by_method = _test_ece_by_method(Path(cfg.out), pred)
    auc_raw = skm.roc_auc_score(pred["target"], pred["prob_raw"])
    auc = skm.roc_auc_score(pred["target"], pred["prob"])
    row = {"seed": seed, "n": m["n"], "prevalence": c["prevalence"], "T": c["temperature"]}
    for k in ("ece", "brier", "nll"):
        for when in ("raw", "calibrated"):
            row[f"{k}_{when}"], row[f"{k}_{when}_ci"] = c[when][k], c[when][f"{k}_ci"]
    row |= {"mean_raw": c["raw"]["mean_prob"], "mean_cal": c["calibrated"]["mean_prob"]}
    row |= {"val_auc": val["roc_auc"], "auc_ci": m["roc_auc_ci"]}
    row |= {f"auc_{g}": _view_auc(m, g) for g in ("AP", "PA")}
    return row | {"auc_raw": auc_raw, "auc": auc, "method": c["method"], "by_method": by_method}


def _view_auc(metrics: dict, view: str) -> float | None:
    """The test AUC on `view` films, from the subgroup table of `evaluate`'s metrics."""
    found = [
        g["roc_auc"]
        for g in metrics.get("subgroups", [])
        if g["variable"] == "view" and g["group"] == view
    ]
    return found[0] if found else None


def _test_ece_by_method(run: Path, pred: pd.DataFrame) -> dict[str, float]:
    """Test ECE of every calibration method, each fitted on the run's val predictions with the
    prior correction of its calibration.json (what `evaluate --calibration NAME` would give)."""
    shift = read_calibration(run).shift
    val = read_predictions(run, "val")
    z_val, z_test = (cal.raw_logits(p[["prob_raw"]].to_numpy()) for p in (val, pred))
    out = {}
    for name in sorted(cal.METHODS, key=lambda m: m != "none"):  # the prior correction first
        fitted = cal.fit_calibration(z_val, val["target"], shift=shift, method=name)
        p = fitted.pneumonia(z_test)
        out[name] = expected_calibration_error(reliability(pred["target"], p))
    return out


def summary_text(rows: pd.DataFrame) -> str:
    """Markdown: one row per seed, then in how many seeds calibration lowered the test ECE."""
    lines = [
        "| seed | test n (positive) | ECE raw -> calibrated | Brier raw -> calibrated "
        "| NLL raw -> calibrated | mean p raw / calibrated vs positive | T | AUC raw = cal "
        "| test ECE by method |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows.to_dict("records"):
        cells = [
            f"{with_ci(r[f'{k}_raw'], r[f'{k}_raw_ci'])} -> "
            f"{with_ci(r[f'{k}_calibrated'], r[f'{k}_calibrated_ci'])}"
            for k in ("ece", "brier", "nll")
        ]
        pos = round(r["prevalence"] * r["n"])
        lines.append(
            f"| {r['seed']} | {r['n']} ({pos}) | {' | '.join(cells)} | {r['mean_raw']:.3f} / "
            f"{r['mean_cal']:.3f} vs {r['prevalence']:.3f} | {r['T']:.2f} | "
            f"{'yes' if r['auc_raw'] == r['auc'] else 'NO'} ({r['auc']:.3f}) | "
            + ", ".join(f"{k} {v:.3f}" for k, v in r["by_method"].items())
            + " |"
        )
    lower = int((rows["ece_calibrated"] < rows["ece_raw"]).sum())
    method = rows["method"].iloc[0]
    tail = f"Calibrated ({method}) test ECE below raw in {lower} of {len(rows)} seeds."
    return "\n".join([*lines, "", tail])


FIGURES = {"ece": "ECE", "brier": "Brier", "nll": "NLL"}  # key in a row -> its column label
METHOD_LABELS = {"none": "prior correction only"}  # calibration.METHODS as a table names them


def _mean_sd(x: pd.Series) -> list[float]:
    return [float(x.mean()), float(x.std(ddof=1))]


def _with_ci(r: dict, key: str) -> list:
    """[value, low, high] of figure `key` ("ece_raw", ...) of one seed's row."""
    return [r[key], *(r[f"{key}_ci"] or [None, None])]


def _per_seed_tables(rows: pd.DataFrame) -> dict[str, dict]:
    """One row per seed: "auc" (val, test with its CI, AP and PA films) and "calibration"
    (test figures raw and calibrated, with 95% CIs, beside the share of positives)."""
    auc, calibration = [], []
    for r in rows.to_dict("records"):
        auc.append(
            {"seed": r["seed"], "val AUC": r["val_auc"], "test AUC": [r["auc"], *r["auc_ci"]]}
            | {"test AUC, AP films": r["auc_AP"], "test AUC, PA films": r["auc_PA"]}
            | {"test n": r["n"], "positives": round(r["prevalence"] * r["n"])}
        )
        row = {"seed": r["seed"]}
        for k, label in FIGURES.items():
            row |= {f"{label} raw": _with_ci(r, f"{k}_raw")}
            row |= {f"{label} calibrated": _with_ci(r, f"{k}_calibrated")}
        row |= {"mean p raw": r["mean_raw"], "mean p calibrated": r["mean_cal"]}
        row |= {"share positive": r["prevalence"], "T": r["T"]}
        calibration.append(row | {"AUC same raw and calibrated": bool(r["auc_raw"] == r["auc"])})
    numbers = ("val AUC", "test AUC, AP films", "test AUC, PA films")
    cal_numbers = ("mean p raw", "mean p calibrated", "share positive")
    return {
        "auc": make_table(auc, formats={"test AUC": "ci:3"} | {c: "num:3" for c in numbers}),
        "calibration": make_table(
            calibration,
            formats={c: "ci:3" for c in calibration[0] if c.split()[0] in FIGURES.values()}
            | {c: "num:3" for c in cal_numbers}
            | {"T": "num:2"},
            notes="Calibrated ECE below raw in every seed, the mean calibrated probability "
            "near the share positive, and the AUC unchanged.",
        ),
    }


def results_tables(rows: pd.DataFrame) -> dict[str, dict]:
    """The tables of results/calibration_seeds.json: "seeds" (test ECE raw and by method, per
    seed), per seed "auc" and "calibration", then "summary" (raw against calibrated, mean ± sd
    over seeds) and "methods" (every method's test ECE over seeds)."""
    n = len(rows)
    summary = []
    for k, label in [*FIGURES.items(), ("mean", "mean p")]:
        raw, cal = rows[f"{k}_raw"], rows["mean_cal" if k == "mean" else f"{k}_calibrated"]
        summary.append(
            {"test figure": label, "raw": _mean_sd(raw), "calibrated": _mean_sd(cal)}
            | {"lower calibrated": f"{int((cal < raw).sum())} of {n}"}
        )
    ece = pd.DataFrame(list(rows["by_method"]), index=rows["seed"])
    methods = [
        {"method": METHOD_LABELS.get(name, name), "test ECE": _mean_sd(ece[name])}
        | {f"seed {seed}": v for seed, v in ece[name].items()}
        | {"below raw": f"{int((ece[name].to_numpy() < rows['ece_raw'].to_numpy()).sum())} of {n}"}
        for name in ece.columns
    ]
    by_seed = [
        {"seed": r["seed"], "mean p raw": r["mean_raw"], "share positive": r["prevalence"]}
        | {"test ECE raw": r["ece_raw"]}
        | {METHOD_LABELS.get(k, k): v for k, v in r["by_method"].items()}
        for r in rows.to_dict("records")
    ]
    seeds = make_table(
        by_seed,
        formats={c: "num:3" for c in by_seed[0] if c != "seed"},
        notes="Test ECE per seed: raw, and each method fitted on val (the prior correction "
        "first). Look for the method whose ECE stays low on every seed.",
    )
    return (
        {"seeds": seeds}
        | _per_seed_tables(rows)
        | {
            "summary": make_table(
                summary,
                formats={"raw": "mean_sd:3", "calibrated": "mean_sd:3"},
                notes=f"Test figures over {n} training seeds, raw against calibrated "
                f"({rows['method'].iloc[0]}, fitted on val).",
            ),
            "methods": make_table(
                methods,
                formats={"test ECE": "mean_sd:3"} | {f"seed {s}": "num:3" for s in ece.index},
                notes="Each method fitted on val after the prior correction (none: the prior "
                "correction alone); test ECE.",
            ),
        }
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="folder (default: a temporary one)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=None, help="default: the demo preset's 20")
    ap.add_argument("--image-size", type=int, default=None, help="default: the preset's 128")
    ap.add_argument("--calibration", default=None, help="evaluate's method (default: its own)")
    ap.add_argument("--quick", action="store_true", help="200 phantoms, 3 epochs (smoke test)")
    ap.add_argument("--results", type=Path, default=None, help="default: the repo's results/")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="calibration_seeds_"))
    rows = [
        one_seed(
            work,
            int(s),
            n_boot=args.n_boot,
            quick=args.quick,
            epochs=args.epochs,
            image_size=args.image_size,
            method=args.calibration,
        )
        for s in args.seeds.split(",")
    ]
    table = pd.DataFrame(rows)
    print(summary_text(table))
    (work / "results.json").write_text(json.dumps(rows, indent=2, default=float))
    print(f"results: {work / 'results.json'}")
    write_results(
        "calibration_seeds",
        results_tables(table),
        command=script_command(__file__, argv),
        folder=args.results,
    )
    return 0 if (table["ece_calibrated"] < table["ece_raw"]).all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
