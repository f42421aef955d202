"""Evaluation (notebook 04): a run's evaluation, metrics tables, calibration, comparisons of runs,
the model card and the figures. The public calls load on first use, so `compare_runs` and
`write_card` stay torch-free."""

from pneumolib.base.lazy import lazy_exports

_EXPORTS = {
    "pneumolib.evaluate.run": "evaluate_run metrics_table summary_table",
    "pneumolib.evaluate.compare": "compare_runs compare_boxes comparison_text verdicts delong",
    "pneumolib.evaluate.card": "write_card",
    "pneumolib.evaluate.calibration": "read_calibration fit_calibration",
    "pneumolib.evaluate.multiclass": "class_table confusion_table",
    "pneumolib.evaluate.reference": "compare_with_reference",
    "pneumolib.evaluate.boxes": (
        "rsna_map image_scores parse_prediction_string format_prediction_string box_outcomes"
    ),
    "pneumolib.evaluate.box_figures": "box_outcome_grid",
    "pneumolib.evaluate.sentences": (
        "best_epoch_sentence best_epochs_sentence ranking_sentence split_sentence "
        "threshold_sentences subgroup_sentence calibration_sentence prior_sentence "
        "calibration_steps risk_band_sentence three_class_sentence tta_sentence"
    ),
    "pneumolib.evaluate.figures": (
        "plot_roc plot_pr plot_confusion_grid plot_reliability plot_prob_hist plot_subgroups "
        "sample_predictions_figure wilson_interval"
    ),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
