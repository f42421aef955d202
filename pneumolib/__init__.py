"""pneumolib: teachable pneumonia classification on RSNA chest radiographs.

Modules, one job each (the README's module table says which): `config`, `dicom`, `dicom_write`,
`data`, `synth`, `provenance`, `preprocess`, `cache_files`, `cache_partial`, `explore`,
`intensities`, `augment`, `loader`, `models`, `tasks`, `runtime`, `train_setup`, `train`,
`checkpoint`, `rundir`, `files`, `metrics`, `multiclass`, `evaluate`, `evaluate_figures`, `compare`,
`card`, `card_sections`, `cam`, `cam_run`, `cam_figures`, `localisation`, `predict`, `tune` (a
package), `demo`, `demo_report`, `shortcut`, `progress`, `figures`, `colab`, `kaggle`, `publish`,
`cli`. Nothing runs at import.
"""

from pneumolib.config import Config, demo_config, rsna_config

__version__ = "0.1.0"
__all__ = ["Config", "demo_config", "rsna_config", "__version__"]
