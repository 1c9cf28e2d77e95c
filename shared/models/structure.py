"""Checks of an image file's structure, made before Pillow parses it, against files whose parsing or
decoding costs far more than their size suggests.

Pillow reads JPEG markers, PNG chunks, GIF blocks and TIFF strip lists in Python, one at a time:
24 MB of JPEG fill bytes took 24 s of CPU, 2 million empty PNG chunks 11 s, 12 million one-byte
GIF comment blocks 4.6 s and 1 GB, 3 million one-row TIFF strips 32 s and 1 GB; and libtiff
allocates a whole tile at once (a 1.5 MB TIFF of 64 x 64 pixels in 23,168-pixel tiles cost
1.5 GB). Each check below walks the file's framing (a few thousand steps at most, in C where it
can) and refuses what no encoder writes, with a TooLarge that names what is wrong.
"""

from __future__ import annotations

import struct

from shared.core.errors import TooLarge

# A file may hold at most this many bytes per pixel of its image, plus 1 MiB of metadata: 8 is
# 16-bit RGBA uncompressed; animated formats hold many frames.
BYTES_PER_PIXEL = {"GIF": 64, "WEBP": 64}
DEFAULT_BYTES_PER_PIXEL = 8
METADATA_BYTES = 1024 * 1024
MAX_JPEG_HEADER = 2 * 1024 * 1024  # everything before the first scan: EXIF, ICC, XMP, comments
MAX_JPEG_SCANS = 100  # a progressive JPEG is decoded once per scan; encoders write about ten
MAX_PNG_CHUNKS = 20_000  # encoders write IDAT chunks of 8-64 KiB: 25 MB is at most about 3,200
MAX_GIF_BLOCKS = 200_000  # 255-byte data blocks: 25 MB is about 100,000
MAX_TIFF_PIECES = 16_384  # strips or tiles: a 50 MP image in 64 KiB strips has about 2,300
MIN_TILE_LIMIT = 4_000_000  # pixels a tile may cover, or the whole image if that is more


def _refuse(code: str, message: str) -> TooLarge:
    return TooLarge(code, message)


def check_framing(data: bytes) -> None:
    """Refuse (TooLarge) a file whose framing would cost far more to parse than its size suggests;
    before Pillow opens it (opening parses the framing up to the picture data)."""
    if data[:2] == b"\xff\xd8":
        _jpeg(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        _png(data)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        _gif(data)
    elif data[:4] in (b"II*\0", b"MM\0*"):
        _tiff(data)


def check_size(data: bytes, fmt: str, width: int, height: int) -> None:
    """Refuse (TooLarge) a file far larger than its image: what else it holds costs to parse."""
    allowed = BYTES_PER_PIXEL.get(fmt, DEFAULT_BYTES_PER_PIXEL) * width * height + METADATA_BYTES
    if len(data) > allowed:
        raise _refuse("file_larger_than_image", f"The file has {len(data)} bytes for a {width}x{height} image "
                      f"(at most {allowed}): it holds far more than its picture.")


def _jpeg(data: bytes) -> None:
    first_scan = data.find(b"\xff\xda")
    if first_scan > MAX_JPEG_HEADER or (first_scan < 0 and len(data) > MAX_JPEG_HEADER):
        raise _refuse("jpeg_header_too_large", f"The JPEG has more than {MAX_JPEG_HEADER} bytes before its "
                      "picture data (markers, fill bytes or comments).")
    if data.count(b"\xff\xda") > MAX_JPEG_SCANS:  # SOS markers: 0xFF 0xDA appears nowhere else
        raise _refuse("too_many_scans", f"The JPEG has more than {MAX_JPEG_SCANS} progressive scans; "
                      "re-save it (any editor writes about ten).")


def _png(data: bytes) -> None:
    offset, chunks = 8, 0
    while offset + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise _refuse("too_many_chunks", f"The PNG has more than {MAX_PNG_CHUNKS} chunks.")
        if data[offset + 4 : offset + 8] == b"IEND":
            return
        offset += 12 + length


def _gif(data: bytes) -> None:
    """Walk the GIF's blocks; data and extension blocks come in sub-blocks of up to 255 bytes."""
    if len(data) < 13:
        return
    offset = 13
    if data[10] & 0x80:  # a global colour table
        offset += 3 * (2 << (data[10] & 7))
    blocks = 0
    while offset < len(data):
        kind = data[offset]
        if kind == 0x3B:  # trailer
            return
        if kind == 0x21:  # extension: label, then sub-blocks
            offset += 2
        elif kind == 0x2C:  # image descriptor, local colour table, LZW code size, then sub-blocks
            if offset + 10 > len(data):
                return
            flags = data[offset + 9]
            offset += 10 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0) + 1
        else:
            return  # not framing Pillow would read further either
        while offset < len(data) and data[offset]:
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise _refuse("too_many_blocks", f"The GIF has more than {MAX_GIF_BLOCKS} data blocks.")
            offset += 1 + data[offset]
        offset += 1


def _tiff(data: bytes) -> None:
    """The first image's strip or tile count, and its tile size, from its directory."""
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return
    order = "<" if data[:2] == b"II" else ">"
    (first,) = struct.unpack_from(order + "I", data, 4)
    if first + 2 > len(data):
        return
    (entries,) = struct.unpack_from(order + "H", data, first)
    values: dict[int, tuple[int, int]] = {}  # tag -> (count, first value)
    for i in range(min(entries, 4096)):
        at = first + 2 + 12 * i
        if at + 12 > len(data):
            break
        tag, kind, count = struct.unpack_from(order + "HHI", data, at)
        value = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, at + 8)[0]
        values[tag] = (count, value)
    pieces = max(values.get(273, (0, 0))[0], values.get(324, (0, 0))[0])  # StripOffsets, TileOffsets
    if pieces > MAX_TIFF_PIECES:
        raise _refuse("too_many_strips", f"The TIFF has {pieces} strips or tiles (at most {MAX_TIFF_PIECES}).")
    tile = values.get(322, (0, 0))[1] * values.get(323, (0, 0))[1]  # TileWidth x TileLength
    image = values.get(256, (0, 0))[1] * values.get(257, (0, 0))[1]  # ImageWidth x ImageLength
    if tile > max(MIN_TILE_LIMIT, image):
        raise _refuse("tiles_too_large", f"The TIFF's tiles cover {tile} pixels each, more than its whole image.")
