"""Reading one image file robustly into the bytes the tf.Example contract stores.

Rule (DESIGN.md): a plain 8-bit JPEG (gray or YCbCr/RGB) or 8-bit PNG that
TensorFlow's decoders read as it is keeps its original bytes; everything else
(DICOM, TIFF, BMP, 16-bit, CMYK, alpha) is re-encoded to 8-bit PNG. A file that
cannot be read becomes an `ImageError` whose message is the one-line reason
reported in the manifest, so the caller skips it and carries on.

No TensorFlow here: workers stay light and start fast.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

import cv2
import numpy as np

# Above this many pixels an image is refused before it is decoded: no MRI slice
# is that large, and decoding one would cost memory on every worker.
DEFAULT_MAX_PIXELS = 40_000_000

HIDDEN_FILE_NAMES = frozenset({"thumbs.db", "desktop.ini"})

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageError(Exception):
    """A file that cannot become a training image; str(err) is the reason."""


@dataclass
class DecodedImage:
    """What data_prep keeps of one image."""
    encoded: bytes          # bytes for the tf.Example `image` feature
    height: int             # of the source image
    width: int
    reencoded: bool         # False when `encoded` is the original file
    gray_small: np.ndarray  # 32x32 float32 grayscale, for the perceptual hash


def is_hidden(name: str) -> bool:
    """Hidden or OS bookkeeping files (.DS_Store, Thumbs.db, ._foo) are never data."""
    return name.startswith(".") or name.lower() in HIDDEN_FILE_NAMES


def content_hash(data: bytes) -> str:
    """Exact-duplicate identity of a file: md5 of its bytes."""
    return hashlib.md5(data).hexdigest()


def read_bytes(path: str | os.PathLike) -> bytes:
    """Reads a file, turning OS failures into one-line reasons."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageError(f"broken symlink (points to {os.readlink(path)})") from None
        raise ImageError("file vanished while reading") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except OSError as err:
        raise ImageError(f"cannot read file: {err.strerror or err}") from None
    if not data:
        raise ImageError("empty file (0 bytes)")
    return data


# --- header inspection ------------------------------------------------------

def _png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, color type) from the IHDR chunk."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError("PNG header is damaged")
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, color_type


def _jpeg_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, precision, components) from the first SOF marker."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageError("JPEG marker structure is damaged")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (seg_len,) = struct.unpack(">H", data[pos + 2:pos + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 10 > len(data):
                break
            precision, height, width, comps = struct.unpack(">BHHB", data[pos + 4:pos + 10])
            return width, height, precision, comps
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + seg_len
    raise ImageError("JPEG has no frame header (truncated or not a JPEG)")


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} exceeds {max_pixels:,} pixels"
        )


# --- decoding ---------------------------------------------------------------

