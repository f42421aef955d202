"""Name why a DICOM's pixels cannot be read, before a library fails with a misleading message.

Each check returns a one-line reason (without the file name: the reader puts it in front) or
None. Missing decoders: pydicom decodes JPEG Baseline (OpenCV does it here), 8-bit JPEG
Extended, RLE and, through Pillow, some JPEG 2000 by itself; JPEG Lossless, JPEG-LS, HTJ2K,
12-bit JPEG Extended and the JPEG 2000 files Pillow cannot read need pylibjpeg with its libjpeg
and openjpeg plugins, or python-gdcm: the `pneumolib[codecs]` extra, which `missing_codec` names
in every such failure. The other checks name causes that would otherwise surface as a
`TypeError` from deep inside pydicom, "no pixel data", or a grey mess.
"""

from __future__ import annotations

import re

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

INSTALL_CODECS = 'pip install "pneumolib[codecs]"'
# The syntaxes the extra decodes that pydicom alone may not (JPEG 2000: Pillow reads only some)
EXTRA_SYNTAXES = frozenset(
    {JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, *JPEGLSTransferSyntaxes}
    | set(JPEG2000TransferSyntaxes)  # HTJ2K (4.201-203) included
)
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


def needs_extra(tsyntax: UID) -> bool:
    """True when `tsyntax` is one the codecs extra decodes and none of its decoders is here:
    a failure to decode it is then reported by `missing_codec`, not as a corrupt file."""
    return tsyntax in EXTRA_SYNTAXES and not extra_installed(tsyntax)


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
