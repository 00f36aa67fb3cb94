"""Builders of hostile image bytes for tests: decompression bombs and odd PNG variants.

Everything is built in memory from the format specifications, never by encoding a
huge array: the bombs are a few hundred bytes to a few hundred KB.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_bomb_header(width: int = 16384, height: int = 16384, scan_bytes: int = 8) -> bytes:
    """A baseline grayscale JPEG of a few hundred bytes whose frame header declares
    width x height: one quantisation table, one-symbol Huffman tables, a scan of
    `scan_bytes` zero bytes and the end marker. libjpeg decodes it (warning about
    the missing data) to a full-size mid-grey picture."""
    dqt = _segment(0xDB, b"\x00" + bytes([1] * 64))
    sof = _segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    one_code = bytes([1] + [0] * 15)  # one code of length 1 ...
    dht = _segment(0xC4, b"\x00" + one_code + b"\x00")  # DC table 0: symbol 0 (no diff)
    dht += _segment(0xC4, b"\x10" + one_code + b"\x00")  # AC table 0: symbol 0 (EOB)
    sos = _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    return b"\xff\xd8" + dqt + sof + dht + sos + b"\x00" * scan_bytes + b"\xff\xd9"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_bytes(
    pixels: np.ndarray, color_type: int | None = None, palette: bytes | None = None, trns: bytes | None = None
) -> bytes:
    """A valid PNG of `pixels` (uint8 or big-endian-written uint16; HxW or HxWxC),
    written chunk by chunk so any colour type / bit depth / tRNS can be produced."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    depth = 16 if pixels.dtype == np.uint16 else 8
    if color_type is None:
        color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = pixels.astype(">u2").tobytes() if depth == 16 else pixels.astype(np.uint8).tobytes()
    row = width * channels * depth // 8
    scan = b"".join(b"\x00" + raw[i * row : (i + 1) * row] for i in range(height))
    out = PNG_MAGIC + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0))
    if palette is not None:
        out += _chunk(b"PLTE", palette)
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return out + _chunk(b"IDAT", zlib.compress(scan, 6)) + _chunk(b"IEND", b"")


def png_bomb(width: int = 16384, height: int = 16384) -> bytes:
    """An 8-bit grayscale PNG of width x height zeros, compressed row by row
    (about 1/1000 of the decoded size: 16384 x 16384 is ~260 KB)."""
    header = PNG_MAGIC + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + a row of zeros
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return header + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def png_bomb_header(width: int, height: int) -> bytes:
    """A complete PNG (signature, IHDR, one empty IDAT, IEND) declaring width x height
    with no pixel data: a header-only bomb, built instantly at any size."""
    header = PNG_MAGIC + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return header + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")
