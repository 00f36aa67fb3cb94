"""Reading one image file robustly into the bytes the tf.Example contract stores.

Rule (docs/architecture.md, Contracts): a plain 8-bit JPEG (gray or YCbCr/RGB) or 8-bit PNG that
TensorFlow's decoders read as it is keeps its original bytes; everything else
(DICOM, TIFF, BMP, 16-bit, CMYK, alpha) is re-encoded to 8-bit PNG. A file that
cannot be read becomes an `ImageError` whose message is the one-line reason
reported in the manifest, so the caller skips it and carries on.

No TensorFlow here: workers stay light and start fast.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass

import cv2
import numpy as np

# Above this many pixels an image is refused before it is decoded: no MRI slice
# is that large, and decoding one would cost memory on every worker.
DEFAULT_MAX_PIXELS = 40_000_000
# Above this size a file is skipped before it is opened: every file is read whole into
# memory (hashing, decoding), and 256 MB holds any image within the pixel budget
# (40 MP of uncompressed 16-bit RGB is 240 MB).
DEFAULT_MAX_FILE_MB = 256
_MB = 1024 * 1024

HIDDEN_FILE_NAMES = frozenset({"thumbs.db", "desktop.ini"})

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BMP_MAGIC = b"BM"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
# Formats prepare does not read, named in the reason when a file holds one.
_OTHER_MAGICS = (
    (b"GIF8", "GIF"),
    (b"RIFF", "WebP/RIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP"),
)


class ImageError(Exception):
    """A file that cannot become a training image; str(err) is the reason."""


@dataclass
class DecodedImage:
    """What data_prep keeps of one image."""

    encoded: bytes  # bytes for the tf.Example `image` feature
    height: int  # of the source image
    width: int
    reencoded: bool  # False when `encoded` is the original file
    gray_small: np.ndarray  # 32x32 float32 grayscale, for the perceptual hash


def is_hidden(name: str) -> bool:
    """Hidden or OS bookkeeping files (.DS_Store, Thumbs.db, ._foo) are never data."""
    return name.startswith(".") or name.lower() in HIDDEN_FILE_NAMES


def content_hash(data: bytes) -> str:
    """Exact-duplicate identity of a file: md5 of its bytes."""
    return hashlib.md5(data).hexdigest()


def printable_path(path: str | os.PathLike) -> str:
    """A path as valid UTF-8 text: bytes of a name that is not UTF-8 (a Latin-1
    `Tümor.jpg` on a UTF-8 system) are shown as \\xNN escapes, never as the lone
    surrogates Python uses for them, which cannot be encoded or written."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


_FILE_KINDS = (
    (stat.S_ISDIR, "is a directory"),
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def _check_regular(path, st: os.stat_result, max_bytes: int) -> None:
    """Raises ImageError unless `st` is a regular, non-empty file within the size cap."""
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "special file")
        if kind == "is a directory":
            raise ImageError(kind)
        link = ""
        if os.path.islink(path):
            link = f": symlink to {printable_path(os.path.realpath(path))}"
        raise ImageError(f"not a regular file ({kind}){link}")
    if st.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    if st.st_size > max_bytes:
        raise ImageError(f"file too large: {st.st_size:,} bytes, more than the {max_bytes / _MB:g} MB limit")


