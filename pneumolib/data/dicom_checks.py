"""Name why a DICOM's pixels cannot be read, before a library fails with a misleading message.

Each check returns a one-line reason (without the file name: the reader puts it in front) or
None. Missing decoders: pydicom decodes JPEG Baseline (OpenCV does it here), 8-bit JPEG
Extended, RLE and, through Pillow, some JPEG 2000 by itself. The `pneumolib[codecs]` extra
(pylibjpeg with its libjpeg and openjpeg plugins) adds JPEG Extended up to 12 bits, JPEG
Lossless and JPEG-LS up to 16, and JPEG 2000 / HTJ2K up to 24 (`EXTRA_BITS`, pydicom's plugin
table). `codec_hint` names the extra only where it would decode that syntax at that depth;
python-gdcm adds no depth the extra lacks (pydicom's GDCM plugin refuses 12-bit JPEG Extended).
The other checks name causes that would otherwise surface as a `TypeError` from deep inside
pydicom, "no pixel data", or a grey mess.
"""

from __future__ import annotations

import re
import struct

import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import get_j2k_parameters
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSTransferSyntaxes,
)

from pneumolib.base.errors import PneumolibError


class DicomError(PneumolibError, ValueError):
    """A DICOM that cannot be turned into an image; the message names the file."""


class NoImageError(DicomError):
    """A DICOM object that holds no image by design (a DICOMDIR, a presentation state, a
    structured report): skipped in a folder, an error when named alone. Names the file."""


INSTALL_CODECS = 'pip install "pneumolib[codecs]"'
# The syntaxes the extra decodes that pydicom alone may not (JPEG 2000: Pillow reads only some),
# with the BitsStored range the extra's plugin decodes (pydicom's plugin table: pylibjpeg-libjpeg
# reads JPEG Extended at 8 and 12 bits, lossless JPEG and JPEG-LS at 2..16; pylibjpeg-openjpeg
# reads JPEG 2000 and HTJ2K up to 24 bits).
EXTRA_BITS: dict[UID, tuple[int, int]] = {
    JPEGExtended12Bit: (1, 12),
    JPEGLossless: (1, 16),
    JPEGLosslessSV1: (1, 16),
    **dict.fromkeys(JPEGLSTransferSyntaxes, (2, 16)),
    **dict.fromkeys(JPEG2000TransferSyntaxes, (1, 24)),  # HTJ2K (4.201-203) included
}
EXTRA_SYNTAXES = frozenset(EXTRA_BITS)
# pydicom's decoder plugins the extra brings (pyjpegls: pydicom's own JPEG-LS plugin, also fine)
_EXTRA_PLUGINS = frozenset({"pylibjpeg", "gdcm", "pyjpegls"})
_PYDICOM_PREFIX = re.compile(
    r"^RuntimeError: Unable to decode as exceptions were raised by all available plugins: "
)
_FLOAT_PIXELS = {"FloatPixelData": "(7FE0,0008)", "DoubleFloatPixelData": "(7FE0,0009)"}


def extra_installed(tsyntax: UID) -> bool:
    """True when a decoder from the codecs extra is installed for `tsyntax` here."""
    try:
        plugins = get_decoder(tsyntax).available_plugins
    except NotImplementedError:  # a syntax pydicom has no decoder for at all
        return False
    return bool(_EXTRA_PLUGINS & set(plugins))


def extra_decodes(tsyntax: UID, bits: int) -> bool:
    """True when the codecs extra decodes `tsyntax` at `bits` bits stored (`EXTRA_BITS`)."""
    lo, hi = EXTRA_BITS.get(UID(tsyntax), (1, 0))
    return lo <= bits <= hi


def codec_hint(tsyntax: UID, bits: int, *, error: str = "", extra_here: bool) -> str | None:
    """Why pixel data in `tsyntax` at `bits` bits stored failed to decode, when the cause is a
    decoder rather than the file; None when the file itself is to blame (`error`: the
    decoder's one-line failure; `extra_here`: the extra's decoders are installed).

    - a depth no decoder of the extra reads: "no decoder installed here reads NAME (UID) at N
      bits, and pip install "pneumolib[codecs]" adds none that does";
    - a syntax and depth the extra reads, the extra absent: `missing_codec` (the install hint);
    - the extra installed, or a syntax it has nothing to do with: None.
    """
    tsyntax = UID(tsyntax)
    if tsyntax not in EXTRA_BITS:
        return None
    if not extra_decodes(tsyntax, bits):
        return (
            f"no decoder installed here reads {tsyntax.name} ({tsyntax}) at {bits} bits, and "
            f"{INSTALL_CODECS} adds none that does"
        )
    return None if extra_here else missing_codec(tsyntax, error)


def missing_codec(tsyntax: UID, error: str = "") -> str:
    """'pixel data in NAME (UID) cannot be decoded with the decoders installed here (why);
    pip install "pneumolib[codecs]" adds them', `error` being the decoder's one-line failure."""
    why = _PYDICOM_PREFIX.sub("", error).strip()
    if "missing dependencies" in why:  # pydicom's plugin list says no more than this line
        why = "no decoder for it is installed"
    return (
        f"pixel data in {tsyntax.name} ({tsyntax}) cannot be decoded with the decoders "
        f"installed here{f' ({why})' if why else ''}; {INSTALL_CODECS} adds them "
        "(pylibjpeg with its libjpeg and openjpeg plugins)"
    )


MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: a DICOMDIR


