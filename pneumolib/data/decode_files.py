"""Decode one chunk of a cache build: DICOM files -> (uint8 (S, S) pixels or None, metadata).

OpenCV file by file through `read_dicom` (the default), or torchvision's batched `decode_jpeg`
(nvJPEG on a GPU) for the plain JPEG files, the rest through `read_dicom`. Either way a file
that fails the cheap checks (`film.film_problem`: a header that is not a chest radiograph, a
colour image, one too small or too elongated) becomes an error row marked `not_film`, unless
the build allows any input.
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
from pneumolib.data.film import film_problem

Result = tuple[np.ndarray | None, dict]  # pixels (S, S) uint8 or None, and metadata or error


def read_files(
    paths: list[str], size: int, *, reduced: bool, decoder: str, allow_any_input: bool
) -> list[Result]:
    """`paths` -> one (pixels, meta) per path: meta holds sex, age, view, scale, ox, oy and
    height, width (the original's size), or `error` (one line naming the file) with pixels
    None. `decoder`: "opencv", or "cuda" / "cpu" for torchvision. Not a chest film
    (`film_problem`): an error with `not_film` True, unless `allow_any_input`."""
    if decoder == "opencv":
        results = [_read_one(p, size, reduced=reduced) for p in paths]
    else:
        results = _read_batch_torchvision(paths, size, decoder)
    return [
        _film_rule(pixels, meta, path, allow_any=allow_any_input)
        for path, (pixels, meta) in zip(paths, results, strict=True)
    ]


def _film_rule(pixels: np.ndarray | None, meta: dict, path: str, *, allow_any: bool) -> Result:
    problem = meta.pop("film_problem", None)
    if problem and not allow_any:
        error = f"{path}: {problem}; not a chest film, left out (--allow-any-input keeps it)"
        return None, {"error": error, "not_film": True}
    return pixels, meta


def _read_one(path: str, size: int, *, reduced: bool) -> tuple[np.ndarray | None, dict]:
    try:
        d = read_dicom(path, size=size, reduced=reduced)
    except DicomError as e:
        return None, {"error": str(e)}
    except Exception as e:  # never let one file kill the build
        return None, {"error": f"{path}: {type(e).__name__}: {e}"}
    problem = film_problem(
        modality=d.modality, body_part=d.body_part, rows=d.rows, columns=d.columns, chroma=d.chroma
    )
    geometry = {"scale": d.scale, "ox": d.offset[0], "oy": d.offset[1]}
    geometry |= {"height": d.rows, "width": d.columns}  # the original image's size
    return d.pixels, {**d.meta(), **geometry, "film_problem": problem}


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
                "height": int(h),
                "width": int(w),
                "film_problem": film_problem(  # plain_jpeg: one grey sample, chroma 0
                    modality=ds.get("Modality"),
                    body_part=ds.get("BodyPartExamined"),
                    rows=h,
                    columns=w,
                    chroma=0.0,
                ),
            }
            results[i] = (px, meta)
    return results
