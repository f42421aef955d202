"""pneumolib: teachable pneumonia classification on RSNA chest radiographs.

One subpackage per stage, in the notebooks' order (the README's package table says which
module holds which rule): `data` (00-01: labels, DICOMs, the demo phantoms, the cache; no
torch), `core` (the layer under every stage: augmentation, loader, models, tasks, the
inference runtime, run folders, progress bars, plotting and number formats), `train` (03),
`evaluate` (04: metrics, comparisons, the model card), `cam` (05), `tune` (06), `predict`
(scoring new files), `course` (Colab, the demo and its report, publishing a fork), and
`config` and `cli` at the top. Nothing runs at import.
"""

from pneumolib.base.config import Config, demo_config, rsna_config

__version__ = "0.1.0"
__all__ = ["Config", "demo_config", "rsna_config", "__version__"]
