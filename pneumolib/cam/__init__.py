"""Class activation maps (notebook 05): the maps, a run's maps over a split, localisation scores,
overlays, the AP-marker shortcut study and the sentences that say what they show. The public
calls load on first use."""

from pneumolib.base.lazy import lazy_exports

_EXPORTS = {
    "pneumolib.cam.maps": "cam grad_cam BinaryLogitTarget ClassTarget",
    "pneumolib.cam.run": "cam_run cam_examples",
    "pneumolib.cam.localisation": "localisation_table pointing_game",
    "pneumolib.cam.figures": "overlay overlay_grid",
    "pneumolib.cam.box_scores": "box_score_table box_examples read_boxes",
    "pneumolib.cam.shortcut": "shortcut_run shortcut_table MARKER_LAYER",
    "pneumolib.cam.sentences": (
        "pointing_verdicts shortcut_verdicts pointing_ceiling resolution_sentence"
    ),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
