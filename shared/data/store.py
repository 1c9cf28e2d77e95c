"""The object store: one bucket of keyed blobs, on S3 (MinIO) or in a local folder.

Both implementations write atomically: a reader sees the whole old blob or the whole
new one, never a partial write.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from shared.core.settings import Settings

_KEY = re.compile(r"[^/\x00-\x1f][^\x00-\x1f]*")


class ObjectNotFound(KeyError):
    """The key holds no object."""


class StoreUnavailable(RuntimeError):
    """The object store cannot be reached."""


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def ping(self) -> None: ...


def check_key(key: str) -> str:
    """Keys are relative, slash-separated, without empty, '.' or '..' segments."""
    if not _KEY.fullmatch(key) or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


class _FolderSync:
    """Makes renames into one folder durable with as few fsyncs of it as possible.

    A rename is durable once an fsync of its folder that began after the rename has ended;
    concurrent writers therefore share fsyncs: one runs while the others wait for it, and the
    next one covers every rename done meanwhile."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._requested = 0  # renames announced
        self._synced = 0  # all renames up to this one are durable
        self._running = False

    def sync(self, folder: Path) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._synced < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running, covers, ok = True, self._requested, False
                self._cond.release()
                try:
                    _fsync_folder(folder)
                    ok = True
                finally:
                    self._cond.acquire()
                    self._running = False
                    if ok:
                        self._synced = max(self._synced, covers)
                    self._cond.notify_all()


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore:
    """A folder on disk; each write goes to a temp file (in ``.tmp``, on the same file system) that
    is fsynced and renamed into place, and the blob's folder is fsynced before ``put`` returns, so a
    written blob survives a crash. A crash mid-write leaves only a temp file, which
    ``remove_stale_temporaries`` finds in one folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.temp = self.root / ".tmp"
        self.temp.mkdir(parents=True, exist_ok=True)
        self._syncs: dict[Path, _FolderSync] = {}
        self._syncs_lock = threading.Lock()
        # Held while a delete removes an emptied folder and while a put remakes a missing one and
        # renames into it, so that in this process a put never loses its folder twice.
        self._folders_lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _make_folder(self, folder: Path) -> None:
        """Create ``folder`` and any missing parents, durably (each new entry's parent is fsynced)."""
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for new in reversed(missing):
            new.mkdir(exist_ok=True)
            _fsync_folder(new.parent)

    def _folder_sync(self, folder: Path) -> _FolderSync:
        with self._syncs_lock:
            return self._syncs.setdefault(folder, _FolderSync())

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            self._put(path, data)
        except OSError as exc:  # a full disk, a read-only or unreadable folder: as an S3 server refusing
            raise StoreUnavailable(f"local store write failed: {exc}") from exc

    def _put(self, path: Path, data: bytes) -> None:
        tmp = self.temp / f".tmp-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.replace(tmp, path)
            except FileNotFoundError:  # the first blob in this folder, or a delete just removed it empty
                self._replace_into_new_folder(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:
            self._folder_sync(path.parent).sync(path.parent)
        except FileNotFoundError:  # the blob was deleted meanwhile and its folder with it: nothing to keep
            pass

    def _replace_into_new_folder(self, tmp: Path, path: Path) -> None:
        """Make ``path``'s folder and rename ``tmp`` into it; retried when another process's delete
        removes the folder in between (this process's deletes wait for the lock)."""
        with self._folders_lock:
            for attempt in range(5):
                self._make_folder(path.parent)
                try:
                    os.replace(tmp, path)
                    return
                except FileNotFoundError:
                    if attempt == 4:
                        raise

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise StoreUnavailable(f"local store read failed: {exc}") from exc

    def exists(self, key: str) -> bool:
        path = self._path(key)
        try:
            return path.is_file()
        except OSError as exc:
            raise StoreUnavailable(f"local store stat failed: {exc}") from exc

    def delete(self, key: str) -> None:
        """Remove the blob, then its folder if that is left empty and is not one of the store's top
        folders (a deleted image's thumbnail folder, a deleted tag's model folder), as a key prefix
        stops existing in S3."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"local store delete failed: {exc}") from exc
        if path.parent.parent != self.root and self.root in path.parent.parents:  # a per-id or per-tag folder
            with self._folders_lock, contextlib.suppress(OSError):  # only when empty
                path.parent.rmdir()
                with self._syncs_lock:  # else one entry per folder ever written would stay (2 KB each)
                    self._syncs.pop(path.parent, None)

    def remove_stale_temporaries(self, older_than_s: float) -> int:
        """Delete the temp files of writes a crash cut short (not modified for ``older_than_s``; a
        live write renames its own within seconds); how many were deleted."""
        cutoff, removed = time.time() - older_than_s, 0
        for tmp in self.temp.iterdir():
            with contextlib.suppress(OSError):  # renamed or removed meanwhile
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
        return removed

    def list(self, prefix: str) -> Iterator[str]:
        folder = prefix.rpartition("/")[0]
        base = self.root / folder if folder else self.root

        def failed(exc: OSError) -> None:
            if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):  # a folder a delete emptied and
                raise exc  # removed while the walk went on (or that never was one) holds no keys

        try:
            keys = [(Path(top) / name).relative_to(self.root).as_posix()
                    for top, _, files in os.walk(base, onerror=failed) for name in files if not name.startswith(".tmp-")]
        except OSError as exc:
            raise StoreUnavailable(f"local store list failed: {exc}") from exc
        yield from sorted(key for key in keys if key.startswith(prefix))

    def ping(self) -> None:
        if not self.root.is_dir():
            raise StoreUnavailable(f"store folder {self.root} is missing")


class S3Store:
    """A bucket on any S3 server, through the ``minio`` client; the bucket is created when missing."""

    def __init__(self, settings: Settings) -> None:
        import urllib3
        from minio import Minio

        endpoint, secure = split_endpoint(settings.s3_endpoint, settings.s3_secure)
        self.bucket = settings.s3_bucket
        self.client = Minio(
            endpoint,
            access_key=settings.s3_access_key or None,
            secret_key=settings.s3_secret_key or None,
            secure=secure,
            region=settings.s3_region or None,
            # Fail fast when the server is down: the HTTP layer answers 503 and the client retries.
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=3, read=60),
                retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
                maxsize=16,
            ),
        )
        self._bucket_ready = False

    def _ready(self) -> None:
        if self._bucket_ready:
            return
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except Exception as exc:  # network errors surface as many types
            if _s3_code(exc) == "BucketAlreadyOwnedByYou":  # another process created it just now
                self._bucket_ready = True
                return
            raise StoreUnavailable(f"S3 bucket '{self.bucket}' cannot be used: {exc}") from exc
        self._bucket_ready = True

    def _bucket_gone(self, exc: Exception) -> bool:
        """Whether ``exc`` says the bucket is missing (removed after we made or found it); the next
        call then makes it again, as at start-up."""
        if _s3_code(exc) != "NoSuchBucket":
            return False
        self._bucket_ready = False
        return True

    def put(self, key: str, data: bytes) -> None:
        key = check_key(key)
        for attempt in range(2):
            self._ready()
            try:
                self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))
                return
            except Exception as exc:
                if self._bucket_gone(exc) and attempt == 0:
                    continue
                raise StoreUnavailable(f"S3 write failed: {exc}") from exc

    def get(self, key: str) -> bytes:
        key = check_key(key)
        self._ready()
        response = None
        try:
            response = self.client.get_object(self.bucket, key)
            return response.read()
        except Exception as exc:
            if _s3_code(exc) in ("NoSuchKey", "NoSuchObject") or self._bucket_gone(exc):
                raise ObjectNotFound(key) from None
            raise StoreUnavailable(f"S3 read failed: {exc}") from exc
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def exists(self, key: str) -> bool:
        key = check_key(key)
        self._ready()
        try:
            self.client.stat_object(self.bucket, key)
            return True
        except Exception as exc:
            if _s3_code(exc) in ("NoSuchKey", "NoSuchObject", "NotFound") or self._bucket_gone(exc):
                return False
            raise StoreUnavailable(f"S3 stat failed: {exc}") from exc

    def delete(self, key: str) -> None:
        key = check_key(key)
        self._ready()
        try:
            self.client.remove_object(self.bucket, key)
        except Exception as exc:
            if self._bucket_gone(exc):
                return
            raise StoreUnavailable(f"S3 delete failed: {exc}") from exc

    def list(self, prefix: str) -> Iterator[str]:
        self._ready()
        try:
            names = [obj.object_name for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)]
        except Exception as exc:
            if self._bucket_gone(exc):
                return
            raise StoreUnavailable(f"S3 list failed: {exc}") from exc
        yield from sorted(name for name in names if name is not None)

    def ping(self) -> None:
        self._bucket_ready = False
        self._ready()


def split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """``host:port`` and whether to use HTTPS; an ``http://`` or ``https://`` prefix decides the latter."""
    for scheme, is_secure in (("https://", True), ("http://", False)):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme):].rstrip("/"), is_secure
    return endpoint.rstrip("/"), secure


def _s3_code(exc: Exception) -> str | None:
    return getattr(exc, "code", None)


def open_store(settings: Settings) -> ObjectStore:
    """S3 when an endpoint is configured, else the local folder in the data folder."""
    if settings.s3_endpoint:
        return S3Store(settings)
    return LocalStore(settings.store_dir)
