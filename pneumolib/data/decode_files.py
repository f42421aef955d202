"""Decode one chunk of a cache build: DICOM files -> (uint8 (S, S) pixels or None, metadata).

OpenCV file by file through `read_dicom` (the default), or torchvision's batched `decode_jpeg`
(nvJPEG on a GPU) for the plain JPEG files, the rest through `read_dicom`. Either way a file
whose header is not a chest radiograph (`dicom_detect.radiograph_problem`: CT, MR, US..., or
another body part) becomes an error row, unless the build allows any modality.
"""

from __future__ import annotations

import numpy as np

from pneumolib.data.dicom import (
    DicomError,
    check_informative,
    letterbox,
    parse_age,
    plain_jpeg,
    read_dicom,
)
from pneumolib.data.dicom_detect import radiograph_problem

Result = tuple[np.ndarray | None, dict]  # pixels (S, S) uint8 or None, and metadata or error


def read_files(
    paths: list[str], size: int, *, reduced: bool, decoder: str, allow_any_modality: bool
) -> list[Result]:
    """`paths` -> one (pixels, meta) per path: meta holds sex, age, view, scale, ox, oy, or
    `error` (one line naming the file) with pixels None. `decoder`: "opencv", or "cuda" /
    "cpu" for torchvision. Not a chest radiograph: an error unless `allow_any_modality`."""
    if decoder == "opencv":
        results = [_read_one(p, size, reduced=reduced) for p in paths]
    else:
        results = _read_batch_torchvision(paths, size, decoder)
    return [
        _modality_rule(pixels, meta, path, allow_any=allow_any_modality)
        for path, (pixels, meta) in zip(paths, results, strict=True)
    ]


def _modality_rule(pixels: np.ndarray | None, meta: dict, path: str, *, allow_any: bool) -> Result:
    problem = meta.pop("not_chest", None)
    if problem and not allow_any:
        return None, {"error": f"{path}: {problem}; left out (--allow-any-modality keeps it)"}
    return pixels, meta


def _read_one(path: str, size: int, *, reduced: bool) -> tuple[np.ndarray | None, dict]:
    try:
        d = read_dicom(path, size=size, reduced=reduced)
    except DicomError as e:
        return None, {"error": str(e)}
    except Exception as e:  # never let one file kill the build
        return None, {"error": f"{path}: {type(e).__name__}: {e}"}
    problem = radiograph_problem(d.modality, d.body_part)
    geometry = {"scale": d.scale, "ox": d.offset[0], "oy": d.offset[1]}
    return d.pixels, {**d.meta(), **geometry, "not_chest": problem}


def _plain_jpeg(ds, path: str) -> bool:
    try:
        return plain_jpeg(ds, path)
    except DicomError:  # the general reader reports it
        return False


def _read_batch_torchvision(paths: list[str], size: int, device: str) -> list:
    """Decode the JPEG frames of a batch at once with torchvision (nvJPEG when device='cuda')."""
    # torch here only: `preprocess` must start without it (the opencv decoder needs none)
    import pydicom
    import torch
    import torch.nn.functional as F
    from pydicom.encaps import generate_frames
    from torchvision.io import decode_jpeg

    results: list = [None] * len(paths)
    frames, where, metas = [], [], []
    for i, p in enumerate(paths):
        try:
            ds = pydicom.dcmread(p)
            if not _plain_jpeg(ds, p):
                # not RSNA-style: the general reader
                results[i] = _read_one(p, size, reduced=True)
                continue
            frame = next(generate_frames(ds.PixelData, number_of_frames=1))
            frames.append(torch.frombuffer(bytearray(frame), dtype=torch.uint8))
            where.append(i)
            metas.append(ds)
        except Exception:  # no preamble, truncated...: read_dicom reads it or names the cause
            results[i] = _read_one(p, size, reduced=True)
    if frames:
        try:
            decoded = decode_jpeg(frames, device=device)
        except RuntimeError:  # one bad frame fails the batch: fall back file by file
            decoded = [None] * len(frames)
        for i, img, ds in zip(where, decoded, metas, strict=True):
            if img is None:
                results[i] = _read_one(paths[i], size, reduced=True)
                continue
            try:  # the rule read_dicom applies, on the decoded image
                check_informative(img[0].cpu().numpy(), paths[i])
            except DicomError as e:
                results[i] = (None, {"error": str(e)})
                continue
            h, w = img.shape[-2:]
            if h == w:
                x = F.interpolate(img[None].float(), size=(size, size), mode="area")
                px = x[0, 0].round().clamp(0, 255).to(torch.uint8).cpu().numpy()
                scale, off = size / h, (0.0, 0.0)
            else:
                px, scale, off = letterbox(img[0].cpu().numpy(), size, (h, w))
            if ds.get("PhotometricInterpretation") == "MONOCHROME1":
                px = 255 - px
            meta = {
                "sex": str(ds.get("PatientSex", "")).upper() or None,
                "age": parse_age(ds.get("PatientAge")),
                "view": str(ds.get("ViewPosition", "")).upper() or None,
                "scale": scale,
                "ox": off[0],
                "oy": off[1],
                "not_chest": radiograph_problem(ds.get("Modality"), ds.get("BodyPartExamined")),
            }
            results[i] = (px, meta)
    return results
