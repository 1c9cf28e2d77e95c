"""``tagsmith serve``'s data folder and its Redis files are its owner's alone: the append-only file
holds every tag and key (``grep -a tagsmith:tag: appendonly.aof`` worked for any local user, with
the AOF 0644 and the folders 0755)."""

from __future__ import annotations

import stat
from pathlib import Path

import redis

from infra.embedded import data_folder_lock, start_redis
from tests.support.servers import TagsmithServer


def modes(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): stat.S_IMODE(path.stat().st_mode) for path in folder.rglob("*")}


def run_redis(folder: Path) -> None:
    """Start the embedded Redis in ``folder`` with an append-only file, write a key, save a
    snapshot too, and stop it."""
    process, url = start_redis(folder, fsync="always")
    try:
        client = redis.Redis.from_url(url)
        client.set("tagsmith:tag:cat:positive", "img")
        client.save()  # dump.rdb
    finally:
        process.terminate()
        process.wait(10)


def test_the_embedded_redis_files_are_the_owners_alone(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "redis"
    run_redis(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    found = modes(folder)
    assert "dump.rdb" in found and ("appendonly.aof" in found or "appendonlydir" in found), found  # Redis 6 or 7
    assert {name: mode for name, mode in found.items() if mode & 0o077} == {}, found


def test_a_looser_folder_of_an_earlier_release_is_tightened(tmp_path: Path) -> None:
    folder = tmp_path / "redis"
    run_redis(folder)
    for path in (folder, *folder.rglob("*")):  # as an earlier release left them
        path.chmod(0o755 if path.is_dir() else 0o644)
    process, url = start_redis(folder, fsync="always")
    try:
        assert redis.Redis.from_url(url).get("tagsmith:tag:cat:positive") == b"img"  # the data is still there
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert {name: mode for name, mode in modes(folder).items() if mode & 0o077} == {}
    finally:
        process.terminate()
        process.wait(10)


def test_the_data_folder_is_the_owners_alone(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"
    with data_folder_lock(data):
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "serve.lock").stat().st_mode) == 0o600
    data.chmod(0o755)
    with data_folder_lock(data):
        assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_a_folder_of_the_users_own_keeps_its_mode(tmp_path: Path) -> None:
    """``--data-dir .`` in a project folder had made that folder unreadable to everyone else."""
    own = tmp_path / "project"
    own.mkdir(mode=0o755)
    own.chmod(0o755)
    (own / "notes.txt").write_text("mine")
    for _ in range(2):  # the second time, tagsmith's lock is there too
        with data_folder_lock(own):
            assert stat.S_IMODE(own.stat().st_mode) == 0o755
    run_redis(own / "redis")  # what tagsmith keeps there is the owner's alone
    assert stat.S_IMODE((own / "redis").stat().st_mode) == 0o700


def test_a_running_serve_keeps_its_folders_to_its_owner(live_server: TagsmithServer) -> None:
    for folder in (live_server.data_dir, live_server.data_dir / "objects", live_server.data_dir / "redis"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    # made so: a first start had said it tightened the store's folder, which it had just made looser
    assert "objects readable by its owner alone" not in live_server.log.read_text(errors="replace")
