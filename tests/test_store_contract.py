"""One contract for both object stores: the local folder and S3 (a real S3 server, never a mock)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shared.core.settings import Settings
from shared.data.store import LocalStore, ObjectNotFound, ObjectStore, S3Store, StoreUnavailable, open_store
from tests.support.api import unique_name
from tests.support.servers import S3Endpoint, free_port

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield open_store(Settings(data_dir=tmp_path / "data"))
    else:
        server = request.getfixturevalue("s3_server")
        yield open_store(server.settings(unique_name("bucket")))


def test_open_store_picks_the_implementation_from_the_settings(tmp_path: Path) -> None:
    assert isinstance(open_store(Settings(data_dir=tmp_path)), LocalStore)
    assert isinstance(open_store(Settings(s3_endpoint="127.0.0.1:9")), S3Store)


def test_put_get_overwrite_and_delete(store: ObjectStore) -> None:
    store.put("images/a", b"first")
    assert store.get("images/a") == b"first"
    assert store.exists("images/a")
    store.put("images/a", b"second, longer")
    assert store.get("images/a") == b"second, longer"
    store.delete("images/a")
    assert not store.exists("images/a")
    store.delete("images/a")  # deleting what is gone is fine
    with pytest.raises(ObjectNotFound):
        store.get("images/a")


def test_binary_and_empty_blobs_round_trip(store: ObjectStore) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB, every byte value
    store.put("models/t/v1.tar", blob)
    store.put("embeddings/x/empty.npy", b"")
    assert store.get("models/t/v1.tar") == blob
    assert store.get("embeddings/x/empty.npy") == b""


def test_list_is_a_sorted_string_prefix_match(store: ObjectStore) -> None:
    for key in ["models/cat/v2.tar", "models/cat/v1.tar", "models/cat2/v1.tar", "models/a-b/v1.tar", "images/x"]:
        store.put(key, b"x")
    assert list(store.list("models/cat/")) == ["models/cat/v1.tar", "models/cat/v2.tar"]
    assert list(store.list("models/cat")) == ["models/cat/v1.tar", "models/cat/v2.tar", "models/cat2/v1.tar"]
    assert list(store.list("models/")) == sorted(
        ["models/a-b/v1.tar", "models/cat/v1.tar", "models/cat/v2.tar", "models/cat2/v1.tar"]
    )
    assert list(store.list("")) == sorted([*store.list("models/"), "images/x"])
    assert list(store.list("nothing/")) == []


def test_keys_that_could_escape_are_refused(store: ObjectStore) -> None:
    for key in ["../x", "a/../../x", "/abs", "a//b", "a/./b", "", "a\x00b"]:
        with pytest.raises(ValueError):
            store.put(key, b"x")


def test_unicode_keys(store: ObjectStore) -> None:
    store.put("models/café au lait/v1.tar", b"x")
    assert list(store.list("models/café au lait/")) == ["models/café au lait/v1.tar"]
    assert store.get("models/café au lait/v1.tar") == b"x"


def test_readers_never_see_a_partial_write(store: ObjectStore) -> None:
    """While one writer keeps replacing a blob, every read is one whole version or the other."""
    size = 512 * 1024
    versions = {b"a" * size, b"b" * size}
    store.put("models/t/v1.tar", b"a" * size)
    done = threading.Event()

    def write() -> None:
        for i in range(12):
            store.put("models/t/v1.tar", (b"b" if i % 2 == 0 else b"a") * size)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while not done.is_set() or reads < 5:
        assert store.get("models/t/v1.tar") in versions
        reads += 1
    writer.join()


def test_local_store_shares_folder_fsyncs_and_never_skips_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent writers into one folder share its fsyncs, yet each put returns only after an
    fsync of the folder that began after its own rename; a failed fsync fails the put."""
    from shared.data import store as store_module

    store = LocalStore(tmp_path / "objects")
    store.put("images/first", b"x")  # the folder exists from here on
    synced: list[set[str]] = []
    real_fsync = store_module._fsync_folder

    def recording_fsync(folder: Path) -> None:
        present = {p.name for p in folder.iterdir()}  # what this fsync is sure to cover
        time.sleep(0.005)
        real_fsync(folder)
        synced.append(present)

    monkeypatch.setattr(store_module, "_fsync_folder", recording_fsync)
    keys = [f"images/k{i}" for i in range(40)]

    def put(key: str) -> None:
        store.put(key, key.encode())
        assert any(key.rpartition("/")[2] in names for names in synced), key  # durable before returning

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, keys))
    assert all(store.get(key) == key.encode() for key in keys)
    assert len(synced) < len(keys)

    def failing_fsync(folder: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store_module, "_fsync_folder", failing_fsync)
    with pytest.raises(StoreUnavailable):
        store.put("images/late", b"x")
    monkeypatch.setattr(store_module, "_fsync_folder", real_fsync)
    store.put("images/later", b"y")  # a failed fsync leaves nothing stuck
    assert store.get("images/later") == b"y"


