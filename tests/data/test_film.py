"""The cheap "is this a chest film?" checks (pneumolib.data.film), the readers' facts behind them,
DICOM objects without an image, and causes named for what they are: big-endian palettes,
decoders that exist or do not, empty files. Every input is made here; the real films are read
in place from ../shared/data/real-dicom/."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image, features
from pydicom.fileset import FileSet
from pydicom.pixels import apply_color_lut
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEGExtended12Bit,
    JPEGLSLossless,
)

from pneumolib.data.cache_files import errors_path, index_path, stats_path
from pneumolib.data.dicom import DicomError, NoImageError, read_dicom
from pneumolib.data.dicom_checks import INSTALL_CODECS, codec_hint
from pneumolib.data.dicom_write import write_dicom
from pneumolib.data.film import MAX_ASPECT, MAX_CHROMA, MIN_SIDE, film_problem, read_film
from pneumolib.data.labels import IMAGES_DIR
from pneumolib.data.preprocess import build_cache
from pneumolib.data.raster import ImageReadError, read_raster
from pneumolib.data.synth import phantom

SIZE = 64  # the network's input size here: small, the checks look at the original


def film(h: int = 160, w: int = 128, seed: int = 0) -> np.ndarray:
    """A grey chest-like phantom, uint8 (h, w)."""
    img = phantom(np.random.default_rng(seed), max(h, w), view="PA", positive=False)[0]
    return np.ascontiguousarray(img[:h, :w])


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Grey noise, uint8 (h, w): informative, whatever its size."""
    return np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)


def photo(h: int = 120, w: int = 100) -> np.ndarray:
    """A face-like photograph, RGB uint8 (h, w, 3): skin tones shaded around an oval."""
    yy, xx = np.mgrid[0:h, 0:w]
    shade = 0.5 + 0.5 * np.exp(-(((xx / w - 0.5) ** 2) + ((yy / h - 0.45) ** 2)) / 0.08)
    rgb = np.stack([225 * shade, 172 * shade, 140 * shade], axis=-1)
    rgb += np.random.default_rng(1).normal(0, 6, rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def colour_noise(h: int = 96, w: int = 96) -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, (h, w, 3)).astype(np.uint8)


