"""pneumolib: teachable pneumonia classification on RSNA chest radiographs.

    import pneumolib as pl
    cfg = pl.demo_config("pneumolib_demo")
    pl.make_demo_data(cfg.raw); pl.cache_for(cfg)
    pl.fit(cfg); pl.evaluate_run(cfg.out, "test"); pl.cam_run(cfg.out, "test")

The calls a notebook makes are here, imported on first use (`import pneumolib` loads no torch).
The folders, bottom to top, each importing only the ones below it: `base` (torch-free: config,
errors, files, progress, plots, number formats, run-folder names, metrics), `data` (00-01:
labels, DICOMs, demo phantoms, the cache), `core` (torch: augmentation, loader, models, tasks,
the inference runtime, checkpoints), `train` (03), `evaluate` (04), `cam` (05), `detect` (07:
a box detector), `tune` (06), `predict` (scoring new files), `submit` (Kaggle's file),
`course` (Colab, the demo and its report, publishing a fork) and `cli`. Each folder
re-exports its own public calls the same way: `pl.evaluate.plot_roc`.
"""

from pneumolib.base.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "pneumolib.base.config": "Config demo_config rsna_config",
    "pneumolib.base.errors": "PneumolibError UsageError RunError",
    "pneumolib.base.fmt": "with_ci",
    "pneumolib.base.rundir": "read_predictions",
    "pneumolib.data.synth": "make_demo_data",
    "pneumolib.data.preprocess": "build_cache cache_for",
    "pneumolib.data.labels": "read_index open_images",
    "pneumolib.data.cache_stats": "read_stats",
    "pneumolib.train.loop": "fit",
    "pneumolib.evaluate.run": "evaluate_run metrics_table summary_table",
    "pneumolib.evaluate.compare": "compare_runs verdicts",
    "pneumolib.evaluate.card": "write_card",
    "pneumolib.cam.run": "cam_run cam_examples",
    "pneumolib.cam.localisation": "localisation_table",
    "pneumolib.tune.engine": "sweep",
    "pneumolib.tune.storage": "load_sweep",
    "pneumolib.predict": "predict_files",
    "pneumolib.course.demo": "run_demo",
    "pneumolib.course.results": "results_table provenance_line",
    "pneumolib.course": "colab",
    # the folders themselves: `pl.evaluate.plot_roc` imports pneumolib.evaluate on first use
    "pneumolib": "base data core train evaluate cam detect tune predict submit course cli",
}
__getattr__, __dir__, _names = lazy_exports(__name__, _EXPORTS)
__all__ = [*_names, "__version__"]
