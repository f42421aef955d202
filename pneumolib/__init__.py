"""pneumolib: teachable pneumonia classification on RSNA chest radiographs.

Modules, one per pipeline stage: `dicom`, `data`, `synth`, `preprocess`, `augment`, `models`,
`train`, `evaluate`, `cam`, `predict`, `tune`, `demo`, `colab`, `cli`. Nothing runs at import.
"""

from pneumolib.config import Config, demo_config, rsna_config

__version__ = "0.1.0"
__all__ = ["Config", "demo_config", "rsna_config", "__version__"]
