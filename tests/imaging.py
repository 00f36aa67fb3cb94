"""Small image builders for tests: distinct textured images, files on disk."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from btmri import spec


def textured_image(seed: int, height: int = 96, width: int = 96) -> np.ndarray:
    """A distinct 8-bit grayscale image per seed: smoothed noise, so that any two
    seeds are far apart in perceptual hash (no accidental near duplicates)."""
    rng = np.random.default_rng(seed)
    small = rng.random((6, 6)).astype(np.float32)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    img += 0.05 * rng.standard_normal((height, width)).astype(np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels)
    return path


def write_jpeg(path: Path, pixels: np.ndarray, quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return path


def make_class_folders(root: Path, per_class: int, seed0: int = 0, ext: str = ".jpg") -> dict[str, int]:
    """Writes per_class distinct images into root/<class>/; returns counts."""
    for label, name in enumerate(spec.CLASS_NAMES):
        for i in range(per_class):
            pixels = textured_image(seed0 + 1000 * label + i)
            target = root / name / f"{name}_{i:03d}{ext}"
            (write_jpeg if ext == ".jpg" else write_png)(target, pixels)
    return {name: per_class for name in spec.CLASS_NAMES}


def write_dicom(
    path: Path, pixels: np.ndarray, center: float, width: float, photometric: str = "MONOCHROME2"
) -> None:
    """A one-frame 12-bit MR DICOM file with the given window."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
