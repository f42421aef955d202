"""What a scoring command reads: files, folders and globs -> the image files among them.

One rule for `predict` and every command that scores new files: a folder is searched
recursively for *.dcm, *.png, *.jpg, *.jpeg (any case) and for files of other names whose
content is DICOM, PNG or JPEG (`IM0001`, as PACS exports write them).
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from pneumolib.data.dicom_detect import file_kind

IMAGE_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg")


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Files, folders (searched recursively) and globs -> (files in input order without
    repeats, one error line per input that found none). A file named explicitly is kept
    whatever its suffix."""
    files: dict[Path, None] = {}  # ordered set
    errors = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p))
            if not found:
                errors.append(
                    f"{text}: folder holds no .dcm, .png, .jpg or .jpeg files (nor other files "
                    "whose content is DICOM, PNG or JPEG)"
                )
        elif path.is_file():
            found = [path]
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                errors.append(f"{text}: pattern matches no files")
        else:
            found = []
            errors.append(f"{text}: no such file or folder")
        files.update(dict.fromkeys(found))
    return list(files), errors


def named_files(inputs: Sequence[str | Path]) -> set[Path]:
    """The inputs that name a file themselves (not found in a folder or by a pattern)."""
    return {Path(str(i)) for i in inputs if Path(str(i)).is_file()}


def _is_image(path: Path) -> bool:
    """By suffix, or else by content (the first bytes; a header parse only for likely DICOMs)."""
    return path.suffix.lower() in IMAGE_SUFFIXES or file_kind(path) is not None
