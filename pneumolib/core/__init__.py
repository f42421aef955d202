"""The torch layer over `data`, under every stage that trains or predicts: augmentation, the
loader, models, tasks, the inference runtime and checkpoints. The public calls load on first
use."""

from pneumolib.base.lazy import lazy_exports

_EXPORTS = {
    "pneumolib.core.augment": (
        "AugmentPolicy augment_batch_cpu augment_batch_torch batch_rng warp_boxes "
        "cv2_warp_is_exact cpu_warp_name"
    ),
    "pneumolib.core.augment_figures": (
        "show_transforms show_policy_grid warp_agreement compare_warps single_transforms"
    ),
    "pneumolib.core.loader": "make_loader",
    "pneumolib.core.models": "Classifier build_model load_checkpoint_model trainable_parameters",
    "pneumolib.core.tasks": "Task task_spec",
    "pneumolib.core.runtime": "resolve_device predict_probs to_device_batch",
    "pneumolib.core.checkpoint": "Run load_run",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
