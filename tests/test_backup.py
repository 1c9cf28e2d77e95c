"""Backing up a project and moving it: GET /backup streamed out, POST /restore into an empty server
(a second Services and gateway in the same test), through the real HTTP API; refusals leave
everything as it was; the command line's backup and restore once."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.testclient import TestClient

from functions import state
from infra.cli import main
from infra.gateway import create_gateway
from shared.data.keys import model_key
from shared.data.registry import Registry
from shared.domain import backup, images, labels
from shared.domain.services import Services, build_services
from shared.models.backbone import Backbone
from tests.support.api import add, run_queued_jobs, settings_for, teach_cat
from tests.support.photos import CAT, OTHERS, crops
from tests.support.servers import RedisContainer, RedisServer, serving

Server = tuple[Services, TestClient]


@pytest.fixture
def empty(redis_server: RedisServer | RedisContainer, tmp_path: Path, backbone: Backbone) -> Iterator[Server]:
    """A second server, empty: its own Redis key prefix, queue and store folder."""
    services = build_services(settings_for(redis_server.url, tmp_path / "other"), backbone)
    with TestClient(create_gateway(services=services), raise_server_exceptions=False) as test_client:
        yield services, test_client


def taught(client: TestClient, services: Services) -> None:
    """The cat tag with two versions, v1 current again, and an image with a file name of its own."""
    teach_cat(client, services, positives=3, negatives_each=1)
    response = client.post("/custom/add?image_id=extra", files={"data": ("Straße à Paris.jpg",
                                                                          crops(CAT, 1, seed=7)[0], "image/jpeg")})
    assert response.status_code == 201, response.text
    assert client.get("/custom/assign/extra/positive/cat").status_code == 200
    task = client.post("/custom/train/cat").json()
    run_queued_jobs(services)
    assert client.get(f"/status/{task['task_id']}").json()["result"]["version"] == 2
    assert client.post("/custom/rollback/cat/1").status_code == 200


def snapshot(client: TestClient) -> dict[str, Any]:
    """What a user sees of a server: images, tags and labels, versions."""
    listed = client.get("/custom/images?limit=500").json()
    tags = client.get("/custom/tags").json()["tags"]
    return {
        "images": listed["images"],  # newest first
        "tags": tags,
        "labels": {t["tag"]: client.get(f"/custom/tags/{t['tag']}").json() for t in tags},
        "versions": {t["tag"]: client.get(f"/custom/versions/{t['tag']}").json() for t in tags},
    }


def restore(client: TestClient, data: bytes) -> Any:
    return client.post("/restore", files={"data": ("backup.tar", data, "application/x-tar")})


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def repack(data: bytes, change: Callable[[dict[str, bytes]], dict[str, bytes]]) -> bytes:
    """The backup with its members changed (names and bytes), in the same order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in change(members(data)).items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def test_backup_restores_into_an_empty_server_identically(client: TestClient, services: Services,
                                                           empty: Server) -> None:
    taught(client, services)
    client.get("/custom/assign/extra/positive/emptied")  # a tag whose examples were all unlabelled: still listed
    client.post("/custom/unassign/extra/emptied")
    before = snapshot(client)
    assert [(t["tag"], t["positives"]) for t in before["tags"]] == [("cat", 4), ("emptied", 0)]
    assert before["versions"]["cat"]["current"] == 1
    assert [v["version"] for v in before["versions"]["cat"]["versions"]] == [1, 2]

    response = client.get("/backup")
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
    data = response.content
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert names[-1] == "manifest.json"  # written last: a backup cut short has none
    manifest = json.loads(members(data)["manifest.json"])
    assert manifest["backbone"] == services.spec.id
    assert {i["image_id"] for i in manifest["images"]} == {i["image_id"] for i in before["images"]}
    assert [t["current"] for t in manifest["tags"]] == [1, None]

    other_services, other = empty
    answer = restore(other, data)
    assert answer.status_code == 200, answer.text
    assert answer.json()["images"] == len(before["images"])
    assert answer.json()["tags"] == [{"tag": "cat", "positives": 4, "negatives": 4, "versions": [1, 2], "current": 1},
                                     {"tag": "emptied", "positives": 0, "negatives": 0, "versions": [], "current": None}]
    after = snapshot(other)
    assert after == before  # ids, file names, sha256, dates, labels, versions with thresholds and metrics
    assert next(i for i in after["images"] if i["image_id"] == "extra")["filename"] == "Straße à Paris.jpg"
    assert other.get("/custom/images/extra/original").content == client.get("/custom/images/extra/original").content

    for image_id in ("extra", "cat-0", "rocket-0"):
        mine = client.get(f"/custom/predict/{image_id}").json()["custom"]["cat"]
        theirs = other.get(f"/custom/predict/{image_id}").json()["custom"]["cat"]
        assert theirs["version"] == mine["version"] == 1
        assert abs(theirs["score"] - mine["score"]) <= 1e-6 and theirs["match"] == mine["match"]

    # Trainings on the restored server continue after the highest restored version.
    task = other.post("/custom/train/cat").json()
    run_queued_jobs(other_services)
    assert other.get(f"/status/{task['task_id']}").json()["result"]["version"] == 3


