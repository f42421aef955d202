"""`python -m pneumolib demo`: the whole pipeline on data the package makes itself.

Synthetic RSNA-shaped DICOMs -> cache -> training -> evaluation (val and test) -> CAMs scored
against the boxes -> a tiny batch-size x learning-rate sweep -> OUT/report.md. Minutes on two
CPU cores; every step is idempotent, so an interrupted demo resumes when run again.
Demo numbers describe synthetic phantoms, not pneumonia on real radiographs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pneumolib.config import Config, demo_config


def _step(title: str) -> float:
    print(f"\n== {title} " + "=" * max(0, 60 - len(title)), flush=True)
    return time.perf_counter()


def run_demo(out: str | Path = "pneumolib_demo", quick: bool = False) -> Path:
    """Run every stage on the demo profile into `out`; returns the path of report.md."""
    from pneumolib.cam import cam_run
    from pneumolib.evaluate import evaluate_run
    from pneumolib.figures import plot_history
    from pneumolib.preprocess import build_cache
    from pneumolib.synth import make_demo_data
    from pneumolib.train import fit
    from pneumolib.tune import plot_heatmap, sweep

    out = Path(out)
    cfg: Config = demo_config(out)
    n, epochs = (200, 3) if quick else (400, cfg.epochs)
    cfg = cfg.replace(epochs=epochs, raw=str(out / f"raw_{n}"))
    times: dict[str, float] = {}

    t = _step(f"1. demo data: {n} phantom DICOMs, 1024x1024 JPEG Baseline")
    make_demo_data(cfg.raw, n=n, size=1024, seed=0)
    times["data"] = time.perf_counter() - t

    t = _step(f"2. preprocess -> {cfg.cache} ({cfg.cache_size} px)")
    build_cache(cfg.raw, cfg.cache, size=cfg.cache_size, split=cfg.split, seed=cfg.seed)
    times["preprocess"] = time.perf_counter() - t

    t = _step(f"3. train {cfg.model} ({cfg.mode}, {cfg.epochs} epochs) -> {cfg.out}")
    summary = fit(cfg)
    run = Path(cfg.out)
    (run / "figures").mkdir(exist_ok=True)
    plot_history({cfg.mode: summary["history"]}).savefig(run / "figures" / "curves.png", dpi=100)
    times["train"] = time.perf_counter() - t

    t = _step("4. evaluate on val (thresholds chosen here) and test (thresholds applied)")
    metrics = {split: evaluate_run(run, split, n_boot=1000) for split in ("val", "test")}
    times["evaluate"] = time.perf_counter() - t

    t = _step("5. Grad-CAM (layer2) on val and test true positives, scored against the boxes")
    loc = {
        split: cam_run(run, split, n_overlays=8, method="gradcam", layer="layer2")
        for split in ("val", "test")
    }
    times["cam"] = time.perf_counter() - t

    t = _step("6. tiny batch-size x learning-rate sweep")
    sweep_epochs = 1 if quick else 2
    table = sweep(
        cfg.replace(epochs=sweep_epochs, out=str(out / "sweep")),
        batch_sizes=[16, 32, 64],
        lrs=[1e-3, 2e-3],
        study=f"demo_e{sweep_epochs}",  # a --quick and a full demo may share one folder
        progress=False,
    ).drop(columns="run_dir")
    plot_heatmap(table, "val_auc").savefig(out / "sweep" / "heatmap.png", dpi=100)
    times["sweep"] = time.perf_counter() - t

    report = out / "report.md"
    report.write_text(_report(cfg, summary, metrics, loc, table, times, run, out))
    print(f"\nreport: {report}")
    return report


def _fmt(x: object) -> str:
    """3 decimals for numbers; "–" for undefined ones (e.g. precision with no positive call)."""
    if x is None:
        return "–"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _report(cfg, summary, metrics, loc, table, times, run: Path, out: Path) -> str:
    from pneumolib.localisation import localisation_table

    hist = summary["history"]
    test = metrics["test"]
    thr = test["thresholds"]["0.5"]
    lines = [
        "# pneumolib demo report",
        "",
        "Synthetic phantoms made by `pneumolib.synth`: these numbers show that the pipeline works,",
        "not how well a model detects pneumonia on real radiographs.",
        "",
        f"- data: `{cfg.raw}`; cache `{cfg.cache}` ({cfg.cache_size} px)",
        f"- model: {cfg.model}, {cfg.mode}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"lr {cfg.lr:g}, {cfg.image_size} px",
        f"- best val AUC during training: {hist['val_auc'].max():.3f} (epoch "
        f"{int(hist.loc[hist['val_auc'].idxmax(), 'epoch'])})",
        "",
        "## Test split (thresholds chosen on val)",
        "",
        "| metric | value | 95% CI |",
        "| --- | --- | --- |",
        f"| ROC AUC | {_fmt(test['roc_auc'])} | {_ci(test.get('roc_auc_ci'))} |",
        f"| average precision | {_fmt(test['average_precision'])} | "
        f"{_ci(test.get('average_precision_ci'))} |",
    ]
    for m in ("accuracy", "precision", "recall", "specificity"):
        lines.append(f"| {m} @ 0.5 | {_fmt(thr[m])} | {_ci(thr.get('ci', {}).get(m))} |")
    lines += ["", "## Where the network looks (Grad-CAM layer2, true positives)", ""]
    lines += ["```", localisation_table(loc).to_string(), "```"]
    if not all(s["n"] for s in loc.values()):
        lines += ["", "A split without true positives has nothing to score (NaN): the model called"]
        lines += ["no positive there at 0.5. `--quick` trains too briefly; the full demo learns."]
    lines += [
        "",
        "## Sweep (val AUC)",
        "",
        "```",
        table.to_string(index=False),
        "```",
    ]
    lines += ["", "## Seconds per step", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in times.items()]
    lines += [
        "",
        "Figures: "
        + ", ".join(str(p.relative_to(out)) for p in sorted((run / "figures").glob("*.png"))),
    ]
    lines += [f"Sweep heat map: {(out / 'sweep' / 'heatmap.png').relative_to(out)}", ""]
    (out / "report.json").write_text(json.dumps({"test": test.get("roc_auc"), "times": times}))
    return "\n".join(lines)


def _ci(ci: object) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, float) for v in ci):
        return f"{ci[0]:.3f}–{ci[1]:.3f}"
    return "–"