def bars(h: int = 96, w: int = 112) -> np.ndarray:
    """Colour bars (white, yellow, cyan, green, magenta, red, blue), RGB uint8 (h, w, 3)."""
    bars = np.array(
        [[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0], [255, 0, 255], [255, 0, 0]]
        + [[0, 0, 255]],
        np.uint8,
    )
    return bars[np.arange(w) * len(bars) // w][None].repeat(h, axis=0)


def save_rgb(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def dicom(path: Path, grey: np.ndarray, edit=None) -> Path:
    """An uncompressed RSNA-style DICOM of `grey`, hand-edited by `edit(ds)` if given."""
    write_dicom(path, grey, patient_id=path.stem, jpeg=False)
    if edit is not None:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)
    return path


def rgb_dicom(path: Path, rgb: np.ndarray, modality: str = "OT") -> Path:
    def edit(ds: pydicom.Dataset) -> None:
        ds.Modality = modality
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.Rows, ds.Columns = rgb.shape[:2]
        ds.PixelData = np.ascontiguousarray(rgb).tobytes()

    return dicom(path, rgb[..., 0], edit)


def palette_dataset(path: Path, luts: list[np.ndarray]) -> pydicom.Dataset:
    """An 8-bit PALETTE COLOR dataset (64 x 64 indices) with 16-bit OW palettes `luts`."""
    ds = pydicom.dcmread(dicom(path, noise(64, 64)))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for k, lut in enumerate(luts):  # red, green, blue
        ds.add_new(0x00281101 + k, "US", [len(lut), 0, 16])  # descriptor
        ds.add_new(0x00281201 + k, "OW", lut.astype("<u2").tobytes())  # data
    ds["PixelData"].VR = "OB"  # bytes: the same in either byte order
    return ds


def rainbow() -> list[np.ndarray]:
    """A palette whose 16-bit entries read differently byte-swapped (not multiples of 257)."""
    i = np.arange(256)
    return [i * 250 + 3, (255 - i) * 250 + 5, np.abs(128 - i) * 500 + 7]


# --- the rule ----------------------------------------------------------------------------


def grey_facts(**kw) -> dict:
    return {"modality": "CR", "body_part": "CHEST", "rows": 1024, "columns": 1024, "chroma": 0.0}


@pytest.mark.parametrize(
    "change, words",
    [
        ({}, None),
        ({"modality": "OT", "body_part": None}, None),  # passes the header rule...
        ({"modality": None, "body_part": None}, None),
        ({"chroma": MAX_CHROMA}, None),
        ({"chroma": MAX_CHROMA + 0.01}, ("colour image", "chroma 0.11", "greyscale")),
        ({"modality": "OT", "chroma": 0.4}, ("colour image",)),  # ...but vouches for nothing
        ({"rows": MIN_SIDE, "columns": MIN_SIDE}, None),
        ({"rows": 3, "columns": 3}, ("image 3x3 px", f"smaller than {MIN_SIDE} px")),
        ({"rows": 32, "columns": 32}, ("image 32x32 px",)),
        ({"rows": 200, "columns": int(200 * MAX_ASPECT)}, None),
        ({"rows": 100, "columns": 420}, ("aspect ratio 4.2", "not a chest film")),
        ({"rows": 1000, "columns": 300}, ("aspect ratio 3.3",)),
        ({"modality": "CT"}, ("Modality CT", "computed tomography")),
        ({"body_part": "KNEE"}, ("BodyPartExamined KNEE",)),
    ],
)
def test_film_problem(change: dict, words: tuple[str, ...] | None) -> None:
    problem = film_problem(**{**grey_facts(), **change})
    if words is None:
        assert problem is None
    else:
        assert problem is not None and all(w in problem for w in words), problem


# --- chest films pass --------------------------------------------------------------------


def test_every_real_film_passes(real_dicom: Path) -> None:
    files = sorted(real_dicom.glob("*.dcm"))
    assert len(files) == 5
    for f in files:
        got = read_film(f, SIZE)
        assert got.problem is None and got.chroma == 0.0, (f, got.problem)
        assert (got.kind, got.rows, got.columns, got.pixels.shape) == (
            "dicom",
            1024,
            1024,
            (64, 64),
        )


def test_every_demo_film_passes(demo_raw: Path) -> None:
    files = sorted((demo_raw / IMAGES_DIR).glob("*.dcm"))
    assert files
    problems = {f.name: read_film(f, SIZE).problem for f in files}
    assert not any(problems.values()), problems


def test_a_grey_film_saved_as_colour_jpeg_passes(tmp_path: Path) -> None:
    grey = film()
    path = save_rgb(tmp_path / "film.jpg", np.repeat(grey[..., None], 3, axis=-1))
    got = read_film(path, SIZE)
    assert got.problem is None and got.kind == "jpeg" and (got.rows, got.columns) == grey.shape
    assert got.chroma < MAX_CHROMA / 4  # JPEG noise only
    pixels, _ = read_raster(path)  # the grey image OpenCV's greyscale decode gives
    np.testing.assert_array_equal(pixels, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))


def test_a_grey_png_reads_as_before_with_no_colour(tmp_path: Path) -> None:
    grey = film()
    cv2.imwrite(str(tmp_path / "film.png"), grey)
    pixels, chroma = read_raster(tmp_path / "film.png")
    np.testing.assert_array_equal(pixels, grey)
    assert chroma == 0.0


# --- what is not a chest film is named ---------------------------------------------------


