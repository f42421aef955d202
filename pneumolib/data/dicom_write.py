"""Write RSNA-style DICOMs (the demo phantoms, the tests' files): JPEG Baseline MONOCHROME2 by
default, with the header fields RSNA files carry. Reading lives in `pneumolib.data.dicom`."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from pneumolib.data.dicom import DicomError


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    sex: str = "M",
    age: int = 50,
    view: str = "PA",
    jpeg: bool = True,
    quality: int = 95,
    manufacturer: str | None = None,
) -> None:
    """Write uint8 (H, W) pixels as an RSNA-style DICOM: JPEG Baseline MONOCHROME2 by default.

    Carries the tags RSNA files have (PatientID, PatientSex, PatientAge, ViewPosition,
    PixelSpacing, Modality CR, BodyPartExamined CHEST); `manufacturer` sets the Manufacturer
    tag (the demo marks its phantoms there as synthetic).
    """
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")  # secondary capture, as RSNA
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.PatientSex = sex
    with warnings.catch_warnings():  # RSNA stores ages as bare numbers ('62'), not '062Y'
        warnings.simplefilter("ignore", UserWarning)
        ds.PatientAge = str(int(age))
    ds.ViewPosition = view
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    if manufacturer:
        ds.Manufacturer = manufacturer
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PixelSpacing = [0.168, 0.168]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if jpeg:
        ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise DicomError(f"{path}: JPEG encoding failed")
        ds.PixelData = encapsulate([buf.tobytes()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