def read_bytes(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_FILE_MB * _MB) -> bytes:
    """Reads a regular file, turning OS failures into one-line reasons.

    Never blocks and never reads without end: the file is stat'ed before it is
    opened (FIFOs, devices, sockets and symlinks to them are refused, a file above
    `max_bytes` too), opened non-blocking, checked again on the open descriptor
    (it may have been swapped in between) and read up to the cap only.
    """
    try:
        _check_regular(path, os.stat(path), max_bytes)
        fd = os.open(
            path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
        )
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageError(f"broken symlink (points to {printable_path(os.readlink(path))})") from None
        raise ImageError("no such file (or it was removed while being read)") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as err:
        raise ImageError(f"cannot read file: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            _check_regular(path, st, max_bytes)
            data = f.read(st.st_size + 1)  # sized by fstat: no cap-sized buffer per file
            while len(data) > st.st_size and len(data) <= max_bytes:  # it grew meanwhile
                more = f.read(min(1 << 20, max_bytes + 1 - len(data)))
                if not more:
                    break
                data += more
    except OSError as err:
        raise ImageError(f"cannot read file: {err.strerror or err}") from None
    if not data:
        raise ImageError("empty file (0 bytes)")
    if len(data) > max_bytes:  # grew after the checks
        raise ImageError(f"file too large: more than the {max_bytes / _MB:g} MB limit")
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
        (seg_len,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 10 > len(data):
                break
            precision, height, width, comps = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            return width, height, precision, comps
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + seg_len
    raise ImageError("JPEG has no frame header (truncated or not a JPEG)")


def _bmp_header(data: bytes) -> tuple[int, int]:
    """(width, height) from the DIB header (BITMAPCOREHEADER or any later one)."""
    if len(data) < 26:
        raise ImageError("BMP header is damaged")
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)  # negative height: rows stored top-down


_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
# TIFF field types holding an integer: SHORT, LONG, LONG8 (BigTIFF)
_TIFF_INT_TYPES = {3: "H", 4: "I", 16: "Q"}


def _tiff_header(data: bytes) -> tuple[int, int]:
    """(width, height) of the first image (IFD 0, the one OpenCV decodes), classic
    TIFF or BigTIFF, from its ImageWidth and ImageLength fields."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    try:
        if big:
            (ifd,) = struct.unpack(order + "Q", data[8:16])
            (count,) = struct.unpack(order + "Q", data[ifd : ifd + 8])
            entry, first, value_at = 20, ifd + 8, 12
        else:
            (ifd,) = struct.unpack(order + "I", data[4:8])
            (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
            entry, first, value_at = 12, ifd + 2, 8
        fields = {}
        for i in range(min(count, 4096)):
            pos = first + i * entry
            tag, kind = struct.unpack(order + "HH", data[pos : pos + 4])
            if tag in (_TIFF_WIDTH, _TIFF_LENGTH) and kind in _TIFF_INT_TYPES:
                fmt = order + _TIFF_INT_TYPES[kind]
                (fields[tag],) = struct.unpack(
                    fmt, data[pos + value_at : pos + value_at + struct.calcsize(fmt)]
                )
    except struct.error:
        raise ImageError("TIFF header is damaged (truncated directory)") from None
    if _TIFF_WIDTH not in fields or _TIFF_LENGTH not in fields:
        raise ImageError("TIFF header has no image size")
    return fields[_TIFF_WIDTH], fields[_TIFF_LENGTH]


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}x{height} exceeds {max_pixels:,} pixels")


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


def _alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    """Alpha to 0..255 over its container's full range (not stretched: an opaque
    16-bit alpha, 65535, becomes 255), rounded."""
    if alpha.dtype == np.uint8:
        return alpha
    if np.issubdtype(alpha.dtype, np.integer):
        full = float(np.iinfo(alpha.dtype).max)
        return np.round(alpha.astype(np.float64) * (255.0 / full)).astype(np.uint8)
    return np.round(np.clip(alpha.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def _composite_over_black(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """8-bit colour x alpha/255, rounded (transparent background = no signal). The
    served model does the same float32 arithmetic (components/transform/decode.py)."""
    weight = alpha.astype(np.float32) / 255.0
    return (colour.astype(np.float32) * weight).round().astype(np.uint8)


def _normalise_channels(pixels: np.ndarray) -> np.ndarray:
    """Returns HxW (gray) or HxWx3 (BGR) uint8; a color image whose channels are
    all equal is stored as gray.

    Deeper than 8 bits: the colour channels are stretched over their own min..max
    (`_to_uint8`). An alpha channel (gray+alpha, BGRA) is converted over its full
    range and composited over black.
    """
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):
        pixels = _composite_over_black(_to_uint8(pixels[:, :, :-1]), _alpha_to_uint8(pixels[:, :, -1:]))
    else:
        pixels = _to_uint8(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if (
        pixels.ndim == 3
        and np.array_equal(pixels[:, :, 0], pixels[:, :, 1])
        and np.array_equal(pixels[:, :, 1], pixels[:, :, 2])
    ):
        pixels = pixels[:, :, 0]
    return pixels


def _encode_png(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise ImageError("could not re-encode image to PNG")
    return buf.tobytes()


def _read_dicom(data: bytes, max_pixels: int) -> np.ndarray:
    """DICOM → 8-bit gray: modality LUT (rescale), VOI LUT / window, MONOCHROME1 inverted.
    Frames and size come from the header (Rows, Columns, NumberOfFrames) and are
    checked before the pixel data is decoded."""
    import io

    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception as err:  # pydicom raises many types for broken files
        raise ImageError(f"unreadable DICOM: {type(err).__name__}: {err}".splitlines()[0]) from None
    if frames > 1:
        raise ImageError(f"multi-frame DICOM ({frames} frames): 3D studies are out of scope")
    if "PixelData" not in ds:
        raise ImageError("unreadable DICOM: no pixel data")
    _check_size(columns, rows, max_pixels)
    try:
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001
        raise ImageError(f"unreadable DICOM: {type(err).__name__}: {err}".splitlines()[0]) from None
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
    for factor, flag in (
        (8, cv2.IMREAD_REDUCED_GRAYSCALE_8),
        (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
        (2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
    ):
        if short // factor >= 64:
            return flag
    return cv2.IMREAD_GRAYSCALE


def _not_an_image(data: bytes, suffix: str) -> ImageError:
    """The reason for content that is none of the formats prepare reads."""
    other = next((name for magic, name in _OTHER_MAGICS if data.startswith(magic)), None)
    named = f"; it is {other}" if other else ""
    expected = {
        ".jpg": "JPEG",
        ".jpeg": "JPEG",
        ".png": "PNG",
        ".bmp": "BMP",
        ".tif": "TIFF",
        ".tiff": "TIFF",
    }.get(suffix)
    if expected:
        return ImageError(f"not a valid image (content is not {expected}{named})")
    return ImageError(f"not a valid image (not JPEG, PNG, BMP, TIFF or DICOM{named})")


def decode_image(data: bytes, suffix: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Validates and decodes one file's bytes; raises ImageError with the reason.

    The format comes from the content (magic bytes), DICOM also from the .dcm name;
    the size always comes from the header and is checked against `max_pixels`
    before anything is decoded. Content of any other format is refused, so no
    decoder runs on a file whose size was not checked.
    """
    suffix = suffix.lower()
    keep_original = False
    png_color_type = None
    if data.startswith(JPEG_MAGIC):
        width, height, precision, comps = _jpeg_header(data)
        _check_size(width, height, max_pixels)
        # TensorFlow refuses truncated JPEGs (OpenCV would return a half-grey image).
        if b"\xff\xd9" not in data[-64:]:
            raise ImageError("truncated JPEG (no end-of-image marker)")
        keep_original = precision == 8 and comps in (1, 3)  # CMYK (4) is re-encoded
        flags = _reduced_gray_flag(width, height) if keep_original else cv2.IMREAD_COLOR
    elif data.startswith(PNG_MAGIC):
        width, height, depth, png_color_type = _png_header(data)
        _check_size(width, height, max_pixels)
        if not data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"):
            raise ImageError("truncated PNG (no IEND chunk)")
        keep_original = depth == 8 and png_color_type in (0, 2)  # 8-bit gray or RGB
        flags = cv2.IMREAD_UNCHANGED
    elif data[128:132] == b"DICM" or (suffix == ".dcm" and data[:4] not in TIFF_MAGICS):
        return _finish(_read_dicom(data, max_pixels), None)
    elif data.startswith(BMP_MAGIC):
        width, height = _bmp_header(data)
        _check_size(width, height, max_pixels)
        flags = cv2.IMREAD_UNCHANGED
    elif data[:4] in TIFF_MAGICS:
        width, height = _tiff_header(data)
        _check_size(width, height, max_pixels)
        flags = cv2.IMREAD_UNCHANGED
    else:
        raise _not_an_image(data, suffix)

    buf = np.frombuffer(data, np.uint8)
    try:
        pixels = cv2.imdecode(buf, flags)
    except cv2.error as err:
        raise ImageError(f"undecodable image: {str(err).splitlines()[0]}") from None
    if pixels is None or pixels.size == 0:
        raise ImageError("not a decodable image")
    if png_color_type in (0, 2) and pixels.ndim == 3 and pixels.shape[2] == 4:
        # OpenCV turns a gray/RGB PNG's tRNS colour key into alpha; TensorFlow's
        # decoder (the served model) ignores it. Ignored here too, so both agree.
        pixels = pixels[:, :, :3]
    return _finish(pixels, data if keep_original else None, (width, height))


def _finish(pixels: np.ndarray, original: bytes | None, size: tuple[int, int] | None = None) -> DecodedImage:
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
