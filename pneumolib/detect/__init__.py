"""Box detection (notebook 07): a torchvision detector on a 1-channel ResNet-FPN, trained on the
cache's expert boxes with the classifier's conventions, scored with the challenge's metric. The
public calls load on first use."""

from pneumolib.base.lazy import lazy_exports

_EXPORTS = {
    "pneumolib.detect.loop": "fit_detector as_detector",
    "pneumolib.detect.model": "build_detector load_detector",
    "pneumolib.detect.score": "split_boxes choose_box_threshold",
    "pneumolib.detect.evaluate": "evaluate_detector",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
