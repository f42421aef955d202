"""Where a raw folder's data came from: the marker `make-demo-data` leaves in a folder of
phantoms (and the Manufacturer tag of each of its DICOMs), and the truth table beside them.
`preprocess` records `is_synthetic` in stats.json, `train` carries it into the checkpoint, and
the model card and `predict` say it. No torch, no image libraries: cheap to ask anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pneumolib.base.errors import UsageError

TRUTH_CSV = "demo_truth.csv"  # what each phantom really shows (beside the RSNA-shaped files)
PROVENANCE_JSON = "provenance.json"  # the marker file of a folder of phantoms
DEMO_PARAMS = "demo_params.json"  # the settings a folder of phantoms was made with
SYNTHETIC_MANUFACTURER = "pneumolib synthetic phantom"  # each phantom DICOM's Manufacturer


def is_synthetic(raw: str | Path) -> bool:
    """True when RAW holds data `pneumolib.data.synth` made: its PROVENANCE_JSON says so, or
    (folders
    made before that marker) it holds the demo's `demo_params.json`. False for anything else,
    e.g. the RSNA download; the marker is a promise of the maker, not a test of the pixels."""
    raw = Path(raw)
    marker = raw / PROVENANCE_JSON
    if marker.is_file():
        try:
            return json.loads(marker.read_text()).get("synthetic") is True
        except (ValueError, AttributeError):
            raise UsageError(f"{marker}: not a JSON object with a 'synthetic' key") from None
    return (raw / DEMO_PARAMS).is_file()


def read_truth(raw: str | Path) -> pd.DataFrame:
    """`demo_truth.csv` of a demo folder: per patient, what the phantom shows and its label.

    Columns: patientId, view, opacity (1 = an opacity is drawn), label (the CSV's Target),
    label_noise ("missed" | "overcalled" | ""), faint, small, mimic ("band" | "overlap" | ""),
    marker (the planted AP text).
    """
    path = Path(raw) / TRUTH_CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: only pneumolib demo folders carry it")
    return pd.read_csv(path, keep_default_na=False)
