"""``Client``: one method per API call, named like the seed's Python functions where it has them."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn, cast
from urllib.parse import quote

import httpx

from tagsmith_client.errors import TagsmithError, TaskFailed
from tagsmith_client.types import AddedImage, Assignment, BatchResult, Prediction, Task, TaskStatus

DEFAULT_URL = "http://127.0.0.1:5000"
# ``wait`` polls again after these refusals (0: the server could not be reached), pausing
# RETRY_FIRST_PAUSE seconds, doubled after each, at most RETRY_MAX_PAUSE.
TRANSIENT_STATUSES = frozenset({0, 502, 503, 504})
RETRY_FIRST_PAUSE = 0.25
RETRY_MAX_PAUSE = 5.0
ImageSource = str | os.PathLike[str] | bytes | IO[bytes]
"""A file path, the file's bytes, or a binary file object."""


def default_url() -> str:
    """The server to talk to unless told: ``$TAGSMITH_URL``; else the one ``tagsmith serve`` run with
    the same environment serves (``$TAGSMITH_PORT``, and ``$TAGSMITH_HOST`` unless it means every
    address); else ``DEFAULT_URL``."""
    if url := os.environ.get("TAGSMITH_URL", "").strip():
        return url
    host = os.environ.get("TAGSMITH_HOST", "").strip().strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{os.environ.get('TAGSMITH_PORT', '').strip() or 5000}"


def server_url(url: str) -> str:
    """``url`` as the address requests go to: ``127.0.0.1:5000`` (as curl takes it) means
    ``http://127.0.0.1:5000``; a scheme other than http or https is refused (ValueError)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    scheme = url.partition("://")[0].lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// address of a tagsmith server")
    return url


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


def _query(query: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments as query parameters: booleans as true/false, None left out."""
    return {k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in query.items() if v is not None}


def _file(source: ImageSource, default_name: str = "image") -> tuple[str, bytes]:
    if isinstance(source, bytes):
        return default_name, source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return path.name, path.read_bytes()
    return Path(str(getattr(source, "name", default_name))).name, source.read()