def test_a_restored_version_is_served_not_the_one_deleted_under_its_number(
    client: TestClient, services: Services, empty: Server
) -> None:
    """A server whose own 'cat' v1 had been predicted with, then deleted, restored a backup whose
    'cat' v1 is another model: the head each process keeps was found by its archive's key, which
    the restore reused, and the deleted model went on predicting."""
    taught(client, services)
    other_services, other = empty
    for i, data in enumerate(crops(CAT, 3, seed=1)):  # its own 'cat' v1: the other way round
        add(other, data, f"cat-{i}")
        assert other.get(f"/custom/assign/cat-{i}/negative/cat").status_code == 200
    for name in OTHERS:
        add(other, crops(name, 1, seed=2)[0], f"{name}-0")
        assert other.get(f"/custom/assign/{name}-0/positive/cat").status_code == 200
    other.get("/custom/train/cat")
    run_queued_jobs(other_services)
    ids = [i["image_id"] for i in other.get("/custom/images?limit=500").json()["images"]]

    def scores(server: TestClient) -> dict[str, float]:
        answers = {i: server.get(f"/custom/predict/{i}").json()["custom"]["cat"] for i in ids}
        assert {a["version"] for a in answers.values()} == {1}
        return {i: a["score"] for i, a in answers.items()}

    old = scores(other)  # its own v1, now kept by the process
    assert other.delete("/custom/delete/cat").status_code == 200
    for image_id in ids:
        assert other.delete(f"/custom/images/{image_id}").status_code == 200
    assert restore(other, client.get("/backup").content).status_code == 200
    mine, theirs = scores(client), scores(other)
    assert max(abs(old[i] - mine[i]) for i in ids) > 0.5  # another model under the same number
    assert max(abs(theirs[i] - mine[i]) for i in ids) <= 1e-6


def test_every_file_name_a_server_keeps_restores(client: TestClient, services: Services, empty: Server) -> None:
    """A name with a character removed between a letter and its accent was kept uncomposed, and
    the restore's check that names are as the server keeps them refused every later backup. Names
    an earlier release kept so are restored as kept now."""
    names = {"zwsp": "e\u200b\u0301.jpg", "soft-hyphen": "a\u00ad\u0301.jpg", "jamo": "\u1100\u200b\u1161.jpg"}
    for i, (image_id, name) in enumerate(names.items()):
        client.post(f"/custom/add?image_id={image_id}", files={"data": (name, crops(CAT, 1, seed=i)[0])})
    kept = {row["image_id"]: row["filename"] for row in client.get("/custom/images").json()["images"]}
    assert kept == {"zwsp": "\u00e9.jpg", "soft-hyphen": "\u00e1.jpg", "jamo": "\uac00.jpg"}

    def as_kept_before(found: dict[str, bytes]) -> dict[str, bytes]:  # an earlier release's names
        manifest = json.loads(found["manifest.json"])
        for entry in manifest["images"]:
            entry["filename"] = unicodedata.normalize("NFD", entry["filename"])
        return {**found, "manifest.json": json.dumps(manifest).encode()}

    _, other = empty
    answer = restore(other, repack(client.get("/backup").content, as_kept_before))
    assert answer.status_code == 200, answer.text
    assert {row["image_id"]: row["filename"] for row in other.get("/custom/images").json()["images"]} == kept