def non_image_object(ds: pydicom.Dataset, name: str) -> str | None:
    """What a DICOM without Pixel Data is when it is not meant to hold an image: a DICOMDIR
    (by its SOP class, its directory records or its file `name`), a presentation state, a
    structured report, a PDF... (a SOP class whose name says no "Image"). None when it holds
    pixels, or when it is an image object (or says nothing) whose pixels are missing: that
    file is broken, and `pixel_data_problem` says so."""
    if any(k in ds for k in ("PixelData", *_FLOAT_PIXELS)):
        return None
    sop = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "")
    directory = sop == MEDIA_DIRECTORY or "DirectoryRecordSequence" in ds
    if directory or name.upper() == "DICOMDIR":
        return "DICOMDIR (a media directory index), not an image"
    uid = UID(sop.strip())
    if uid.is_valid and uid.name != uid and "Image" not in uid.name:
        return f"{uid.name} ({uid}), a DICOM object without an image"
    return None


def pixel_data_problem(ds: pydicom.Dataset) -> str | None:
    """Why `ds` has no integer image to read: float pixels (a parametric map, never a
    radiograph), an empty Pixel Data element, or none at all; None when it has one."""
    for keyword, tag in _FLOAT_PIXELS.items():
        if keyword in ds and "PixelData" not in ds:
            return (
                f"holds {keyword} {tag}, a computed map rather than a radiograph; only "
                "integer Pixel Data (7FE0,0010) is read"
            )
    if "PixelData" not in ds:
        return "DICOM has no pixel data"
    if not ds["PixelData"].value:  # None or b"": a header exported without its image
        return "the Pixel Data element (7FE0,0010) is empty: the file holds no image"
    return None


def modality_lut_problem(ds: pydicom.Dataset) -> str | None:
    """Why the Modality LUT Sequence cannot be applied (an empty item, a descriptor that is
    not 3 numbers, no LUT data); None when there is none or it is whole."""
    if "ModalityLUTSequence" not in ds:
        return None
    seq = ds.ModalityLUTSequence
    if not seq:
        return "the Modality LUT Sequence (0028,3000) is empty"
    descriptor, data = seq[0].get("LUTDescriptor"), seq[0].get("LUTData")
    try:
        ok = len([int(v) for v in descriptor]) == 3
    except (TypeError, ValueError):  # None, text...
        ok = False
    if not ok:
        return f"Modality LUT Descriptor (0028,3002) = {descriptor!r} is not 3 numbers"
    if data is None or len(data) == 0:
        return "Modality LUT Data (0028,3006) is empty"
    return None


def j2k_sign_conflict(tsyntax: UID, pixel_data: bytes, *, signed: bool) -> str | None:
    """For encapsulated JPEG 2000 `pixel_data` whose first codestream holds signed samples
    while PixelRepresentation says unsigned (or the reverse): the reason; else None (also when
    not JPEG 2000 or the codestream header does not parse)."""
    if tsyntax not in JPEG2000TransferSyntaxes:
        return None
    try:
        frame = next(generate_frames(pixel_data, number_of_frames=1))
    except Exception:  # not encapsulated as it should be: the decoder will say so
        return None
    stream_signed = get_j2k_parameters(frame).get("is_signed")
    if stream_signed is None or bool(stream_signed) == signed:
        return None
    kinds = ("unsigned", "signed")
    return (
        f"the JPEG 2000 stream holds {kinds[bool(stream_signed)]} samples but the header says "
        f"{kinds[signed]} (PixelRepresentation {int(signed)}): the file contradicts itself, "
        "so its grey levels cannot be trusted (re-export it, or correct PixelRepresentation)"
    )


def damaged_stream(tsyntax: UID, pixel_data: bytes, *, rows: int, columns: int) -> str | None:
    """Why the first compressed frame cannot be decoded by any decoder, read from its own
    header: a JPEG 2000 image size that is not the DICOM header's, or a sequential JPEG whose
    scan does not run over coefficients 0..63. None when neither shows (or it does not parse:
    the decoder will say what is wrong)."""
    try:
        frame = next(generate_frames(pixel_data, number_of_frames=1))
    except Exception:
        return None
    damaged = "the pixel data is damaged (no decoder reads it)"
    if tsyntax in JPEG2000TransferSyntaxes:
        at = frame.find(b"\xff\x4f\xff\x51")  # SOC then SIZ (PS3.5 A.4.4, ISO 15444-1 A.5.1)
        if at < 0 or len(frame) < at + 24:
            return None
        x, y, x0, y0 = struct.unpack(">IIII", frame[at + 8 : at + 24])
        if (x - x0, y - y0) != (columns, rows):
            return (
                f"the JPEG 2000 stream says {x - x0}x{y - y0} pixels, the header "
                f"{columns}x{rows}: {damaged}"
            )
    elif tsyntax == JPEGExtended12Bit:
        scan = _jpeg_sequential_scan(frame)
        if scan is not None and scan != (0, 63):
            return (
                f"the JPEG stream's scan covers coefficients {scan[0]}..{scan[1]}, where a "
                f"sequential JPEG covers 0..63: {damaged}"
            )
    return None


def _jpeg_sequential_scan(frame: bytes) -> tuple[int, int] | None:
    """(Ss, Se) of the first scan of a sequential DCT JPEG (SOF0/SOF1, ITU T.81 B.2.3); None
    for another process or a stream whose markers do not parse."""
    at, sequential = 2, False
    while at + 4 <= len(frame) and frame[at] == 0xFF:
        marker = frame[at + 1]
        length = int.from_bytes(frame[at + 2 : at + 4], "big")
        if marker in (0xC0, 0xC1):
            sequential = True
        if marker == 0xDA:  # SOS: Ls, Ns, Ns x (Cs, Td/Ta), Ss, Se, Ah/Al
            start = at + 5 + 2 * frame[at + 4] if at + 4 < len(frame) else len(frame)
            if not sequential or start + 2 > len(frame):
                return None
            return frame[start], frame[start + 1]
        at += 2 + length
    return None