class Client:
    """Talks to a tagsmith server over HTTP; every refusal raises ``TagsmithError``.

    ``url`` defaults to ``$TAGSMITH_URL``, else the address ``tagsmith serve`` reads from
    ``$TAGSMITH_HOST`` and ``$TAGSMITH_PORT`` (``default_url``), else http://127.0.0.1:5000; ``api_key`` (sent as
    ``X-API-Key``) to ``$TAGSMITH_API_KEY``. Pass ``http`` to use your own ``httpx.Client`` (a proxy,
    TLS settings, or Starlette's ``TestClient`` in tests).
    """

    tags_page = 1000  # tags asked for at a time by ``tags``

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        http: httpx.Client | None = None,
    ) -> None:
        if url is None:
            url = str(http.base_url) if http is not None else default_url()
        self.url = server_url(url)
        key = api_key if api_key is not None else os.environ.get("TAGSMITH_API_KEY", "")
        self._headers = {"X-API-Key": key} if key else {}
        self._own_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._timeout = timeout

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer's body within ``timeout`` (the client's, or the call's) of its headers: httpx's
        own bounds each read, so a body trickling a byte at a time had kept a call waiting for ever."""
        timeout = kwargs.get("timeout", self._timeout)
        raw = bytearray()  # the body, decoded
        try:
            headers = {**self._headers, **kwargs.pop("headers", {})}
            with self._http.stream(method, self.url + path, headers=headers, **kwargs) as streamed:
                deadline = time.monotonic() + timeout
                for chunk in streamed.iter_bytes():  # decoded (gzip, say) as its headers say
                    raw += chunk
                    if time.monotonic() > deadline:
                        raise TagsmithError(0, "timeout", f"tagsmith at {self.url} took more than {timeout:g} s "
                                            f"to answer {method} {path}.")
        except httpx.TransportError as exc:
            raise TagsmithError(0, "unreachable", f"Cannot reach tagsmith at {self.url}: {exc}") from exc
        decoded = [(k, v) for k, v in streamed.headers.multi_items() if k.lower() not in ("content-encoding", "content-length")]
        response = httpx.Response(streamed.status_code, headers=decoded, content=bytes(raw), request=streamed.request)
        if response.is_success:
            return response
        self._raise_for(response)

    @staticmethod
    def _raise_for(response: httpx.Response) -> NoReturn:
        try:
            body = response.json()
            code, message = str(body["error"]), str(body["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", response.text[:300] or response.reason_phrase
        raise TagsmithError(response.status_code, code, message)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # --- the seed's calls -----------------------------------------------------------------

    def add_image(self, img: ImageSource, image_id: str | None = None) -> AddedImage:
        """Store an image; without ``image_id`` the server generates one."""
        params = {"image_id": image_id} if image_id else None
        return cast(AddedImage, self._json("POST", "/custom/add", params=params, files={"data": _file(img)}))

    def assign_image(self, sample_type: str, tag: str, image_id: str) -> Assignment:
        """Make the image a 'positive' or 'negative' example of the tag (the seed's argument order)."""
        path = f"/custom/assign/{_seg(image_id)}/{_seg(sample_type)}/{_seg(tag)}"
        return cast(Assignment, self._json("POST", path))

    def train(self, tag: str) -> Task:
        """Queue a training; returns the task (``task_id``) to follow with ``status`` or ``wait``."""
        return cast(Task, self._json("POST", f"/custom/train/{_seg(tag)}"))

    def status(self, task_id: str) -> TaskStatus:
        return cast(TaskStatus, self._json("GET", f"/status/{_seg(task_id)}"))

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        poll: float = 0.5,
        on_progress: Callable[[TaskStatus], None] | None = None,
        retry_for: float | None = 60.0,
    ) -> TaskStatus:
        """Poll until the task finishes and return its status; ``TaskFailed`` if it failed,
        ``TimeoutError`` after ``timeout`` seconds. ``on_progress`` sees every status polled.

        A transient refusal (503, 502 or 504 from a gateway, or the server unreachable) is polled
        again after a pause that starts at 0.25 s and doubles up to 5 s, until ``timeout``; without
        a timeout, until the refusals have lasted ``retry_for`` seconds (None: for ever). Then the
        last refusal is raised. Any other refusal raises at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = RETRY_FIRST_PAUSE
        failing_since: float | None = None
        while True:
            try:
                status = self.status(task_id)
            except TagsmithError as exc:
                if exc.status not in TRANSIENT_STATUSES:
                    raise
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                give_up = deadline if deadline is not None else (
                    None if retry_for is None else failing_since + retry_for)
                if give_up is not None and now >= give_up:
                    raise
                time.sleep(pause if give_up is None else min(pause, give_up - now))
                pause = min(2 * pause, RETRY_MAX_PAUSE)
                continue
            failing_since, pause = None, RETRY_FIRST_PAUSE
            if on_progress is not None:
                on_progress(status)
            if status.get("status") == "finished":
                return status
            if status.get("status") == "failed":
                raise TaskFailed(dict(status))
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"Task {task_id} did not finish within {timeout} s.")
            time.sleep(poll)

    def delete(self, tag: str) -> dict[str, Any]:
        """Reset the tag: its models and assignments go, the images stay."""
        return cast(dict[str, Any], self._json("POST", f"/custom/delete/{_seg(tag)}"))

    def predict(self, img: ImageSource, matches_only: bool = False) -> Prediction:
        """Base keywords and styles plus every custom tag (or, ``matches_only``, those that match)."""
        return cast(Prediction, self._json("POST", "/predict", files={"data": _file(img)}, params=_matches(matches_only)))

    def predict_custom(self, img: ImageSource, tag: str | None = None, matches_only: bool = False) -> dict[str, Any]:
        """Every custom tag (``{"custom": {...}}``; or, ``matches_only``, those that match), or one
        (``{"tag", "score", "match", ...}``)."""
        path = "/predict/custom" if tag is None else f"/predict/custom/{_seg(tag)}"
        params = _matches(matches_only) if tag is None else None
        return cast(dict[str, Any], self._json("POST", path, files={"data": _file(img)}, params=params))

    def predict_added(self, image_id: str, tag: str | None = None, matches_only: bool = False) -> dict[str, Any]:
        """Custom tags for a stored image: all of them (or, ``matches_only``, those that match), or one."""
        if tag is not None:
            return cast(dict[str, Any], self._json("GET", f"/custom/predict/{_seg(tag)}/{_seg(image_id)}"))
        return cast(dict[str, Any], self._json("GET", f"/custom/predict/{_seg(image_id)}", params=_matches(matches_only)))

    def set_state(self, archive: ImageSource) -> dict[str, Any]:
        """Load custom models from a state archive (path, bytes or file)."""
        return cast(dict[str, Any], self._json("POST", "/set_state", files={"data": _file(archive, "state.tar")}))

    def get_state(self, tag: str | None = None) -> bytes:
        """The current models of every tag (or one) as a state archive."""
        return self._request("GET", "/get_state", params={"tag": tag} if tag else None).content

    def backup(self, path: str | os.PathLike[str]) -> int:
        """Write a backup of everything taught (images, examples, every model version, the current
        ones) to ``path``, streamed as it comes; returns its size in bytes. ``path`` is replaced
        only once the whole backup has arrived."""
        return self._download("/backup", path, what="Backup")

    def _download(self, route: str, path: str | os.PathLike[str], *, what: str,
                  params: dict[str, Any] | None = None) -> int:
        """GET ``route`` into the file ``path``, streamed, under a temporary name that replaces
        ``path`` once the whole answer has come; returns its size. A ``path`` that is there and is
        no regular file (a pipe, ``/dev/stdout``) is written as the answer comes."""
        target = Path(path)
        if is_stream_path(target):
            with open(target, "wb") as out:
                return self._stream_into(out, route, params, what)
        fd, partial = _new_partial(target)
        try:
            with os.fdopen(fd, "wb") as out:
                size = self._stream_into(out, route, params, what)
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return size

    def _stream_into(self, out: IO[bytes], route: str, params: dict[str, Any] | None, what: str) -> int:
        """GET ``route`` and write its body into ``out`` as it comes; the bytes written."""
        try:
            with self._http.stream("GET", self.url + route, params=params, headers=self._headers) as response:
                if not response.is_success:
                    response.read()
                    self._raise_for(response)
                size = 0
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    size += len(chunk)
                return size
        except httpx.TransportError as exc:
            raise TagsmithError(0, "unreachable", f"{what} from {self.url} failed: {exc}") from exc

    def export_onnx(self, path: str | os.PathLike[str], tags: Sequence[str] = ()) -> int:
        """Write the backbone and the current heads of ``tags`` (default: every tag with a model)
        as one ONNX file for devices to ``path``, streamed; returns its size in bytes. ``path`` is
        replaced only once the whole file has arrived. 404 ``no_models`` when there is none."""
        return self._download("/export/onnx", path, what="ONNX export", params={"tag": list(tags)} if tags else None)

    def restore(self, path: str | os.PathLike[str], *, timeout: float = 3600.0) -> dict[str, Any]:
        """Restore a backup file into an empty server (409 ``not_empty`` otherwise); the file is
        sent as it is read. Returns what was restored (``images``, ``tags``)."""
        with open(path, "rb") as archive:
            files = {"data": (Path(path).name, archive, "application/x-tar")}
            return cast(dict[str, Any], self._json("POST", "/restore", files=files, timeout=timeout))

    # --- beyond the seed ------------------------------------------------------------------

    def add_images(
        self,
        images: Iterable[ImageSource],
        *,
        image_ids: Sequence[str] | None = None,
        tag: str | None = None,
        sample_type: str | None = None,
    ) -> BatchResult:
        """Store several images in one request, optionally assigning them all to ``tag`` as
        ``sample_type``; each file gets its own result, in order."""
        files = [("data", _file(img, f"image-{i}")) for i, img in enumerate(images)]
        data = {"image_id": [i or "" for i in image_ids]} if image_ids else None
        params = {"tag": tag, "type": sample_type} if tag or sample_type else None
        return cast(BatchResult, self._json("POST", "/custom/add_many", params=params, files=files, data=data))

    def unassign_image(self, image_id: str, tag: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("POST", f"/custom/unassign/{_seg(image_id)}/{_seg(tag)}"))

    def images(self, limit: int = 50, offset: int = 0, *, cursor: str | None = None, **query: Any) -> dict[str, Any]:
        """A page of the library's images and how many match: newest first, or searched with the
        query parameters of ``GET /custom/images`` (``tag``, ``match``, ``min_score``, ``max_score``,
        ``label``, ``all``/``any``/``none`` as lists of tags, ``filename``, ``sort``, ``order``).
        The page's ``next`` is the ``cursor`` of the next one."""
        params: dict[str, Any] = {"limit": limit, "offset": offset, **_query(query)}
        if cursor:
            params["cursor"] = cursor
        return cast(dict[str, Any], self._json("GET", "/custom/images", params=params))

    def iter_images(self, page_size: int = 200, **query: Any) -> Iterator[dict[str, Any]]:
        """Every library image matching the query (as ``images``), page after page; ``offset``
        skips that many at the start (the server would skip them after every cursor)."""
        cursor = None
        while True:
            page = self.images(page_size, cursor=cursor, **query)
            yield from page["images"]
            cursor = page["next"]
            if not cursor:
                return
            query.pop("offset", None)

    def similar(self, image_id: str, limit: int = 20) -> dict[str, Any]:
        """The stored images most like this one in what they show, most similar first."""
        return cast(dict[str, Any], self._json("GET", f"/custom/images/{_seg(image_id)}/similar", params={"limit": limit}))

    def library(self, tags: Sequence[str] = ()) -> dict[str, Any]:
        """How far the workers are: images, embedded, pending, and per tag (every tag with a model,
        or ``tags``) where its scores come from."""
        return cast(dict[str, Any], self._json("GET", "/custom/library", params={"tag": list(tags)} if tags else None))

    def export_scores(self, out: IO[bytes], format: str = "csv", tags: Sequence[str] = (),
                      match: bool = False) -> int:
        """Stream every library image's score for every tag (or ``tags``) into ``out`` as CSV or
        JSON lines (``format``: csv or jsonl); returns the bytes written."""
        return self._stream_into(out, "/custom/library/export", _score_params(format, tags, match), "Score export")

    def save_scores(self, path: str | os.PathLike[str], format: str = "csv", tags: Sequence[str] = (),
                    match: bool = False) -> int:
        """``export_scores`` into the file ``path``, which is replaced only once the whole export
        has arrived (a refused export leaves it as it was); returns its size in bytes."""
        return self._download("/custom/library/export", path, what="Score export",
                              params=_score_params(format, tags, match))

    def image(self, image_id: str) -> dict[str, Any]:
        """A stored image's details and the tags it is an example of."""
        return cast(dict[str, Any], self._json("GET", f"/custom/images/{_seg(image_id)}"))

    def thumbnail(self, image_id: str, size: int = 256) -> bytes:
        return self._request("GET", f"/custom/images/{_seg(image_id)}/thumbnail", params={"size": size}).content

    def delete_image(self, image_id: str) -> dict[str, Any]:
        """Delete a stored image, its cached embeddings, and its place in every tag."""
        return cast(dict[str, Any], self._json("DELETE", f"/custom/images/{_seg(image_id)}"))

    def tags(self, contains: str = "") -> list[dict[str, Any]]:
        """Every tag (or every one whose name holds ``contains``, any case) with its example counts
        and current model, read ``tags_page`` at a time."""
        tags: list[dict[str, Any]] = []
        after = ""
        while True:
            page = self._json("GET", "/custom/tags", params={"contains": contains, "after": after, "limit": self.tags_page})
            tags += page["tags"]
            if "next" not in page:  # a server from before paging: every tag, unfiltered, in one answer
                return [t for t in tags if contains.lower() in t["tag"].lower()]  # as the server ignores case
            if page["next"] is None:
                return tags
            after = page["next"]

    def tag(self, tag: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("GET", f"/custom/tags/{_seg(tag)}"))

    def versions(self, tag: str) -> dict[str, Any]:
        """The tag's model versions with metrics and dates, and which one is current."""
        return cast(dict[str, Any], self._json("GET", f"/custom/versions/{_seg(tag)}"))

    def rollback(self, tag: str, version: int) -> dict[str, Any]:
        """Make an earlier version the current one again."""
        return cast(dict[str, Any], self._json("POST", f"/custom/rollback/{_seg(tag)}/{_seg(version)}"))

    def suggest(self, tag: str, limit: int = 10) -> dict[str, Any]:
        """Unlabelled images to label next: ``uncertain`` and ``likely_positive``."""
        return cast(dict[str, Any], self._json("GET", f"/custom/suggest/{_seg(tag)}", params={"limit": limit}))

    def health(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("GET", "/health"))

    def ready(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("GET", "/ready"))


def _matches(matches_only: bool) -> dict[str, str] | None:
    return {"match": "true"} if matches_only else None


def _score_params(format: str, tags: Sequence[str], match: bool) -> dict[str, Any]:
    return {"format": format, **({"tag": list(tags)} if tags else {}), **({"match": "true"} if match else {})}


def is_stream_path(path: Path) -> bool:
    """Whether ``path`` names a stream rather than a file to replace: a pipe or device there now, or
    a name under /dev or /proc (``/dev/stdout`` is a link to whatever stdout is, a file too)."""
    return str(path).startswith(("/dev/", "/proc/")) or (path.exists() and not path.is_file())


def _new_partial(target: Path) -> tuple[int, Path]:
    """A new file beside ``target`` (a random name, O_EXCL: never a file that is there already,
    nor where a link points) for a download to replace it with, with the target's permissions if it
    exists (else the umask's); its descriptor and path."""
    if not target.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(target))
    partial = target.with_name(f".{target.name}.{secrets.token_hex(6)}.partial")
    binary = getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)  # O_BINARY: Windows would write \r\n
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | binary, 0o666)
    with contextlib.suppress(OSError):
        if target.is_file():
            os.chmod(partial, stat.S_IMODE(target.stat().st_mode))
    return fd, partial