@pytest.mark.parametrize(
    "name, make, words",
    [
        ("photo.png", lambda p: save_rgb(p, photo()), ("colour image",)),
        ("photo.jpg", lambda p: save_rgb(p, photo()), ("colour image",)),
        ("noise.png", lambda p: save_rgb(p, colour_noise()), ("colour image",)),
        ("bars.png", lambda p: save_rgb(p, bars()), ("colour image",)),
        ("photo.dcm", lambda p: rgb_dicom(p, photo()), ("colour image",)),
        ("noise.dcm", lambda p: rgb_dicom(p, colour_noise()), ("colour image",)),
        ("tiny.png", lambda p: cv2.imwrite(str(p), noise(3, 3)), ("image 3x3 px",)),
        ("small.dcm", lambda p: dicom(p, noise(32, 32)), ("image 32x32 px",)),
        ("strip.png", lambda p: cv2.imwrite(str(p), noise(64, 300)), ("aspect ratio 4.7",)),
        (
            "ct.dcm",
            lambda p: dicom(p, film(), lambda ds: setattr(ds, "Modality", "CT")),
            ("Modality CT",),
        ),
    ],
)
def test_non_chest_inputs_are_named(tmp_path: Path, name: str, make, words) -> None:
    path = tmp_path / name
    make(path)
    problem = read_film(path, SIZE).problem
    assert problem is not None and all(w in problem for w in words), problem


def test_palette_colour_dicom_is_named(tmp_path: Path) -> None:
    ds = palette_dataset(tmp_path / "base.dcm", rainbow())
    ds.save_as(tmp_path / "palette.dcm")
    d = read_dicom(tmp_path / "palette.dcm")
    assert d.chroma > MAX_CHROMA
    problem = read_film(tmp_path / "palette.dcm", SIZE).problem
    assert problem is not None and "colour image" in problem, problem


def test_a_grey_palette_or_rgb_dicom_passes(tmp_path: Path) -> None:
    grey = np.arange(256) * 257
    ds = palette_dataset(tmp_path / "base.dcm", [grey, grey, grey])
    ds.save_as(tmp_path / "grey_palette.dcm")
    assert read_film(tmp_path / "grey_palette.dcm", SIZE).problem is None
    rgb = np.repeat(film()[..., None], 3, axis=-1)
    assert read_film(rgb_dicom(tmp_path / "grey_rgb.dcm", rgb, "CR"), SIZE).problem is None


# --- preprocess leaves out what is not a chest film --------------------------------------


