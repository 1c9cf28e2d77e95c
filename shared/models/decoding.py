"""Safe image decoding: every upload passes here before anything is stored or embedded."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import warnings
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from shared.core.errors import DomainError, InvalidInput, TooLarge, Unavailable, Unsupported
from shared.models.structure import check_framing, check_size

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# JPEGs with a multi-picture extension (phones and cameras write them): the first picture is the
# photo, so they are read, stored and described as JPEGs.
AS_JPEG = ("MPO",)
# The only parsers that ever see an upload (JPEG's also reads MPO files). Left to itself, Pillow
# tries each of its plugins whose signature matches, and some parse in pure Python: an upload that
# starts like an EPS file (22 MB of header lines) took 9-12 s of CPU before its 415.
OPENABLE = FORMATS

# Adding an image only needs to prove it decodes: JPEGs are read at 1/8 scale (the whole stream
# is still parsed, so truncation is caught) without building full-size pixels.
VERIFY_SIZE = 32
# Everything else decodes JPEGs in draft mode to the smallest DCT scale (1/2, 1/4, 1/8) whose short
# side is still at least the backbone's resize size: between one and two times what it needs.
DRAFT_SIZE = 256
# Pillow's own bomb check is replaced by the configurable limit below.
Image.MAX_IMAGE_PIXELS = None
# Modes Image.reduce takes; others are converted to RGB first.
REDUCIBLE = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "F", "CMYK"})
# EXIF orientation -> the transposition that makes the picture upright.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


# Longest a request waits for pixel budget (PixelBudget.reserve) before it is refused with 503 busy.
BUDGET_WAIT_S = 60.0


class PixelBudget:
    """How many decoded pixels may be in memory at once, across threads (about 4 bytes each while
    an image decodes): a decode waits until its image fits. A small file can hold a huge image
    (a 208 KB PNG of 7000 x 7000 pixels costs 0.9 GB decoded), so this, not the number of
    requests, bounds the memory of decoding. An image larger than the whole budget decodes alone.

    Two ways to wait, one queue: ``hold`` blocks its thread (the worker, the library's embedding);
    a request handler awaits ``reserve`` on the event loop before it hands the decode to a thread,
    so that no thread of the shared pool ever waits for pixels (40 heavy uploads waiting there had
    held every route that needs the pool). Waiters take their pixels in order of arrival: one that
    does not fit yet holds back those behind it, so a stream of small images never starves a large
    one. Nothing waits here holding pixels (a ``Reservation``'s decodes wait only for each other,
    and one larger than it gives it back first), and a request's thread waits 60 s at most (it may
    hold a lock that another request, holding pixels, waits on)."""

    def __init__(self, pixels: int) -> None:
        self.capacity = pixels
        self.in_use = 0
        self._lock = threading.Lock()
        # Waiters in order of arrival: their units, and how to wake them (a thread's event, or a
        # request's loop and the future it awaits).
        self._waiting: deque[tuple[int, threading.Event | tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = deque()

    def units(self, pixels: int) -> int:
        """What an image of ``pixels`` holds: all of it, or the whole budget if it is larger."""
        return min(pixels, self.capacity)

    @contextlib.contextmanager
    def hold(self, pixels: int, wait_s: float | None = None) -> Iterator[None]:
        """Hold ``pixels`` for the ``with`` block, blocking this thread until its turn comes (for
        ``wait_s`` at most, if given: then Unavailable, 503 ``busy``)."""
        units, woken = self.units(pixels), threading.Event()
        entry = (units, woken)
        with self._lock:
            queued = not self._take_now(units)
            if queued:
                self._waiting.append(entry)
        if queued and not woken.wait(wait_s):
            with self._lock:
                waiting = any(other is entry for other in self._waiting)
                if waiting:
                    self._waiting.remove(entry)
            self._give_back(0 if waiting else units)  # (woken just as the wait ended: its pixels go back)
            raise _busy()
        try:
            yield
        finally:
            self._give_back(units)

    @contextlib.asynccontextmanager
    async def reserve(self, pixels: int, wait_s: float = BUDGET_WAIT_S) -> AsyncIterator[Reservation]:
        """Hold ``pixels`` for the ``async with`` block, awaiting them on the event loop; a decode
        given the ``Reservation`` (in any thread) uses them without waiting. Waiting longer than
        ``wait_s`` ends in Unavailable (503 ``busy``)."""
        reservation = Reservation(self, await self._take(self.units(pixels), wait_s))
        try:
            yield reservation
        finally:
            reservation.release()

    def _take_now(self, units: int) -> bool:
        """Take ``units`` if nobody waits before them and they fit (the lock held); none always fit."""
        if units and (self._waiting or self.in_use + units > self.capacity):
            return False
        self.in_use += units
        return True

    async def _take(self, units: int, wait_s: float) -> int:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (units, (loop, future))
        with self._lock:
            if self._take_now(units):
                return units
            self._waiting.append(entry)
        try:
            async with asyncio.timeout(wait_s):
                await future
        except BaseException as exc:
            with self._lock:
                waiting = any(other is entry for other in self._waiting)
                if waiting:
                    self._waiting.remove(entry)
            if waiting:
                self._give_back(0)  # those behind it may fit now
            elif not future.cancelled():  # granted just as the wait ended: give it back
                self._give_back(units)
            # (granted but cancelled: _grant, still to run, gives it back)
            if isinstance(exc, TimeoutError):
                raise _busy() from None
            raise
        return units

    def _give_back(self, units: int) -> None:
        """Return ``units``, and wake the waiters that now fit, in order, up to the first that does not."""
        woken = []
        with self._lock:
            self.in_use -= units
            while self._waiting and self.in_use + self._waiting[0][0] <= self.capacity:
                entry = self._waiting.popleft()
                self.in_use += entry[0]
                woken.append(entry)
        for taken, wake in woken:
            if isinstance(wake, threading.Event):
                wake.set()
                continue
            loop, future = wake
            try:
                loop.call_soon_threadsafe(self._grant, future, taken)
            except RuntimeError:  # its event loop is closed: nobody waits any more
                self._give_back(taken)

    def _grant(self, future: asyncio.Future[None], units: int) -> None:
        """On the waiter's loop: its pixels are taken; given back if it went away meanwhile."""
        if future.done():
            self._give_back(units)
        else:
            future.set_result(None)