def test_local_store_leaves_no_empty_folders_and_puts_into_them_again(tmp_path: Path) -> None:
    """Each deleted image's thumbnail folder stayed behind, empty, for good."""
    store = LocalStore(tmp_path / "objects")
    store.put("thumbnails/img-1/256.jpg", b"a")
    store.put("thumbnails/img-2/256.jpg", b"b")
    store.delete("thumbnails/img-1/256.jpg")
    assert not (tmp_path / "objects" / "thumbnails" / "img-1").exists()
    assert (tmp_path / "objects" / "thumbnails" / "img-2" / "256.jpg").read_bytes() == b"b"
    store.delete("thumbnails/img-2/256.jpg")
    assert list((tmp_path / "objects" / "thumbnails").iterdir()) == []  # the top folder stays
    store.put("thumbnails/img-1/256.jpg", b"c")
    assert store.get("thumbnails/img-1/256.jpg") == b"c"


def test_local_store_forgets_the_folders_it_removed(tmp_path: Path) -> None:
    """Each folder ever written kept its fsync record for the life of the process (2 KB a deleted
    image): adding and deleting images grew the server's memory without end."""
    store = LocalStore(tmp_path / "objects")
    for i in range(50):
        store.put(f"thumbnails/img-{i}/256.jpg", b"a")
        store.delete(f"thumbnails/img-{i}/256.jpg")
    store.put("thumbnails/kept/256.jpg", b"b")
    assert set(store._syncs) <= {tmp_path / "objects" / "thumbnails" / "kept", tmp_path / "objects" / "thumbnails"}


def test_local_store_puts_and_deletes_racing_in_one_folder_never_fail(tmp_path: Path) -> None:
    """A delete that empties a folder removes it: puts into it at that moment make it again, and
    a put whose own blob is deleted before its folder's fsync does not fail."""
    store = LocalStore(tmp_path / "objects")

    def churn(worker: int) -> None:
        for i in range(1200):
            key = f"thumbnails/shared-{i % 3}/{worker}.jpg"
            store.put(key, b"x")
            store.delete(key)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(churn, range(4)))  # raises what any of them raised
    assert not list(store.list("thumbnails/"))


def test_local_store_lists_a_folder_that_deletes_remove_meanwhile(tmp_path: Path) -> None:
    """Listing a per-image folder while its last blob comes and goes (a thumbnail made and dropped
    for an image being deleted) finds it or finds nothing; it is not the store being unavailable."""
    store = LocalStore(tmp_path / "objects")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            store.put("thumbnails/img/64.jpg", b"x")
            store.delete("thumbnails/img/64.jpg")

    churning = threading.Thread(target=churn)
    churning.start()
    try:
        seen = set()
        deadline = time.monotonic() + 3
        for _ in range(20000):
            seen.add(tuple(store.list("thumbnails/img/")))
            if time.monotonic() > deadline:
                break
    finally:
        stop.set()
        churning.join()
    assert seen <= {(), ("thumbnails/img/64.jpg",)}