def test_preprocess_leaves_out_a_colour_dicom_with_one_note(
    demo_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(demo_raw, raw)
    colour = sorted((raw / IMAGES_DIR).glob("*.dcm"))[0]
    rgb_dicom(colour, photo(128, 128))
    strict = build_cache(raw, tmp_path / "strict", size=32, workers=0, progress=False)
    errors = pd.read_csv(errors_path(strict))
    assert list(errors.patientId) == [colour.stem], errors
    assert "colour image" in errors.error[0] and "--allow-any-input" in errors.error[0]
    assert colour.stem not in set(pd.read_csv(index_path(strict)).patientId)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: 1 file(s) are not chest films, left out (listed in {errors_path(strict)}; "
        "--allow-any-input keeps them)"
    ]
    loose = build_cache(
        raw, tmp_path / "loose", size=32, workers=0, progress=False, allow_any_input=True
    )
    assert colour.stem in set(pd.read_csv(index_path(loose)).patientId)
    assert "note:" not in capsys.readouterr().out
    # a cache that records the switch under its other name is the same cache
    stats = json.loads(stats_path(loose).read_text())
    stats["params"]["allow_any_modality"] = stats["params"].pop("allow_any_input")
    stats_path(loose).write_text(json.dumps(stats))
    build_cache(raw, loose, size=32, workers=0, progress=False, allow_any_input=True)
    assert "nothing to do" in capsys.readouterr().out


# --- DICOM objects without an image ------------------------------------------------------


def test_a_dicomdir_is_named_as_one(tmp_path: Path) -> None:
    def study(ds: pydicom.Dataset) -> None:  # what a DICOMDIR's study record needs
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20200101", "120000", "1"
        ds.SeriesNumber, ds.InstanceNumber = 1, 1

    fs = FileSet()
    fs.add(pydicom.dcmread(dicom(tmp_path / "film.dcm", film(), study)))
    fs.write(tmp_path / "export")
    for path in (tmp_path / "export" / "DICOMDIR", tmp_path / "index"):
        if path.name == "index":  # by content, whatever it is called
            shutil.copy(tmp_path / "export" / "DICOMDIR", path)
        with pytest.raises(NoImageError) as err:
            read_dicom(path)
        assert str(err.value) == f"{path}: DICOMDIR (a media directory index), not an image"
    image = next(p for p in (tmp_path / "export").rglob("IM*"))
    assert read_film(image, SIZE).problem is None  # the image it indexes reads as usual


@pytest.mark.parametrize(
    "sop, name",
    [
        ("1.2.840.10008.5.1.4.1.1.88.11", "Basic Text SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.11.1", "Grayscale Softcopy Presentation State Storage"),
    ],
)
def test_an_object_without_an_image_is_named(tmp_path: Path, sop: str, name: str) -> None:
    def report(ds: pydicom.Dataset) -> None:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop
        ds.Modality = "SR"
        for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored"):
            delattr(ds, keyword)

    path = dicom(tmp_path / "report.dcm", film(), report)
    with pytest.raises(NoImageError) as err:
        read_dicom(path)
    assert str(err.value) == f"{path}: {name} ({sop}), a DICOM object without an image"


def test_an_image_without_its_pixels_stays_a_plain_error(tmp_path: Path) -> None:
    path = dicom(tmp_path / "cr.dcm", film(), lambda ds: delattr(ds, "PixelData"))
    with pytest.raises(DicomError) as err:
        read_dicom(path)
    assert not isinstance(err.value, NoImageError) and "no pixel data" in str(err.value)


# --- causes named for what they are ------------------------------------------------------


def test_a_big_endian_palette_reads_as_its_little_endian_twin(tmp_path: Path) -> None:
    ds = palette_dataset(tmp_path / "base.dcm", rainbow())
    ds.save_as(tmp_path / "le.dcm")
    for k, lut in enumerate(rainbow()):  # OW in a big-endian file: big-endian words
        ds[0x00281201 + k].value = lut.astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    pydicom.dcmwrite(tmp_path / "be.dcm", ds, little_endian=False, implicit_vr=False)
    le, be = pydicom.dcmread(tmp_path / "le.dcm"), pydicom.dcmread(tmp_path / "be.dcm")
    assert be.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert not np.array_equal(  # what pydicom's apply_color_lut gives for the twin
        apply_color_lut(le.pixel_array, le), apply_color_lut(be.pixel_array, be)
    )
    a, b = read_dicom(tmp_path / "le.dcm"), read_dicom(tmp_path / "be.dcm")
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.chroma == b.chroma
    i = le.pixel_array.astype(int)  # the palette applied by hand: luma of the 16-bit entries
    rgb = np.stack([lut[i] / 65535 * 255 for lut in rainbow()], axis=-1)
    assert np.abs(a.pixels - rgb @ np.array([0.299, 0.587, 0.114])).max() <= 1


@pytest.mark.parametrize("name", ["empty.dcm", "empty", "empty.png", "empty.jpg"])
def test_an_empty_file_is_called_empty(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises((DicomError, ImageReadError)) as err:
        read_film(path, SIZE)
    assert str(err.value) == f"{path}: empty file (0 bytes)"


@pytest.mark.parametrize(
    "syntax, bits, extra_here, expected",
    [
        (JPEGExtended12Bit, 12, False, "install"),  # pylibjpeg-libjpeg reads 12-bit
        (JPEGExtended12Bit, 8, False, "install"),
        (JPEGExtended12Bit, 16, False, "none"),  # no packaged decoder reads 16-bit
        (JPEGExtended12Bit, 16, True, "none"),
        (JPEG2000, 16, False, "install"),
        (JPEG2000, 24, False, "install"),
        (JPEG2000, 32, False, "none"),
        (JPEGLSLossless, 16, False, "install"),
        (JPEGExtended12Bit, 12, True, None),  # installed and failing: the file is to blame
        (JPEG2000, 16, True, None),
        (ExplicitVRLittleEndian, 16, False, None),  # nothing to do with the extra
    ],
)
def test_codec_hint(syntax: UID, bits: int, extra_here: bool, expected: str | None) -> None:
    hint = codec_hint(syntax, bits, error="RuntimeError: boom", extra_here=extra_here)
    if expected is None:
        assert hint is None
    elif expected == "install":
        assert hint is not None and INSTALL_CODECS in hint and "adds them" in hint, hint
        assert syntax.name in hint and "boom" in hint
    else:
        assert hint == (
            f"no decoder installed here reads {syntax.name} ({syntax}) at {bits} bits, and "
            f"{INSTALL_CODECS} adds none that does"
        )


def test_a_16bit_jpeg_extended_file_gets_no_install_hint(tmp_path: Path) -> None:
    def sixteen(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xc1" + bytes(64)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    path = dicom(tmp_path / "jpeg16.dcm", film(), sixteen)
    with pytest.raises(DicomError) as err:
        read_dicom(path)
    assert "no decoder installed here reads JPEG Extended" in str(err.value)
    assert "at 16 bits" in str(err.value) and "adds them" not in str(err.value)


def encapsulated(path: Path, syntax: str, frame: bytes, *, bits: int, shape=(64, 64)) -> Path:
    def edit(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.Rows, ds.Columns = shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = (8 if bits <= 8 else 16), bits, bits - 1
        ds.PixelData = pydicom.encaps.encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    return dicom(path, noise(64, 64), edit)


def test_a_jpeg_scan_no_decoder_reads_is_called_damaged(tmp_path: Path) -> None:
    ok, buf = cv2.imencode(".jpg", noise(64, 64))
    assert ok
    frame = bytearray(buf.tobytes())
    sos = frame.find(b"\xff\xda")
    se = sos + 5 + 2 * frame[sos + 4] + 1  # Se: the last coefficient of the scan
    assert frame[se] == 63
    frame[se] = 0  # as a damaged 12-bit JPEG Extended file in pydicom's test data has it
    path = encapsulated(tmp_path / "scan.dcm", JPEGExtended12Bit, bytes(frame), bits=12)
    with pytest.raises(DicomError) as err:
        read_dicom(path)
    assert str(err.value) == (
        f"{path}: the JPEG stream's scan covers coefficients 0..0, where a sequential JPEG "
        "covers 0..63: the pixel data is damaged (no decoder reads it)"
    )


@pytest.mark.skipif(not features.check("jpg_2000"), reason="Pillow built without OpenJPEG")
def test_a_jpeg2000_stream_of_another_size_is_called_damaged(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(noise(64, 64)).save(buf, format="JPEG2000", no_jp2=True, irreversible=False)
    frame = bytearray(buf.getvalue())
    siz = frame.find(b"\xff\x51")
    frame[siz + 6 : siz + 10] = (3_722_445_056).to_bytes(4, "big")  # Xsiz, as a damaged file
    path = encapsulated(tmp_path / "j2k.dcm", JPEG2000, bytes(frame), bits=8)
    with pytest.raises(DicomError) as err:
        read_dicom(path)
    assert str(err.value) == (
        f"{path}: the JPEG 2000 stream says 3722445056x64 pixels, the header 64x64: the pixel "
        "data is damaged (no decoder reads it)"
    )