def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scales any integer/float array to 8 bits over its own range (min..max).

    Used for 16-bit PNG/TIFF and windowed DICOM, whose useful range is rarely the
    full container range (12-bit data in 16-bit files would look black otherwise).
    """
    if pixels.dtype == np.uint8:
        return pixels
    pixels = pixels.astype(np.float64)
    lo, hi = float(np.min(pixels)), float(np.max(pixels))
    if hi <= lo:
        return np.zeros(pixels.shape, np.uint8)
    return np.round((pixels - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _drop_alpha(pixels: np.ndarray) -> np.ndarray:
    """BGRA → BGR composited over black (transparent background = no signal)."""
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        alpha = pixels[:, :, 3:4].astype(np.float32) / 255.0
        pixels = (pixels[:, :, :3].astype(np.float32) * alpha).round().astype(np.uint8)
    return pixels


def _normalise_channels(pixels: np.ndarray) -> np.ndarray:
    """Returns HxW (gray) or HxWx3 (BGR) uint8; a color image whose channels are
    all equal is stored as gray."""
    pixels = _drop_alpha(_to_uint8(pixels))
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 3 and np.array_equal(pixels[:, :, 0], pixels[:, :, 1]) \
            and np.array_equal(pixels[:, :, 1], pixels[:, :, 2]):
        pixels = pixels[:, :, 0]
    return pixels


def _encode_png(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise ImageError("could not re-encode image to PNG")
    return buf.tobytes()


def _read_dicom(data: bytes) -> np.ndarray:
    """DICOM → 8-bit gray: modality LUT (rescale), VOI LUT / window, MONOCHROME1 inverted."""
    import io

    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for broken files
        raise ImageError(f"unreadable DICOM: {type(err).__name__}: {err}".splitlines()[0]) from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(f"multi-frame DICOM ({frames} frames): 3D studies are out of scope")
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 3:
        return cv2.cvtColor(_to_uint8(pixels), cv2.COLOR_RGB2BGR)
    pixels = apply_modality_lut(pixels, ds)
    pixels = apply_voi_lut(pixels, ds)
    gray = _to_uint8(np.asarray(pixels))
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        gray = 255 - gray
    return gray


def _reduced_gray_flag(width: int, height: int) -> int:
    """OpenCV flag decoding a JPEG to grayscale at 1/2, 1/4 or 1/8 scale in the DCT
    domain, as small as keeps >= 64 px on the short side. Every byte of the
    entropy-coded data is still decoded (corruption is still seen); only the
    inverse DCT and colour conversion, which a kept JPEG does not need, shrink."""
    short = min(width, height)
    for factor, flag in ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                         (2, cv2.IMREAD_REDUCED_GRAYSCALE_2)):
        if short // factor >= 64:
            return flag
    return cv2.IMREAD_GRAYSCALE


def decode_image(data: bytes, suffix: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Validates and decodes one file's bytes; raises ImageError with the reason."""
    suffix = suffix.lower()
    keep_original = False
    size = None  # (width, height) from the header, when known
    if data.startswith(_JPEG_MAGIC):
        width, height, precision, comps = _jpeg_header(data)
        _check_size(width, height, max_pixels)
        # TensorFlow refuses truncated JPEGs (OpenCV would return a half-grey image).
        if b"\xff\xd9" not in data[-64:]:
            raise ImageError("truncated JPEG (no end-of-image marker)")
        keep_original = precision == 8 and comps in (1, 3)  # CMYK (4) is re-encoded
        size = (width, height)
        flags = _reduced_gray_flag(width, height) if keep_original else cv2.IMREAD_COLOR
    elif data.startswith(_PNG_MAGIC):
        width, height, depth, color_type = _png_header(data)
        _check_size(width, height, max_pixels)
        if not data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"):
            raise ImageError("truncated PNG (no IEND chunk)")
        keep_original = depth == 8 and color_type in (0, 2)  # 8-bit gray or RGB
        size = (width, height)
        flags = cv2.IMREAD_UNCHANGED
    elif suffix == ".dcm" or data[128:132] == b"DICM":
        pixels = _read_dicom(data)
        _check_size(pixels.shape[1], pixels.shape[0], max_pixels)
        return _finish(pixels, None)
    else:
        flags = cv2.IMREAD_UNCHANGED  # BMP, TIFF and anything else OpenCV knows

    buf = np.frombuffer(data, np.uint8)
    try:
        pixels = cv2.imdecode(buf, flags)
    except cv2.error as err:
        raise ImageError(f"undecodable image: {str(err).splitlines()[0]}") from None
    if pixels is None or pixels.size == 0:
        if suffix in (".jpg", ".jpeg", ".png") and size is None:
            raise ImageError(f"not a valid image (content is not {suffix[1:].upper()})")
        raise ImageError("not a decodable image")
    if size is None:
        _check_size(pixels.shape[1], pixels.shape[0], max_pixels)
    return _finish(pixels, data if keep_original else None, size)


def _finish(pixels: np.ndarray, original: bytes | None,
            size: tuple[int, int] | None = None) -> DecodedImage:
    """`pixels` may be a reduced-scale decode when the original is kept; the
    stored height/width are then the header's."""
    if original is None:
        pixels = _normalise_channels(pixels)
        encoded = _encode_png(pixels)
        size = (pixels.shape[1], pixels.shape[0])
    else:
        encoded = original
        size = size or (pixels.shape[1], pixels.shape[0])
    gray = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    return DecodedImage(
        encoded=encoded,
        width=int(size[0]),
        height=int(size[1]),
        reencoded=original is None,
        gray_small=small,
    )
