"""Getting and caching the data (notebooks 00-01): labels, DICOMs, the demo phantoms, the cache.

No torch here: every module imports without it. The public calls load on first use."""

from pneumolib.base.lazy import lazy_exports

_EXPORTS = {
    "pneumolib.data.labels": "LabelError load_labels make_splits read_index open_images open_cache",
    "pneumolib.data.dicom": "DicomError read_dicom",
    "pneumolib.data.synth": "make_demo_data phantom",
    "pneumolib.data.preprocess": "build_cache cache_for",
    "pneumolib.data.cache_stats": "CacheStats read_stats",
    "pneumolib.data.cache_check": "CacheDamaged verify_cache",
    "pneumolib.data.kaggle": "verify_layout download_rsna",
    "pneumolib.data.provenance": "read_truth",
    "pneumolib.data.explore": (
        "dataset_overview overview_figure demographics_figure box_table box_size_figure "
        "box_heatmap box_heatmap_figure class_examples_figure"
    ),
    "pneumolib.data.intensities": (
        "scalings mean_image mean_images intensity_histograms_figure scalings_figure "
        "mean_image_figure"
    ),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