def test_local_store_removes_the_temp_files_of_crashed_writes_only(tmp_path: Path) -> None:
    """A write killed between its temp file and the rename left the temp file (up to an image's or
    an archive's size) for good; one being written now is left alone."""
    store = LocalStore(tmp_path / "objects")
    store.put("images/kept", b"kept")
    crashed = store.temp / ".tmp-0123456789abcdef"
    writing = store.temp / ".tmp-fedcba9876543210"
    crashed.write_bytes(b"x" * 1000)
    writing.write_bytes(b"y")
    hour_ago = time.time() - 3600
    os.utime(crashed, (hour_ago, hour_ago))
    assert store.remove_stale_temporaries(600) == 1
    assert not crashed.exists() and writing.exists() and store.get("images/kept") == b"kept"


def test_ping(store: ObjectStore) -> None:
    store.ping()


def test_s3_bucket_is_created_when_missing(s3_server: S3Endpoint) -> None:
    bucket = unique_name("new-bucket")
    store = S3Store(s3_server.settings(bucket))
    assert not store.client.bucket_exists(bucket)
    store.put("images/x", b"x")
    assert store.client.bucket_exists(bucket)
    # A second process finding the bucket made by the first is fine too.
    assert S3Store(s3_server.settings(bucket)).get("images/x") == b"x"


def test_s3_endpoint_may_carry_its_scheme(s3_server: S3Endpoint) -> None:
    settings = s3_server.settings(unique_name("bucket"))
    store = S3Store(settings.model_copy(update={"s3_endpoint": f"http://{settings.s3_endpoint}/"}))
    store.put("k", b"v")
    assert store.get("k") == b"v"


def test_s3_down_or_refusing_is_unavailable_not_a_crash(s3_server: S3Endpoint) -> None:
    down = S3Store(Settings(s3_endpoint=f"127.0.0.1:{free_port()}", s3_access_key="k", s3_secret_key="s"))
    with pytest.raises(StoreUnavailable):
        down.put("images/x", b"x")
    wrong_key = s3_server.settings(unique_name("bucket")).model_copy(update={"s3_secret_key": "wrong"})
    with pytest.raises(StoreUnavailable):
        S3Store(wrong_key).ping()


def test_local_store_with_its_folder_gone_is_unavailable(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    shutil.rmtree(tmp_path / "objects")
    with pytest.raises(StoreUnavailable):
        store.ping()


def test_local_store_failures_are_unavailable_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk or an unreadable folder is the store being unavailable (HTTP 503, as on S3), not
    an unexpected error (a 500); the half-written temp file goes."""
    import errno

    from shared.data import store as store_module

    store = LocalStore(tmp_path / "objects")
    store.put("images/kept", b"x")

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    real_write = store_module.os.write
    monkeypatch.setattr(store_module.os, "write", disk_full)
    with pytest.raises(StoreUnavailable, match="No space left on device"):
        store.put("images/new", b"y")
    monkeypatch.setattr(store_module.os, "write", real_write)
    assert sorted(p.name for p in (tmp_path / "objects" / "images").iterdir()) == ["kept"]

    def unreadable(self: Path) -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    with pytest.raises(StoreUnavailable, match="Permission denied"):
        store.get("images/kept")


def test_s3_bucket_removed_while_running_is_created_again(s3_server: S3Endpoint) -> None:
    """"Created when missing" holds after start-up too: a bucket removed under a running process
    (an operator, a MinIO that lost its volume) is made again by the next write, instead of every
    request answering 503 until something happens to call /ready."""
    bucket = unique_name("gone")
    store = S3Store(s3_server.settings(bucket))
    store.put("images/x", b"x")
    store.delete("images/x")
    store.client.remove_bucket(bucket)
    with pytest.raises(ObjectNotFound):
        store.get("images/x")
    assert not store.exists("images/x")
    assert list(store.list("images/")) == []
    store.put("images/y", b"y")
    assert store.get("images/y") == b"y"
