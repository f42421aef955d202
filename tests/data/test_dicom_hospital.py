"""DICOMs as hospitals export them: files recognised by content whatever their name,
a header without the 128-byte preamble, decoders to install named, causes that libraries
misname named for what they are, and the chest-radiograph rule. Every file is written here."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image, features
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from pneumolib.cli.parser import build_parser
from pneumolib.data.cache_files import errors_path, index_path
from pneumolib.data.dicom import DicomError, read_dicom
from pneumolib.data.dicom_detect import file_kind, image_files, is_dicom, radiograph_problem
from pneumolib.data.dicom_write import write_dicom
from pneumolib.data.labels import IMAGES_DIR
from pneumolib.data.preprocess import build_cache

EXTRA = 'pip install "pneumolib[codecs]"'


def image(h: int = 32, w: int = 32) -> np.ndarray:
    """uint8 (h, w) diagonal ramp from 0 to 255: informative, not symmetric."""
    img = (np.add.outer(np.arange(h) * 3, np.arange(w) * 5) % 256).astype(np.uint8)
    img[-1, -1] = 255  # the full range, so deeper data scaled by its min..max is the same
    return img


def base(tmp_path: Path, name: str = "base.dcm") -> Path:
    """An uncompressed RSNA-style DICOM (Modality CR, BodyPartExamined CHEST)."""
    write_dicom(tmp_path / name, image(), patient_id="base", jpeg=False)
    return tmp_path / name


def edited(tmp_path: Path, name: str, edit) -> Path:
    """`base` read, changed by `edit(ds)` and written as NAME."""
    ds = pydicom.dcmread(base(tmp_path))
    edit(ds)
    ds.save_as(tmp_path / name)
    return tmp_path / name


def refused(path: Path, *words: str) -> str:
    """read_dicom's one-line DicomError for `path`, checked to name the file and `words`."""
    with pytest.raises(DicomError) as err:
        read_dicom(path)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg, msg
    assert all(w.lower() in msg.lower() for w in words), msg
    return msg


# --- recognised by content --------------------------------------------------------------


def without_preamble(src: Path, dst: Path) -> Path:
    """The same bytes less the 128-byte preamble and 'DICM', as some PACS write them."""
    dst.write_bytes(src.read_bytes()[132:])
    return dst


