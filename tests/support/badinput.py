"""Hostile and malformed inputs for the bad-input matrix: images, bodies and requests."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tests.support.photos import CAT, encode, photo


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_pixel_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def png_bomb() -> bytes:
    """A tiny PNG that claims 20000 x 20000 pixels (400 MP)."""
    return encode(Image.new("1", (20000, 20000)), "PNG", optimize=True)


def jpeg_bomb() -> bytes:
    """An 8x8 JPEG whose frame header claims 65000 x 65000 pixels."""
    data = bytearray(encode(Image.new("RGB", (8, 8))))
    at = data.find(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def many_scans_jpeg(repeats: int) -> bytes:
    """A progressive JPEG whose last scan is repeated: it decodes, once per scan (a decoding-time bomb)."""
    data = encode(photo(CAT), progressive=True, quality=90)
    end = len(data) - 2  # the EOI marker
    last = data.rindex(b"\xff\xda")
    return data[:end] + data[last:end] * repeats + data[end:]


def rle8_bmp(width: int = 64, height: int = 64) -> bytes:
    """A BMP with 8-bit run-length encoding, which Pillow decodes in pure Python."""
    rows = b"".join(bytes([width, i % 256]) + b"\x00\x00" for i in range(height))  # one run a row, end of line
    pixels = rows[:-2] + b"\x00\x01"  # end of bitmap
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)  # BI_RLE8
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def mpo_photo() -> bytes:
    """A JPEG with a multi-picture extension (two pictures), as phones and cameras write them."""
    base = photo(CAT)
    buffer = io.BytesIO()
    base.save(buffer, "MPO", save_all=True, append_images=[base.rotate(180)])
    return buffer.getvalue()


def parsing_bombs() -> dict[str, bytes]:
    """Files whose framing Pillow reads one piece at a time in Python, or whose tiles libtiff
    allocates whole: each took seconds of CPU or gigabytes before it was refused."""
    cat = photo(CAT)
    jpeg, gif = encode(cat), encode(cat.convert("P"), "GIF")
    png = encode(cat, "PNG")
    colours = 3 * (2 << (gif[10] & 7)) if gif[10] & 0x80 else 0
    width, height = 400, 100_000
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, height, 8 + 2 + 12 * 9 + 4 + width), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, height, 0)]
    strips = (b"II*\0" + struct.pack("<IH", 8, len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
              + b"\0" * 4 + b"\x80" * width + struct.pack("<I", 8 + 2 + 12 * 9 + 4) * height)
    tiles = [(256, 4, 1, 64), (257, 4, 1, 64), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1), (322, 4, 1, 23168),
             (323, 4, 1, 23168), (324, 4, 1, 200), (325, 4, 1, 10)]
    tiled = (b"II*\0" + struct.pack("<IH", 8, len(tiles)) + b"".join(struct.pack("<HHII", *e) for e in tiles)
             + b"\0" * 4 + zlib.compress(b"\0" * 1000))
    return {
        "jpeg-fill-bytes": jpeg[:2] + b"\xff" * 3_000_000 + jpeg[2:],
        "jpeg-comments": jpeg[:2] + b"\xff\xfe\x00\x02" * 700_000 + jpeg[2:],
        "png-chunks": png[:33] + _chunk(b"abCd", b"") * 300_000 + png[33:],
        "gif-comment-blocks": gif[: 13 + colours] + b"!\xfe" + b"\x01a" * 1_000_000 + b"\0" + gif[13 + colours :],
        "tiff-strips": strips,
        "tiff-tiles": tiled,
    }


def animated_webp_canvas() -> bytes:
    """A small animated WebP whose canvas is 7000 x 7000: libwebp keeps several canvases decoding it."""
    frames = [Image.new("RGBA", (7000, 7000), (0, 0, 0, 0)), Image.new("RGBA", (7000, 7000), (9, 9, 9, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    return buffer.getvalue()


def flipped(data: bytes, start: int, count: int = 40) -> bytes:
    out = bytearray(data)
    for i in range(start, min(start + count, len(out))):
        out[i] ^= 0xFF
    return bytes(out)


def animated(fmt: str, base: Image.Image) -> bytes:
    frames = [base.rotate(angle) for angle in (0, 90, 180)]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def exif_rotated(base: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated a quarter turn clockwise
    buffer = io.BytesIO()
    base.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


@dataclass
class Sample:
    """Encoded images in every shape the matrix needs."""

    base: Image.Image = field(default_factory=lambda: photo(CAT).resize((120, 80)))

    def __post_init__(self) -> None:
        b = self.base
        self.jpeg, self.png, self.webp, self.gif = (encode(b), encode(b, "PNG"), encode(b, "WEBP"),
                                                    encode(b.convert("P"), "GIF"))
        self.cmyk = encode(b.convert("CMYK"), "JPEG")
        grey = np.asarray(b.convert("L"), dtype=np.uint16) * 257
        self.grey16 = encode(Image.fromarray(grey), "PNG")
        self.animated_gif, self.animated_webp = animated("GIF", b), animated("WEBP", b)
        self.exif_rotated = exif_rotated(b)


@dataclass
class Case:
    """One request of the matrix and the statuses it may get; ``refused`` cases must change nothing."""

    name: str
    method: str
    path: str
    expect: set[int]
    files: Any = None
    data: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return min(self.expect) >= 400


MULTIPART_HEAD = b'--zzz\r\nContent-Disposition: form-data; name="data"; filename="x.jpg"\r\n\r\n'


def upload(name: str, data: bytes, content_type: str = "image/jpeg") -> dict[str, tuple[str, bytes, str]]:
    return {"data": (name, data, content_type)}


def cases(s: Sample, known_image: str, known_tag: str, upload_limit: int, archive_limit: int) -> list[Case]:
    """The matrix. ``known_image`` exists; ``known_tag`` has one positive example and no model."""
    img, tag = known_image, known_tag
    jpeg = upload("x.jpg", s.jpeg)
    trav = "..%2F..%2Fetc%2Fpasswd"
    out = [
        # Wrong methods and unknown routes.
        Case("add-GET", "GET", "/custom/add", {405}),
        Case("add-DELETE", "DELETE", "/custom/add", {405}),
        Case("predict-PUT", "PUT", "/predict", {405}, files=jpeg),
        Case("set_state-GET", "GET", "/set_state", {405}),
        Case("get_state-POST", "POST", "/get_state", {405}),
        Case("assign-PATCH", "PATCH", f"/custom/assign/{img}/positive/{tag}", {405}),
        Case("status-POST", "POST", "/status/abc", {405}),
        Case("tags-DELETE", "DELETE", "/custom/tags", {405}),
        Case("unknown-route", "GET", "/custom/nothing/here", {404}),
        # Missing, wrong and extra fields.
        Case("add-no-body", "POST", "/custom/add", {400}),
        Case("add-wrong-field", "POST", "/custom/add", {400}, files={"image": ("x.jpg", s.jpeg, "image/jpeg")}),
        Case("add-text-field", "POST", "/custom/add", {400}, data={"data": "not a file"}),
        Case("add-raw-body", "POST", "/custom/add", {400}, body=s.jpeg, headers={"Content-Type": "image/jpeg"}),
        Case("add-json-body", "POST", "/custom/add", {400}, body=b'{"data": "x"}',
             headers={"Content-Type": "application/json"}),
        Case("add-no-boundary", "POST", "/custom/add", {400}, body=b"--x\r\n\r\n",
             headers={"Content-Type": "multipart/form-data"}),
        Case("add-garbage-multipart", "POST", "/custom/add", {400}, body=b"\x00\xff" * 500,
             headers={"Content-Type": "multipart/form-data; boundary=zzz"}),
        Case("add-empty-id", "POST", "/custom/add?image_id=", {400}, files=jpeg),
        Case("add-taken-id", "POST", f"/custom/add?image_id={img}", {409}, files=upload("x.png", s.png, "image/png")),
        Case("add_many-no-files", "POST", "/custom/add_many", {400}, data={"image_id": "a"}),
        Case("add_many-ids-mismatch", "POST", "/custom/add_many", {400},
             files=[("data", ("a.jpg", s.jpeg, "image/jpeg")), ("image_id", (None, "a")), ("image_id", (None, "b")),
                    ("image_id", (None, "c"))]),
        Case("add_many-tag-without-type", "POST", "/custom/add_many?tag=x", {400}, files=jpeg),
        Case("add_many-bad-type", "POST", "/custom/add_many?tag=x&type=neutral", {400}, files=jpeg),
        Case("images-limit-text", "GET", "/custom/images?limit=abc", {400}),
        Case("images-limit-negative", "GET", "/custom/images?limit=-1", {400}),
        Case("images-offset-huge", "GET", "/custom/images?offset=99999999999999999999999", {400}),
        Case("thumbnail-size-0", "GET", f"/custom/images/{img}/thumbnail?size=0", {400}),
        Case("thumbnail-size-huge", "GET", f"/custom/images/{img}/thumbnail?size=100000", {400}),
        Case("suggest-limit-bad", "GET", f"/custom/suggest/{tag}?limit=x", {400, 404}),
        Case("tags-extra-query", "GET", "/custom/tags?bogus=1&tag=../x", {200}),
        # Empty and huge bodies.
        Case("add-empty-file", "POST", "/custom/add", {400}, files=upload("x.jpg", b"")),
        Case("add-over-limit", "POST", "/custom/add", {413}, files=upload("x.jpg", b"\xff" * (upload_limit + 1))),
        Case("add-chunked-over-limit", "POST", "/custom/add", {413},
             body=iter([MULTIPART_HEAD] + [b"\0" * 65536] * (upload_limit // 65536 + 3)),  # type: ignore[arg-type]
             headers={"Content-Type": "multipart/form-data; boundary=zzz"}),
        Case("add-lying-content-length", "POST", "/custom/add", {413},
             headers={"Content-Length": str(10**12), "Content-Type": "multipart/form-data; boundary=z"}, body=b""),
        Case("predict-over-limit", "POST", "/predict", {413}, files=upload("x.jpg", b"\xff" * (upload_limit + 1))),
        Case("set_state-over-limit", "POST", "/set_state", {413},
             files=upload("s.tar", b"\0" * (archive_limit + 1), "application/x-tar")),
        Case("set_state-empty", "POST", "/set_state", {400}, files=upload("s.tar", b"", "application/x-tar")),
        Case("set_state-not-a-tar", "POST", "/set_state", {400}, files=upload("s.tar", s.jpeg, "application/x-tar")),
        # Not images, whatever the content type says.
        Case("text-as-jpeg", "POST", "/custom/add", {415}, files=upload("x.jpg", b"just some text")),
        Case("pdf-as-png", "POST", "/custom/add", {415}, files=upload("x.png", b"%PDF-1.4 fake", "image/png")),
        Case("html-as-gif", "POST", "/custom/add", {415}, files=upload("x.gif", b"<html></html>", "image/gif")),
        Case("svg", "POST", "/custom/add", {415},
             files=upload("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml")),
        Case("random-bytes", "POST", "/predict", {415}, files=upload("x.jpg", bytes(range(256)) * 8)),
        Case("jpeg-magic-then-junk", "POST", "/custom/add", {400, 415},
             files=upload("x.jpg", b"\xff\xd8\xff\xe0" + b"\x13" * 500)),
        # Truncated and corrupt images.
        Case("truncated-jpeg", "POST", "/custom/add", {400}, files=upload("x.jpg", s.jpeg[: len(s.jpeg) // 2])),
        Case("truncated-png", "POST", "/custom/add", {400}, files=upload("x.png", s.png[: len(s.png) // 2])),
        Case("truncated-webp", "POST", "/custom/add", {400}, files=upload("x.webp", s.webp[: len(s.webp) // 2])),
        Case("truncated-gif", "POST", "/custom/add", {400}, files=upload("x.gif", s.gif[: len(s.gif) // 2])),
        Case("truncated-jpeg-predict", "POST", "/predict", {400}, files=upload("x.jpg", s.jpeg[:300])),
        Case("corrupt-png-data", "POST", "/custom/add", {400}, files=upload("x.png", flipped(s.png, len(s.png) // 3))),
        Case("corrupt-gif-data", "POST", "/custom/add", {400}, files=upload("x.gif", flipped(s.gif, len(s.gif) // 3))),
        Case("png-bad-header-crc", "POST", "/custom/add", {400, 415}, files=upload("x.png", flipped(s.png, 29, 1))),
        # Lossy formats decode damaged data with visible artefacts: stored or refused, never a 5xx.
        Case("corrupt-jpeg-data", "POST", "/custom/add?image_id=corrupt-jpeg", {201, 400},
             files=upload("x.jpg", flipped(s.jpeg, len(s.jpeg) // 3))),
        Case("corrupt-webp-data", "POST", "/custom/add?image_id=corrupt-webp", {201, 400},
             files=upload("x.webp", flipped(s.webp, len(s.webp) // 3))),
        # Decompression bombs and empty images.
        Case("png-bomb", "POST", "/custom/add", {413}, files=upload("b.png", png_bomb(), "image/png")),
        Case("jpeg-bomb", "POST", "/predict", {413}, files=upload("b.jpg", jpeg_bomb())),
        Case("zero-pixel-png", "POST", "/custom/add", {400, 415}, files=upload("z.png", zero_pixel_png(), "image/png")),
        # Unusual but valid images are stored.
        Case("cmyk-jpeg", "POST", "/custom/add?image_id=cmyk", {201}, files=upload("c.jpg", s.cmyk)),
        Case("grey-16-bit-png", "POST", "/custom/add?image_id=grey16", {201}, files=upload("g.png", s.grey16)),
        Case("animated-gif", "POST", "/custom/add?image_id=anim-gif", {201}, files=upload("a.gif", s.animated_gif)),
        Case("animated-webp", "POST", "/custom/add?image_id=anim-webp", {201}, files=upload("a.webp", s.animated_webp)),
        Case("exif-rotated", "POST", "/custom/add?image_id=rotated", {201}, files=upload("r.jpg", s.exif_rotated)),
        Case("one-pixel", "POST", "/custom/add?image_id=one-pixel", {201},
             files=upload("p.png", encode(Image.new("RGB", (1, 1)), "PNG"))),
        # Hostile tag names and image ids.
        Case("tag-slash", "GET", f"/custom/assign/{img}/positive/a%2Fb", {400}),
        Case("tag-dotdot", "GET", f"/custom/assign/{img}/positive/..", {400, 404}),
        Case("tag-nul", "GET", f"/custom/assign/{img}/positive/a%00b", {400}),
        Case("tag-newline", "POST", "/custom/train/a%0Ab", {400, 404}),  # the route does not match
        Case("tag-rtl-override", "GET", f"/custom/assign/{img}/positive/%E2%80%AEgnp", {400}),
        Case("tag-too-long", "GET", f"/custom/assign/{img}/positive/{'x' * 65}", {400}),
        Case("tag-padded", "GET", f"/custom/assign/{img}/negative/%20cat%20", {400}),
        Case("tag-in-query", "GET", "/get_state?tag=%00", {400}),
        Case("id-traversal-query", "POST", "/custom/add?image_id=../../etc/passwd", {400}, files=jpeg),
        Case("id-unicode", "POST", "/custom/add?image_id=%E7%8C%AB", {400}, files=jpeg),
        Case("id-too-long", "POST", f"/custom/add?image_id={'a' * 129}", {400}, files=jpeg),
        Case("id-leading-dot", "GET", f"/custom/assign/.hidden/positive/{tag}", {400}),
        Case("type-invalid", "GET", f"/custom/assign/{img}/neutral/{tag}", {400}),
        # Path traversal in every path parameter.
        Case("trav-assign-image", "GET", f"/custom/assign/{trav}/positive/{tag}", {400, 404}),
        Case("trav-assign-type", "GET", f"/custom/assign/{img}/..%2F/{tag}", {400, 404}),
        Case("trav-assign-tag", "GET", f"/custom/assign/{img}/positive/{trav}", {400}),
        Case("trav-unassign-image", "DELETE", f"/custom/unassign/{trav}/{tag}", {400, 404}),
        Case("trav-unassign-tag", "GET", f"/custom/unassign/{img}/{trav}", {400}),
        Case("trav-train", "GET", f"/custom/train/{trav}", {400}),
        Case("trav-status", "GET", f"/status/{trav}", {404}),
        Case("trav-delete", "DELETE", f"/custom/delete/{trav}", {400}),
        Case("trav-predict-tag", "POST", f"/predict/custom/{trav}", {400, 404}, files=jpeg),
        Case("trav-predict-image", "GET", f"/custom/predict/{trav}", {400, 404}),
        Case("trav-predict-tag-image", "GET", f"/custom/predict/{tag}/{trav}", {400, 404}),
        Case("trav-image-info", "GET", f"/custom/images/{trav}", {400, 404}),
        Case("trav-image-delete", "DELETE", f"/custom/images/{trav}", {400, 404}),
        Case("trav-image-delete-post", "POST", f"/custom/images/{trav}/delete", {400, 404}),
        Case("trav-thumbnail", "GET", f"/custom/images/{trav}/thumbnail", {400, 404}),
        Case("trav-original", "GET", "/custom/images/..%2F..%2Fserve.lock/original", {400, 404}),
        Case("trav-tag-info", "GET", f"/custom/tags/{trav}", {400}),
        Case("trav-versions", "GET", f"/custom/versions/{trav}", {400}),
        Case("trav-rollback-tag", "POST", f"/custom/rollback/{trav}/1", {400}),
        Case("trav-rollback-version", "POST", f"/custom/rollback/{tag}/..%2F1", {400, 404}),
        Case("trav-suggest", "GET", f"/custom/suggest/{trav}", {400}),
        Case("trav-static", "GET", "/static/..%2F..%2F..%2Fpyproject.toml", {404}),
        # Unknown ids, tags, versions and tasks.
        Case("unknown-image-predict", "GET", "/custom/predict/nope", {404}),
        Case("unknown-image-info", "GET", "/custom/images/nope", {404}),
        Case("unknown-image-original", "GET", "/custom/images/nope/original", {404}),
        Case("unknown-image-delete", "DELETE", "/custom/images/nope", {404}),
        Case("unknown-image-assign", "GET", f"/custom/assign/nope/positive/{tag}", {404}),
        Case("unknown-task", "GET", "/status/0123456789abcdef", {404}),
        Case("unknown-tag-delete", "GET", "/custom/delete/never-seen", {404}),
        Case("unknown-tag-versions", "GET", "/custom/versions/never-seen", {404}),
        Case("unknown-tag-info", "GET", "/custom/tags/never-seen", {404}),
        Case("unknown-tag-predict", "POST", "/predict/custom/never-seen", {404}, files=jpeg),
        Case("unknown-tag-unassign", "GET", f"/custom/unassign/{img}/never-seen", {404}),
        Case("unknown-tag-export", "GET", "/get_state?tag=never-seen", {404}),
        Case("unknown-version", "POST", f"/custom/rollback/{tag}/99", {404}),
        # Training a tag without examples (one with positives only trains against the other stored
        # images: tests/test_positives_only.py).
        Case("train-no-examples", "GET", "/custom/train/never-seen", {404}),
    ]
    return out
