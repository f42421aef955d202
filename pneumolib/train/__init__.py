"""Training (notebook 03): one setup, one optimiser step, the epoch loop, the learning curves.
The public calls load on first use."""

from pneumolib.base.lazy import lazy_exports

_EXPORTS = {
    "pneumolib.train.loop": "fit",
    "pneumolib.train.setup": "seed_everything",
    "pneumolib.train.curves": "plot_history best_epochs",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