def _busy() -> Unavailable:
    return Unavailable("busy", "The server is decoding as many large images as it can hold; try again shortly.")


class Reservation:
    """Pixels of a ``PixelBudget`` taken in advance (``PixelBudget.reserve``), a budget of their own
    for the decodes given it (in any thread): each of at most the pixels reserved, they run as many
    at a time as fit in them and otherwise wait for each other, never for the shared budget, so a
    request that holds pixels never waits for more. A decode of more pixels than reserved (an
    animated WebP's canvases) gives the reservation back first, then waits in the shared budget as
    any thread. The pixels go back at ``release`` (idempotent), or once the decodes running then end."""

    def __init__(self, budget: PixelBudget, units: int) -> None:
        self.budget = budget
        self.units = units
        self._changed = threading.Condition()
        self._in_use = 0
        self._kept = True  # until released
        self._given_back = False

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        need = self.budget.units(pixels)
        with self._changed:
            if self._kept and need <= self.units:
                self._changed.wait_for(lambda: not self._kept or self._in_use + need <= self.units)
            covered = self._kept and need <= self.units
            if covered:
                self._in_use += need
        if not covered:  # larger than reserved, or released already: wait like any thread, holding none of it,
            self.release()  # and no longer than a request would (the thread may hold a lock others wait on)
            with self.budget.hold(pixels, BUDGET_WAIT_S):
                yield
            return
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= need
                self._changed.notify_all()
            self._settle()

    def release(self) -> None:
        with self._changed:
            self._kept = False
            self._changed.notify_all()
        self._settle()

    def _settle(self) -> None:
        with self._changed:
            done = not self._kept and not self._in_use and not self._given_back
            self._given_back = self._given_back or done
        if done:
            self.budget._give_back(self.units)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB
    format: str
    width: int  # of the original, after EXIF rotation
    height: int
    cost: int = 0  # the pixels its decoding held of the budget (``decode_cost``)


