"""The torch-free layer under every stage: errors, atomic files, the `Config` dataclass, progress
bars, plot helpers, number formats, run-folder names and owners, and the metrics the trainer
scores val with. Imports nothing else of pneumolib; its names load on first use."""

from pneumolib.base.lazy import lazy_exports

_EXPORTS = {
    "pneumolib.base.config": "Config demo_config rsna_config default_workers",
    "pneumolib.base.errors": "PneumolibError UsageError RunError",
    "pneumolib.base.files": "atomic_write",
    "pneumolib.base.fmt": "with_ci interval",
    "pneumolib.base.progress": "bar",
    "pneumolib.base.rundir": "read_predictions",
    "pneumolib.base.metrics": (
        "binary_metrics binary_summary bootstrap_ci choose_thresholds "
        "expected_calibration_error reliability subgroup_metrics"
    ),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