def dataset_only(src: Path, dst: Path) -> Path:
    """No preamble and no file meta either: the bare dataset, implicit VR little endian."""
    ds = pydicom.dcmread(src)
    ds.file_meta, ds.preamble = pydicom.dataset.FileMetaDataset(), None
    pydicom.dcmwrite(dst, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert dst.read_bytes()[:4] == b"\x08\x00\x16\x00"  # opens on (0008,0016) SOP Class UID
    return dst


def test_file_kind_by_content_not_name(tmp_path: Path) -> None:
    src = base(tmp_path)
    shutil.copy(src, tmp_path / "IM0001")
    without_preamble(src, tmp_path / "1.2.840.99.1.2")
    dataset_only(src, tmp_path / "bare")
    cv2.imwrite(str(tmp_path / "scan.png"), image())
    (tmp_path / "scan.png").rename(tmp_path / "scan")
    _, jpg = cv2.imencode(".jpg", image())
    (tmp_path / "photo").write_bytes(jpg.tobytes())
    (tmp_path / "notes").write_text("hello\n" * 40)
    (tmp_path / "empty").write_bytes(b"")
    # opens like a group-0008 element, then junk: not taken for a DICOM
    (tmp_path / "lookalike").write_bytes(b"\x08\x00\x05\x00" + bytes(range(256)) * 2)
    kinds = {n: file_kind(tmp_path / n) for n in sorted(p.name for p in tmp_path.iterdir())}
    assert kinds == {
        "1.2.840.99.1.2": "dicom",
        "IM0001": "dicom",
        "bare": "dicom",
        "base.dcm": "dicom",
        "empty": None,
        "lookalike": None,
        "notes": None,
        "photo": "jpeg",
        "scan": "png",
    }
    assert is_dicom(tmp_path / "bare") and not is_dicom(tmp_path / "missing")


@pytest.mark.parametrize("strip", [without_preamble, dataset_only])
def test_a_file_without_preamble_reads_as_the_original(tmp_path: Path, strip) -> None:
    src = base(tmp_path)
    got = read_dicom(strip(src, tmp_path / "IM0001"))
    want = read_dicom(src)
    np.testing.assert_array_equal(got.pixels, want.pixels)
    assert (got.modality, got.body_part, got.view) == ("CR", "CHEST", want.view)


def test_real_cr_without_preamble_reads_as_the_original(real_dicom: Path, tmp_path: Path) -> None:
    src = real_dicom / "cxr_pa_monochrome2_raw.dcm"  # read in place; a stripped copy in tmp
    got = read_dicom(without_preamble(src, tmp_path / "IM0001"), size=64).pixels
    np.testing.assert_array_equal(got, read_dicom(src, size=64).pixels)


def test_a_random_file_is_still_refused_without_force_advice(tmp_path: Path) -> None:
    bad = tmp_path / "IM0002"
    bad.write_bytes(b"\x08\x00\x05\x00" + b"\x00" * 300)
    msg = refused(bad, "not a readable DICOM", "DICM")
    assert "force" not in msg.lower()  # advice a command-line user could not act on


def test_image_folder_takes_suffixless_dicoms_by_content(tmp_path: Path) -> None:
    src = base(tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(src, folder / "p1.dcm")
    shutil.copy(src, folder / "P2.DCM")
    without_preamble(src, folder / "IM0001")
    shutil.copy(src, folder / "p1")  # same name as p1.dcm: the .dcm wins
    (folder / "README").write_text("exported by PACS\n")
    (folder / "sub").mkdir()
    found = image_files(folder)
    assert found == {"p1": folder / "p1.dcm", "P2": folder / "P2.DCM", "IM0001": folder / "IM0001"}


# --- decoders to install ----------------------------------------------------------------

CODEC_SYNTAXES = [  # (uid, bits stored): every syntax the codecs extra decodes
    ("1.2.840.10008.1.2.4.51", 12),  # JPEG Extended, 12-bit: Pillow refuses it
    ("1.2.840.10008.1.2.4.57", 8),  # JPEG Lossless
    ("1.2.840.10008.1.2.4.70", 16),  # JPEG Lossless SV1
    ("1.2.840.10008.1.2.4.80", 8),  # JPEG-LS lossless
    ("1.2.840.10008.1.2.4.81", 8),  # JPEG-LS near-lossless
    ("1.2.840.10008.1.2.4.90", 8),  # JPEG 2000 lossless (Pillow fails on this frame)
    ("1.2.840.10008.1.2.4.91", 16),  # JPEG 2000
    ("1.2.840.10008.1.2.4.201", 8),  # HTJ2K lossless
    ("1.2.840.10008.1.2.4.203", 8),  # HTJ2K
]


def extra_here(uid: str) -> bool:
    """pylibjpeg or gdcm can decode `uid` in this environment (asked of pydicom directly)."""
    return bool({"pylibjpeg", "gdcm"} & set(get_decoder(UID(uid)).available_plugins))


def encapsulated(tmp_path: Path, name: str, uid: str, frame: bytes, bits: int = 8) -> Path:
    def edit(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = uid
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = (8 if bits <= 8 else 16), bits, bits - 1
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    return edited(tmp_path, name, edit)


@pytest.mark.parametrize("uid, bits", CODEC_SYNTAXES)
def test_missing_decoder_names_the_syntax_and_the_extra(tmp_path: Path, uid: str, bits: int):
    junk = bytes(range(200))  # no decoder makes an image of this, nor a header of it
    path = encapsulated(tmp_path, "junk.dcm", uid, junk, bits)
    if extra_here(uid):  # with the extra installed the same frame is simply corrupt
        msg = refused(path, "could not be decoded")
        assert EXTRA not in msg
    else:
        refused(path, UID(uid).name, uid, EXTRA)


def j2k(pixels: np.ndarray) -> bytes:
    """A lossless JPEG 2000 codestream of `pixels` (Pillow's OpenJPEG)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG2000", no_jp2=True, irreversible=False)
    return buf.getvalue()


@pytest.mark.skipif(not features.check("jpg_2000"), reason="Pillow built without OpenJPEG")
@pytest.mark.parametrize("bits", [8, 16])
def test_jpeg2000_decodes_or_names_the_extra(tmp_path: Path, bits: int) -> None:
    img = image()
    stored = img if bits == 8 else img.astype(np.uint16) * 257  # 16-bit: the same image
    path = encapsulated(tmp_path, "j2k.dcm", "1.2.840.10008.1.2.4.90", j2k(stored), bits)
    try:
        got = read_dicom(path).pixels
    except DicomError as e:  # allowed only with a message that says what to install
        assert EXTRA in str(e) and not extra_here("1.2.840.10008.1.2.4.90"), e
        return
    np.testing.assert_array_equal(got, img)  # lossless: the exact image


@pytest.mark.skipif(not features.check("jpg_2000"), reason="Pillow built without OpenJPEG")
def test_jpeg2000_sign_contradicting_the_header_is_named(tmp_path: Path) -> None:
    path = encapsulated(tmp_path, "j2k.dcm", "1.2.840.10008.1.2.4.90", j2k(image()))
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = 1  # the stream is unsigned
    ds.save_as(path)
    refused(path, "JPEG 2000", "unsigned", "PixelRepresentation 1")


def test_with_the_extra_a_12bit_jpeg2000_decodes(tmp_path: Path) -> None:
    uid = UID("1.2.840.10008.1.2.4.90")
    if not get_encoder(uid).is_available:  # encoding needs pylibjpeg-openjpeg too
        pytest.skip(f"codecs extra not installed ({EXTRA}): no JPEG 2000 encoder to write one")

    def twelve_bit(ds: pydicom.Dataset) -> None:  # as cxr_pa_12bit_window.dcm stores P
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.compress(uid, image().astype(np.uint16) * 16 + 8, encoding_plugin="pylibjpeg")

    got = read_dicom(edited(tmp_path, "j2k12.dcm", twelve_bit)).pixels
    assert np.abs(got.astype(int) - image().astype(int)).max() <= 1


# --- causes named for what they are -----------------------------------------------------


def _empty_modality_lut(ds: pydicom.Dataset) -> None:
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", None)  # LUT Descriptor, empty
    item.add_new(0x00283006, "US", None)  # LUT Data, empty
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = [item]


def _float_pixels(keyword: str):
    def edit(ds: pydicom.Dataset) -> None:
        del ds.PixelData
        dtype = np.float32 if keyword == "FloatPixelData" else np.float64
        setattr(ds, keyword, image().astype(dtype).tobytes())

    return edit


def _window(width: float):
    def edit(ds: pydicom.Dataset) -> None:
        ds.WindowCenter, ds.WindowWidth = 128, width

    return edit


@pytest.mark.parametrize(
    "edit, words",
    [
        (_empty_modality_lut, ("Modality LUT Descriptor", "not 3 numbers")),
        (lambda ds: setattr(ds, "ModalityLUTSequence", []), ("Modality LUT Sequence", "empty")),
        (lambda ds: setattr(ds, "PixelData", b""), ("Pixel Data", "empty", "no image")),
        (_float_pixels("FloatPixelData"), ("FloatPixelData", "(7FE0,0008)")),
        (_float_pixels("DoubleFloatPixelData"), ("DoubleFloatPixelData", "(7FE0,0009)")),
        (_window(0), ("WindowWidth = 0", "below 1")),
        (_window(0.5), ("WindowWidth = 0.5", "below 1")),
    ],
    ids=["lut-descriptor", "lut-sequence", "pixel-data", "float", "double", "ww0", "ww0.5"],
)
def test_misnamed_causes_are_named(tmp_path: Path, edit, words: tuple[str, ...]) -> None:
    msg = refused(edited(tmp_path, "case.dcm", edit), *words)
    assert "NoneType" not in msg and "could not be decoded" not in msg


def test_window_width_one_is_still_read(tmp_path: Path) -> None:
    assert read_dicom(edited(tmp_path, "ww1.dcm", _window(1))).pixels.std() > 50


def test_a_bare_dataset_gets_the_transfer_syntax_of_its_encoding(tmp_path: Path) -> None:
    path = dataset_only(base(tmp_path), tmp_path / "bare")
    assert "TransferSyntaxUID" not in pydicom.dcmread(path, force=True).file_meta
    np.testing.assert_array_equal(read_dicom(path).pixels, image())


# --- the chest-radiograph rule ----------------------------------------------------------


@pytest.mark.parametrize(
    "modality, part, words",
    [
        ("CR", "CHEST", None),
        ("DX", None, None),
        (None, None, None),
        ("", "", None),
        ("dx", "Thorax", None),
        ("OT", "PORT CHEST", None),
        ("RG", "LUNGS", None),
        ("CT", "CHEST", ("Modality CT", "computed tomography")),
        ("MR", None, ("Modality MR",)),
        ("US", "CHEST", ("Modality US", "ultrasound")),
        ("XA", None, ("Modality XA",)),
        ("ZZ", None, ("Modality ZZ", "not a projection radiograph")),
        ("CR", "KNEE", ("BodyPartExamined KNEE", "not the chest")),
        ("DX", "skull", ("BodyPartExamined SKULL",)),
    ],
)
def test_radiograph_rule(modality, part, words) -> None:
    problem = radiograph_problem(modality, part)
    if words is None:
        assert problem is None
    else:
        assert problem is not None and all(w in problem for w in words), problem


def test_rsna_style_and_real_files_pass_the_rule(tmp_path: Path, real_dicom: Path) -> None:
    d = read_dicom(base(tmp_path))  # write_dicom: what the demo data and the tests write
    assert (d.modality, d.body_part) == ("CR", "CHEST")
    for f in sorted(real_dicom.glob("*.dcm")):
        d = read_dicom(f)
        assert d.modality == "CR" and radiograph_problem(d.modality, d.body_part) is None, f


def test_preprocess_leaves_out_non_chest_unless_allowed(demo_raw: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(demo_raw, raw)
    images = sorted((raw / IMAGES_DIR).glob("*.dcm"))
    ct, knee, im = images[0], images[1], images[2]
    for path, keyword, value in ((ct, "Modality", "CT"), (knee, "BodyPartExamined", "KNEE")):
        ds = pydicom.dcmread(path)
        setattr(ds, keyword, value)
        ds.save_as(path)
    without_preamble(im, im.with_suffix(""))  # a suffix-less, preamble-less export
    im.unlink()
    strict = build_cache(raw, tmp_path / "strict", size=32, workers=0, progress=False)
    errors = pd.read_csv(errors_path(strict))
    assert sorted(errors.patientId) == sorted([ct.stem, knee.stem]), errors
    assert errors.error.str.contains("Modality CT").any()
    assert errors.error.str.contains("BodyPartExamined KNEE").any()
    assert errors.error.str.contains("--allow-any-input").all()
    kept = set(pd.read_csv(index_path(strict)).patientId)
    assert im.stem in kept and ct.stem not in kept
    loose = build_cache(
        raw, tmp_path / "loose", size=32, workers=0, progress=False, allow_any_input=True
    )
    assert {ct.stem, knee.stem, im.stem} <= set(pd.read_csv(index_path(loose)).patientId)
    assert len(pd.read_csv(errors_path(loose))) == 0


@pytest.mark.parametrize("flag", ["--allow-any-input", "--allow-any-modality"])
def test_cli_flag_reaches_preprocess(flag: str) -> None:
    args = build_parser().parse_args(["preprocess", "--raw", "r", "--out", "c"])
    assert args.allow_any_input is False
    args = build_parser().parse_args(["preprocess", "--raw", "r", "--out", "c", flag])
    assert args.allow_any_input is True