def test_restore_into_a_server_that_is_not_empty_is_refused(client: TestClient, services: Services,
                                                             empty: Server) -> None:
    teach_cat(client, services, positives=2, negatives_each=1)
    data = client.get("/backup").content
    before = snapshot(client)
    answer = restore(client, data)
    assert answer.status_code == 409 and answer.json()["error"] == "not_empty", answer.text
    assert "empty server" in answer.json()["message"]
    assert snapshot(client) == before

    _, other = empty  # one image, no tags: not empty either
    add(other, crops(CAT, 1, seed=9)[0], "lonely")
    lonely = snapshot(other)
    refused = restore(other, data)
    assert refused.status_code == 409 and "has 1 image and 0 tags" in refused.json()["message"], refused.text
    assert snapshot(other) == lonely
    mistaken = other.post("/set_state", files={"data": ("backup.tar", data)})  # both are .tar files
    assert mistaken.status_code == 400 and "restores with /restore" in mistaken.json()["message"], mistaken.text
    assert snapshot(other) == lonely


def _first_image(found: dict[str, bytes]) -> str:
    return next(name for name in found if name.startswith("image-"))


def _flip_image_byte(found: dict[str, bytes]) -> dict[str, bytes]:
    name = _first_image(found)
    data = bytearray(found[name])
    data[len(data) // 2] ^= 0xFF
    return {**found, name: bytes(data)}


def _traversal(found: dict[str, bytes]) -> dict[str, bytes]:
    name = _first_image(found)
    manifest = json.loads(found["manifest.json"])
    for image in manifest["images"]:
        if image["member"] == name:
            image["member"] = "../" + name
    rest = {k: v for k, v in found.items() if k not in (name, "manifest.json")}
    return {"../" + name: found[name], **rest, "manifest.json": json.dumps(manifest).encode()}


def _bad_model(found: dict[str, bytes]) -> dict[str, bytes]:
    name = next(name for name in found if name.startswith("model-"))
    return {**found, name: b"not a tar, and certainly not a model" * 20}


def _no_manifest(found: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in found.items() if k != "manifest.json"}


def _object_flood(found: dict[str, bytes]) -> dict[str, bytes]:
    """Millions of empty objects: 2 bytes of JSON each, about 70 in memory (115 MiB held 3.3 GB)."""
    manifest = found["manifest.json"]
    return {**found, "manifest.json": manifest[:-1] + b', "pad": [' + b"{}," * 3_000_000 + b"{}]}"}


@pytest.mark.parametrize(("change", "says"), [
    (_flip_image_byte, "do not match its sha256"),
    (_traversal, "is not allowed"),
    (_bad_model, "Tag 'cat' version 1"),
    (_no_manifest, "no manifest.json"),
    (_object_flood, "opens more objects and lists"),
], ids=["image-bytes-changed", "path-traversal", "invalid-model-archive", "cut-short", "object-flood"])
def test_a_tampered_backup_is_refused_and_changes_nothing(
    client: TestClient, services: Services, empty: Server,
    change: Callable[[dict[str, bytes]], dict[str, bytes]], says: str,
) -> None:
    teach_cat(client, services, positives=2, negatives_each=1)
    data = client.get("/backup").content
    _, other = empty
    answer = restore(other, repack(data, change))
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_backup", answer.text
    assert says in answer.json()["message"]
    assert snapshot(other) == {"images": [], "tags": [], "labels": {}, "versions": {}}
    assert restore(other, data).status_code == 200  # and the genuine backup still restores there


def test_a_failure_midway_leaves_the_server_empty(client: TestClient, services: Services, empty: Server,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    teach_cat(client, services, positives=2, negatives_each=1)
    data = client.get("/backup").content
    other_services, other = empty

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the store broke while the versions were written")

    monkeypatch.setattr(type(other_services.registry), "restore_versions", refuse)
    assert restore(other, data).status_code == 500
    assert snapshot(other) == {"images": [], "tags": [], "labels": {}, "versions": {}}
    monkeypatch.undo()
    assert restore(other, data).status_code == 200
    assert [v["version"] for v in other.get("/custom/versions/cat").json()["versions"]] == [1]


def test_a_second_restore_while_one_runs_is_refused(client: TestClient, services: Services, empty: Server,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two restores at once would interleave, and the one that failed would remove the other's work."""
    taught(client, services)
    data = client.get("/backup").content
    other_services, other = empty
    midway, go_on = threading.Event(), threading.Event()
    add_image = images.add_image

    def held_midway(*args: Any, **kwargs: Any) -> Any:  # validated, nothing added yet: the server is still empty
        midway.set()
        assert go_on.wait(60)
        return add_image(*args, **kwargs)

    monkeypatch.setattr(images, "add_image", held_midway)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(restore, other, data)
        assert midway.wait(60)
        second = restore(other, data)
        go_on.set()
        assert first.result().status_code == 200, first.result().text
    assert second.status_code == 409 and second.json()["error"] == "restore_in_progress", second.text
    assert snapshot(other) == snapshot(client)
    third = restore(other, data)  # the lease was given back: refused only because the server is full now
    assert third.status_code == 409 and third.json()["error"] == "not_empty", third.text


def test_an_upload_still_coming_does_not_hold_off_another_restore(client: TestClient, services: Services, empty: Server,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The restore was claimed before its upload was read: one trickling in at the minimum rate (a
    4 GiB upload for days) refused every other restore with 409 as long as it lasted."""
    taught(client, services)
    data = client.get("/backup").content
    _, other = empty
    arriving, go_on = threading.Event(), threading.Event()
    read_upload_to_file = state.read_upload_to_file

    async def slow_first(*args: Any) -> str:  # the first upload arrives only when told to
        if not arriving.is_set():
            arriving.set()
            await anyio.to_thread.run_sync(go_on.wait, 60)
        return await read_upload_to_file(*args)

    monkeypatch.setattr(state, "read_upload_to_file", slow_first)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(restore, other, data)
        assert arriving.wait(60)
        assert restore(other, data).status_code == 200  # the one whose upload came restores
        go_on.set()
        late = slow.result()
    assert late.status_code == 409 and late.json()["error"] == "not_empty", late.text
    assert snapshot(other) == snapshot(client)


def restore_held_midway(client: TestClient, data: bytes, monkeypatch: pytest.MonkeyPatch,
                        meanwhile: Callable[[], None]) -> Any:
    """Restore ``data``, running ``meanwhile`` once the backup is validated and before its first
    image is added; the restore's answer."""
    add_image, done = images.add_image, []

    def held(*args: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(None)
            meanwhile()
        return add_image(*args, **kwargs)

    monkeypatch.setattr(images, "add_image", held)
    answer = restore(client, data)
    monkeypatch.undo()
    return answer


def test_writes_while_a_restore_runs_are_refused_and_reads_go_on(client: TestClient, services: Services,
                                                                 empty: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes sent during a restore were merged into it, and a tag made then lost its archives to
    the restore's step for that tag (its pointer then named a removed archive)."""
    taught(client, services)
    data = client.get("/backup").content
    other_services, other = empty
    answers: dict[str, Any] = {}

    def meanwhile() -> None:
        photo = crops(CAT, 1, seed=20)[0]
        answers["add"] = other.post("/custom/add?image_id=late", files={"data": ("late.jpg", photo)})
        answers["load"] = other.post("/set_state", files={"data": ("s.tar", client.get("/get_state").content)})
        answers["assign"] = other.get("/custom/assign/late/positive/dog")
        answers["tags"] = other.get("/custom/tags")
        answers["predict"] = other.post("/predict/custom", files={"data": ("p.jpg", photo)})

    assert restore_held_midway(other, data, monkeypatch, meanwhile).status_code == 200
    for name in ("add", "load", "assign"):
        assert answers[name].status_code == 409 and answers[name].json()["error"] == "restore_in_progress", name
    assert answers["tags"].status_code == 200 and answers["predict"].status_code == 200
    assert snapshot(other) == snapshot(client)  # nothing merged in
    assert other.post("/custom/add?image_id=late", files={"data": ("late.jpg", crops(CAT, 1, seed=20)[0])}).status_code == 201


def test_a_tag_made_during_a_restore_is_kept_and_the_restore_undone(client: TestClient, services: Services,
                                                                    empty: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that began before the restore and lands in it (past the refusal above): the restore
    stops at that tag instead of removing its archives, and removes only what it added."""
    taught(client, services)
    data = client.get("/backup").content
    other_services, other = empty
    add_image = images.add_image

    def meanwhile() -> None:
        add_image(other_services, crops(CAT, 1, seed=20)[0], "late", "late.jpg")
        labels.assign(other_services, "late", "cat", "positive")

    refused = restore_held_midway(other, data, monkeypatch, meanwhile)
    assert refused.status_code == 409 and refused.json()["error"] == "not_empty", refused.text
    assert "'cat' was made while" in refused.json()["message"]
    assert [i["image_id"] for i in other.get("/custom/images").json()["images"]] == ["late"]
    assert other.get("/custom/tags/cat").json()["positives"] == ["late"]


def test_a_model_being_loaded_when_a_restore_reaches_its_tag_stops_the_restore(
    client: TestClient, services: Services, empty: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A /set_state that began before the restore had stored its archive and not yet published it:
    the restore removed that archive and reset the tag's version numbers, and the load then published
    a pointer to a removed archive, or to the backup's model under the load's number."""
    from shared.domain import catalog
    from tests.support.api import record

    taught(client, services)
    data = client.get("/backup").content
    other_services, other = empty
    stored: list[str] = []

    def meanwhile() -> None:
        stored.append(catalog.save_version(other_services, record("cat")).key)  # its publication comes later

    refused = restore_held_midway(other, data, monkeypatch, meanwhile)
    assert refused.status_code == 409 and refused.json()["error"] == "not_empty", refused.text
    assert other_services.store.exists(stored[0])  # the load's archive is still there to publish


def test_a_restore_that_loses_its_lease_stops_and_removes_nothing(client: TestClient, services: Services,
                                                                  empty: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once its lease lapsed another restore may hold the server: undoing would remove its work."""
    taught(client, services)
    data = client.get("/backup").content
    other_services, other = empty
    monkeypatch.setattr(backup, "RESTORE_LEASE_SECONDS", 1)  # renewed every third of a second
    add_image, added = images.add_image, []

    def lease_lapses(*args: Any, **kwargs: Any) -> Any:
        added.append(add_image(*args, **kwargs))
        if len(added) == 2:  # Redis lost the lease (a failover), and the renewal finds it gone
            other_services.redis.delete(f"{other_services.settings.key_prefix}:lease:restore")
            time.sleep(1.0)
        return added[-1]

    monkeypatch.setattr(images, "add_image", lease_lapses)
    answer = restore(other, data)
    assert answer.status_code == 409 and answer.json()["error"] == "restore_interrupted", answer.text
    assert {i["image_id"] for i in other.get("/custom/images").json()["images"]} == {a["image_id"] for a in added}
    monkeypatch.undo()
    again = restore(other, data)  # its journal says what it added: removed first, then restored whole
    assert again.status_code == 200, again.text
    assert snapshot(other) == snapshot(client)


def killed_after(client: TestClient, data: bytes, images_added: int, monkeypatch: pytest.MonkeyPatch,
                 registry: Registry | None = None) -> None:
    """A restore of ``data`` whose process is killed after adding ``images_added`` images: it
    stops there and nothing of it is undone (its journal stays). With ``registry``, it dies while it
    adds the next one: that image's id stays reserved, as a killed add leaves it."""
    add_image, calls = images.add_image, []

    def dies(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) > images_added:
            if registry is not None:
                registry.reserve_image(args[2], *[kwargs[k] for k in ("holder",) if k in kwargs])
            raise RuntimeError("the process was killed here")
        return add_image(*args, **kwargs)

    monkeypatch.setattr(images, "add_image", dies)
    monkeypatch.setattr(backup, "_undo", lambda *args: False)  # a killed process undoes nothing
    assert restore(client, data).status_code == 500
    monkeypatch.undo()


def test_a_restore_cut_short_by_a_crash_is_undone_by_the_next_one(client: TestClient, services: Services,
                                                                  empty: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore killed midway (no undo ran) left a half-restored server that every later restore
    refused as not empty; now the next restore removes what the journal names, and only that."""
    taught(client, services)
    data = client.get("/backup").content
    other_services, other = empty
    killed_after(other, data, 2, monkeypatch)
    assert len(other.get("/custom/images").json()["images"]) == 2
    leftovers = {i["image_id"] for i in other.get("/custom/images").json()["images"]}
    mine = add(other, crops(CAT, 1, seed=11)[0], "mine")  # a user's own image, added after the crash
    refused = restore(other, data)  # not only the journal's: nothing is removed
    assert refused.status_code == 409 and refused.json()["error"] == "not_empty", refused.text
    assert "unfinished restore" in refused.json()["message"]
    assert {i["image_id"] for i in other.get("/custom/images").json()["images"]} == leftovers | {mine}
    assert other.delete(f"/custom/images/{mine}").status_code == 200
    assert restore(other, data).status_code == 200  # only the journal's now: removed, then restored whole
    assert snapshot(other) == snapshot(client)


def test_a_restore_killed_while_it_added_an_image_is_restored_again_at_once(
        client: TestClient, services: Services, empty: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The add a killed restore died in kept its id reserved for two minutes past the restore's
    lease: restoring again was refused ("being added right now") and undid what it had restored."""
    taught(client, services)
    data = client.get("/backup").content
    other_services, other = empty
    killed_after(other, data, 2, monkeypatch, other_services.registry)
    again = restore(other, data)
    assert again.status_code == 200, again.text
    assert snapshot(other) == snapshot(client)


def test_an_image_made_again_under_a_journalled_id_is_the_users(client: TestClient, services: Services,
                                                                empty: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal of a restore cut short named an id; the user deleted that image and added their
    own under the same id: a later restore must not take it for the old restore's and remove it."""
    taught(client, services)
    data = client.get("/backup").content
    other_services, other = empty
    killed_after(other, data, 1, monkeypatch)
    [leftover] = [i["image_id"] for i in other.get("/custom/images").json()["images"]]
    assert other.delete(f"/custom/images/{leftover}").status_code == 200
    own = crops(CAT, 1, seed=12)[0]
    add(other, own, leftover)
    refused = restore(other, data)
    assert refused.status_code == 409 and refused.json()["error"] == "not_empty", refused.text
    assert other.get(f"/custom/images/{leftover}/original").content == own


def test_a_restore_lease_lapses_when_its_process_dies(services: Services) -> None:
    registry = services.registry
    assert registry.claim_lease("restore", "crashed", 1)
    assert not registry.claim_lease("restore", "next", 60)
    assert not registry.renew_lease("restore", "next", 60)  # only the holder renews it
    time.sleep(1.5)  # the crashed restore renewed nothing
    assert registry.claim_lease("restore", "next", 60)
    registry.release_lease("restore", "crashed")  # a late release by the old holder leaves the new lease alone
    assert not registry.claim_lease("restore", "third", 60)
    registry.release_lease("restore", "next")
    assert registry.claim_lease("restore", "third", 60)
    registry.release_lease("restore", "third")


def test_cli_backup_and_restore(client: TestClient, services: Services, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """`tagsmith restore` into a fresh `tagsmith serve`, then `tagsmith backup` from it: the same manifest."""
    teach_cat(client, services, positives=2, negatives_each=1)
    original = tmp_path / "backup.tar"
    original.write_bytes(client.get("/backup").content)
    with serving(tmp_path / "served") as server:
        assert main(["restore", str(original), "--url", server.base]) == 0
        out = capsys.readouterr().out
        assert out.strip() == "restored 6 images, 1 tag and 1 model version", out
        copy = tmp_path / "copy.tar"
        assert main(["backup", str(copy), "--url", server.base]) == 0
        assert capsys.readouterr().out.startswith(f"wrote {copy} (")
        assert main(["restore", str(copy), "--url", server.base]) == 1  # not empty any more
        assert "(not_empty)" in capsys.readouterr().err
    first, second = (json.loads(members(p.read_bytes())["manifest.json"]) for p in (original, copy))
    assert first["images"] == second["images"] and first["tags"] == second["tags"]


def test_a_backup_over_the_size_limit_is_refused_with_413(redis_server: RedisServer | RedisContainer,
                                                          tmp_path: Path, backbone: Backbone) -> None:
    services = build_services(settings_for(redis_server.url, tmp_path / "small", max_backup_bytes=100_000), backbone)
    with TestClient(create_gateway(services=services), raise_server_exceptions=False) as small:
        answer = restore(small, b"\0" * 200_000)
        assert answer.status_code == 413 and answer.json()["error"] == "too_large", answer.text
        assert snapshot(small) == {"images": [], "tags": [], "labels": {}, "versions": {}}


def test_a_version_damaged_in_the_store_is_left_out_and_never_blamed_on_the_request(
    client: TestClient, services: Services, empty: Server
) -> None:
    """One stored archive that no longer reads (a disk error, a bucket restored in part) made every
    backup stop after its first bytes, the tag's versions a 400 ``invalid_archive`` and a rollback
    to it a 400, as if the request were at fault."""
    from shared.models.archive import pack
    from shared.models.backbone import LITE0
    from tests.support.api import record

    taught(client, services)  # cat: v1 current, v2 stored
    services.store.put(model_key("cat", 3), pack([record("cat"), record("dog")], LITE0))  # two models in one
    services.store.put(model_key("cat", 2), b"damaged")
    versions = client.get("/custom/versions/cat")
    assert versions.status_code == 200 and [v["version"] for v in versions.json()["versions"]] == [1]
    rollback = client.post("/custom/rollback/cat/2")
    assert rollback.status_code == 500 and rollback.json()["error"] == "damaged_version"
    assert "tag 'cat'" in rollback.json()["message"]
    other_services, other = empty
    assert restore(other, client.get("/backup").content).status_code == 200  # whole, without v2
    assert [v["version"] for v in other.get("/custom/versions/cat").json()["versions"]] == [1]
    services.store.put(model_key("cat", 1), b"damaged")  # the current one
    exported = client.get("/get_state?tag=cat")
    assert exported.status_code == 500 and exported.json()["error"] == "damaged_version"
    assert client.post("/set_state", files={"data": ("s.tar", pack([record("dog")], LITE0))}).status_code == 200
    every = client.get("/get_state")  # every tag: the damaged one left out, as predictions leave it out
    assert every.status_code == 200 and "dog" in str(members(every.content)["manifest.json"])
    assert "cat" not in str(members(every.content)["manifest.json"])
    task = client.post("/custom/train/cat").json()
    run_queued_jobs(services)
    status = client.get(f"/status/{task['task_id']}").json()
    assert status["status"] == "finished" and status["result"]["version"] == 3  # trained anew, not stuck
    assert client.get("/get_state?tag=cat").status_code == 200


def test_lowering_the_tag_length_limit_strands_no_tag_that_exists(
    client: TestClient, services: Services, backbone: Backbone
) -> None:
    """The limit is for tags made from now on: with it lowered, a longer tag that exists was still
    listed but could not be named in a path (400 ``invalid_tag``: not deleted, versions, assigned)
    and every backup ended empty, as its stored archive no longer passed the new limit."""
    long_tag = "a rather long tag name of forty letters!"
    for i, (kind, data) in enumerate([("positive", d) for d in crops(CAT, 2, seed=1)] +
                                     [("negative", crops(name, 1, seed=2)[0]) for name in OTHERS[:2]]):
        add(client, data, f"img-{i}")
        assert client.get(f"/custom/assign/img-{i}/{kind}/{long_tag}").status_code == 200
    client.get(f"/custom/train/{long_tag}")
    run_queued_jobs(services)
    lowered = build_services(services.settings.model_copy(update={"max_tag_length": 32}), backbone)
    with TestClient(create_gateway(services=lowered), raise_server_exceptions=False) as after:
        assert after.get(f"/custom/versions/{long_tag}").json()["current"] == 1
        assert after.post("/predict/custom", files={"data": ("c.jpg", crops(CAT, 1, seed=9)[0])}).json()["custom"][long_tag]
        assert after.get(f"/custom/images?tag={long_tag}").status_code == 200
        assert members(after.get("/backup").content)  # whole: the tag's archive reads
        exported = after.get(f"/get_state?tag={long_tag}")
        assert exported.status_code == 200
        assert after.post("/set_state", files={"data": ("s.tar", exported.content)}).status_code == 200  # loads back
        from shared.models.archive import pack
        from shared.models.backbone import LITE0
        from tests.support.api import record

        new = after.post("/set_state", files={"data": ("s.tar", pack([record("c" * 40)], LITE0))})
        assert new.status_code == 400 and "32 characters" in new.json()["message"]  # a new tag meets it
        refused = after.get("/custom/assign/img-0/positive/" + "b" * 40)
        assert refused.status_code == 400 and "32 characters" in refused.json()["message"]  # new tags meet it
        assert after.delete(f"/custom/delete/{long_tag}").status_code == 200


def test_backups_streamed_at_once_are_bounded(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each backup holds its plan (about 1 KB an image) for as long as its client reads: a hundred
    slow ones at 100,000 images would have held 10 GB. Beyond ``BACKUPS_AT_ONCE`` a backup gets 503
    ``busy``; each gives its place back when it ends."""
    from shared.web import app as app_module

    monkeypatch.setattr(app_module, "BACKUPS_AT_ONCE", 1)
    started, go_on = threading.Event(), threading.Event()
    stream_backup = backup.stream_backup

    def held(*args: Any) -> Iterator[bytes]:
        started.set()
        assert go_on.wait(60)
        yield from stream_backup(*args)

    monkeypatch.setattr(backup, "stream_backup", held)
    with TestClient(create_gateway(services=services), raise_server_exceptions=False) as client, \
            ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.get, "/backup")
        assert started.wait(60)
        second = client.get("/backup")
        assert second.status_code == 503 and second.json()["error"] == "busy"
        go_on.set()
        assert first.result().status_code == 200 and members(first.result().content)
        assert client.get("/backup").status_code == 200  # its place was given back


def test_a_write_whose_body_came_while_a_restore_began_is_refused(client: TestClient, services: Services) -> None:
    """A body begun before a restore and trickling in (at the minimum rate, minutes) passed the
    check made on its headers and landed in the restore; one that took over a second is checked
    again once it has come."""
    import uuid

    photo = crops(CAT, 1, seed=60)[0]
    boundary = "b0undary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="late.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()

    begun, claimed = threading.Event(), threading.Event()

    def trickling() -> Iterator[bytes]:  # read by the app's event loop
        yield body[:100]
        begun.set()
        assert claimed.wait(30)
        time.sleep(1.2)
        yield body[100:]

    def restore_begins() -> None:  # meanwhile, in another process as far as the request can tell
        assert begun.wait(30)
        assert services.registry.claim_lease("restore", uuid.uuid4().hex, 30)
        claimed.set()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(restore_begins)
        answer = client.post("/custom/add?image_id=late", content=trickling(),
                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert answer.status_code == 409 and answer.json()["error"] == "restore_in_progress", answer.text
    assert not services.registry.image_exists("late")


def test_a_restored_empty_tag_counts_against_the_tag_limit(services: Services) -> None:
    """A backup's tag with no examples left is listed with a plain add, which had passed
    TAGSMITH_MAX_TAGS when tags were made while the restore ran."""
    from shared.core.errors import Conflict

    registry = services.registry
    registry.add_tag("a", 2)
    registry.add_tag("b", 2)
    registry.add_tag("a", 2)  # listed already: nothing new
    with pytest.raises(Conflict) as refused:
        registry.add_tag("c", 2)
    assert refused.value.code == "too_many_tags" and registry.tags() == ["a", "b"]