def decode_image(
    data: bytes,
    max_pixels: int,
    draft_size: int | None = DRAFT_SIZE,
    budget: PixelBudget | Reservation | None = None,
) -> DecodedImage:
    """Decode bytes into an upright RGB image, or raise InvalidInput, TooLarge or Unsupported.

    JPEGs are decoded in draft mode (DCT scaling) straight to at least ``draft_size`` on the short
    side, which is all the models need and several times faster; other formats are decoded whole
    and at once reduced (box filter) to between one and two times ``draft_size``, before any mode
    conversion, so only the decoded raster is ever full size, and only while ``budget`` holds its
    pixels (a ``Reservation`` of ``decode_cost(data)`` pixels, taken beforehand, holds them without
    waiting). Images whose
    parsing or decoding could take far longer than their size suggests are refused first: framing
    no encoder writes (``shared.models.structure``), or a compression Pillow decodes in pure Python
    (run-length encoded BMPs), which holds the interpreter lock for seconds.
    """
    img, fmt, cost = _opened(data, max_pixels)
    width, height = img.size
    try:
        with budget.hold(cost) if budget else contextlib.nullcontext():
            orientation = img.getexif().get(0x0112, 1)
            if draft_size and fmt == "JPEG":  # Pillow picks the smallest scale at least this big
                scale = max(1, min(width, height) // draft_size)
                img.draft("RGB", (width // scale, height // scale))
            img.load()
            rgb = _to_rgb(_reduced(img, draft_size) if draft_size and fmt != "JPEG" else img)
            if orientation in UPRIGHT:
                rgb = rgb.transpose(UPRIGHT[orientation])
    except DomainError:
        raise
    except Exception as exc:  # truncated or corrupt data surfaces as many error types
        raise InvalidInput("corrupt_image", f"The image data is corrupt or truncated: {exc}") from None
    if orientation in (5, 6, 7, 8):  # EXIF says the picture is rotated a quarter turn
        width, height = height, width
    return DecodedImage(image=rgb, format=fmt, width=width, height=height, cost=cost)


def decode_cost(data: bytes, max_pixels: int) -> int:
    """The pixels ``decode_image(data, max_pixels, ...)`` holds of its budget, read from the header
    (what to ``PixelBudget.reserve``); 0 for a file it refuses before decoding."""
    try:
        return _opened(data, max_pixels)[2]
    except DomainError:
        return 0


def open_image(data: bytes) -> ImageFile.ImageFile:
    """The image in ``data`` opened by a supported format's parser (its header read, nothing
    decoded), or UnidentifiedImageError: no other parser reads it."""
    return Image.open(io.BytesIO(data), formats=OPENABLE)


def _opened(data: bytes, max_pixels: int) -> tuple[Image.Image, str, int]:
    """The image opened (its header read, nothing decoded), its format and the pixels its decoding
    holds; or the error that refuses it before decoding."""
    if not data:
        raise InvalidInput("empty_file", "The uploaded file is empty.")
    check_framing(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = open_image(data)
    except UnidentifiedImageError:
        raise Unsupported("not_an_image", "The file is not an image in a supported format (JPEG, PNG, WebP, "
                          "GIF, BMP or TIFF).") from None
    except Exception as exc:
        raise InvalidInput("corrupt_image", f"The image cannot be read: {exc}") from None
    fmt = "JPEG" if img.format in AS_JPEG else img.format or ""
    if fmt not in FORMATS:
        raise Unsupported("unsupported_format", f"Images in {img.format} format are not supported.")
    slow = [tile.codec_name for tile in img.tile if tile.codec_name in Image.DECODERS]
    if slow:
        raise Unsupported("slow_compression", f"{fmt} images compressed as {slow[0]} are not supported (their "
                          "decoder is very slow); save the image as PNG or JPEG.")
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidInput("empty_image", "The image has no pixels.")
    if width * height > max_pixels:
        raise TooLarge(
            "too_many_pixels",
            f"The image has {width}x{height} pixels; the limit is {max_pixels} pixels.",
        )
    check_size(data, fmt, width, height)
    try:
        # libwebp's animation decoder keeps about four canvases (768 MB for an 882-byte 7000 x 7000 file)
        weight = 4 if fmt == "WEBP" and getattr(img, "is_animated", False) else 1
    except Exception as exc:
        raise InvalidInput("corrupt_image", f"The image data is corrupt or truncated: {exc}") from None
    return img, fmt, weight * width * height


def _reduced(img: Image.Image, size: int) -> Image.Image:
    """The image shrunk by a whole factor to between one and two times ``size`` on its short side."""
    factor = min(img.size) // size
    if factor < 2:
        return img
    if img.mode not in REDUCIBLE:  # the smallest mode that reduces and keeps what _to_rgb needs
        transparent = img.mode == "PA" or "transparency" in img.info
        wider = {"P": "RGBA" if transparent else "RGB", "PA": "RGBA", "1": "L"}.get(img.mode)
        # 16-bit greyscale (I;16...) widens to I; colour modes (YCbCr, LAB, HSV TIFFs) become RGB
        img = img.convert(wider or ("I" if img.mode.startswith("I") else "RGB"))
    return img.reduce(factor)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB; transparency is composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit and float greyscale
        values = np.asarray(img, dtype=np.float64)
        if values.max(initial=0) > 255:
            values = values / 256
        img = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" or img.mode in ("LA", "PA", "RGBA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
