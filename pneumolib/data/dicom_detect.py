"""What a file is, by its content rather than its name, and whether a DICOM is a chest film.

`file_kind(path)` tells a DICOM (with the 128-byte preamble and 'DICM', or without it when the
file opens on a header with the essentials), a PNG and a JPEG apart, whatever the file is called:
PACS exports name files `IM0001` or by their UID. `image_files(folder)` applies it to an RSNA
image folder. `radiograph_problem(modality, body_part)` is the one rule for which headers
describe a chest radiograph: `predict` warns about the others, `preprocess` leaves them out.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom

DICOM_SUFFIX = ".dcm"
_PREAMBLE = 128  # bytes before 'DICM' (PS3.10 7.1)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# A file without a preamble opens on its first element: file meta (group 0002) or, when the
# meta is missing too, the dataset's first group, nearly always 0008 (SOP Class UID...).
_FIRST_GROUPS = (0x0002, 0x0008)

# Modality (0008,0060) codes of projection radiographs: CR and DX; RG (film), DR (not a standard
# code, written by some DR systems) and OT (other: scanned films, secondary captures) as well.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT"})
_MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "PET",
    "XA": "X-ray angiography",
    "RF": "fluoroscopy",
    "MG": "mammography",
    "IO": "intra-oral X-ray",
    "PX": "panoramic X-ray",
    "ES": "endoscopy",
    "SM": "slide microscopy",
    "OCT": "optical coherence tomography",
}
# BodyPartExamined (0018,0015) is free text in practice; any of these words means the chest.
CHEST_WORDS = ("CHEST", "THORAX", "THORAC", "TORAX", "TÓRAX", "LUNG", "PULM", "PECHO", "BRUST")


def _head(path: Path, n: int = _PREAMBLE + 4) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:  # a folder, no permission, gone since it was listed
        return b""


def _opens_like_dataset(head: bytes) -> bool:
    """The first 4 bytes are the tag of a group-0002/0008 element (little or big endian)."""
    if len(head) < 8:
        return False
    return any(
        int.from_bytes(head[0:2], order) in _FIRST_GROUPS
        and int.from_bytes(head[2:4], order) < 0x0100  # an early element of that group
        for order in ("little", "big")
    )


def has_essentials(ds: pydicom.Dataset) -> bool:
    """A header any image DICOM has: SOP Class UID (0008,0016), or Rows and Columns."""
    return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)


def read_without_preamble(
    path: str | Path, *, stop_before_pixels: bool = False
) -> pydicom.Dataset | None:
    """The dataset of a DICOM written without the 128-byte preamble, or None when `path` does
    not open on a DICOM header with the essentials (`has_essentials`): a random file is never
    taken for a DICOM. Cheap for other files: the first bytes are checked before pydicom."""
    if not _opens_like_dataset(_head(Path(path), 8)):
        return None
    try:  # pydicom's warnings (a file ending early...) are the caller's to catch
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except Exception:  # pydicom raises many types for a file that is not a dataset
        return None
    return ds if has_essentials(ds) else None


def file_kind(path: str | Path) -> str | None:
    """'dicom', 'png', 'jpeg' by the file's content, or None for anything else."""
    head = _head(Path(path))
    if head[_PREAMBLE : _PREAMBLE + 4] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = read_without_preamble(path, stop_before_pixels=True)
    return None if header is None else "dicom"


def is_dicom(path: str | Path) -> bool:
    """True when `path` holds a DICOM, with or without its preamble, whatever its name."""
    return file_kind(path) == "dicom"


def image_files(folder: str | Path) -> dict[str, Path]:
    """An RSNA image folder -> {patientId: path}: `<patientId>.dcm` (any case), and any other
    file recognised as DICOM by content (`IM0001`, a UID name), whose whole name is the id.
    A `.dcm` file wins over a same-named file without the suffix."""
    found: dict[str, Path] = {}
    others = []
    with os.scandir(folder) as entries:  # file type from the listing: no stat per file
        for e in sorted(entries, key=lambda e: e.name):
            if not e.is_file():
                continue
            p = Path(e.path)
            if p.suffix.lower() == DICOM_SUFFIX:
                found[p.stem] = p
            else:
                others.append(p)
    for p in others:  # content checks only for files without the suffix (none in RSNA)
        if p.name not in found and is_dicom(p):
            found[p.name] = p
    return found


def radiograph_problem(modality: object, body_part: object) -> str | None:
    """None for a chest radiograph (or a header that does not say); else why it is not one.

    Modality absent or one of RADIOGRAPH_MODALITIES, and BodyPartExamined absent or naming the
    chest (CHEST_WORDS), pass; CT, MR, US... or another body part give a one-line reason.
    """
    code = str(modality or "").strip().upper()
    if code and code not in RADIOGRAPH_MODALITIES:
        name = _MODALITY_NAMES.get(code)
        return f"Modality {code}{f' ({name})' if name else ''} is not a projection radiograph"
    part = str(body_part or "").strip().upper()
    if part and not any(word in part for word in CHEST_WORDS):
        return f"BodyPartExamined {part} is not the chest"
    return None
