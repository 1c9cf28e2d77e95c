"""State archives: round trip, and every hostile archive refused before anything changes."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import json
import pickle  # only to build a hostile payload; tagsmith never unpickles
import tarfile

import numpy as np
import pytest
from safetensors.numpy import save as save_tensors
from starlette.testclient import TestClient

from shared.core.errors import DomainError, InvalidInput
from shared.domain.services import Services
from shared.models.archive import CONTAINERS_PER_MODEL, ArchiveLimits, check_extended_headers, pack, unpack
from shared.models.backbone import LITE0
from shared.web.errors import status_of
from tests.support.api import record, teach_cat
from tests.support.photos import CAT, OTHERS, crops

LIMITS = ArchiveLimits(max_bytes=1_000_000, max_members=10)
D = LITE0.embedding_size + LITE0.style_size


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def manifest(files: list[str], **overrides: object) -> bytes:
    body = {
        "format": "tagsmith-state", "format_version": 2, "backbone": LITE0.id,
        "embedding_size": LITE0.embedding_size, "style_size": LITE0.style_size,
        "models": [{"tag": f"t{i}", "version": 1, "threshold": 0.5, "file": f} for i, f in enumerate(files)],
    }
    body.update(overrides)
    return json.dumps(body).encode()


def weights(shape: tuple[int, ...] = (D,), value: float = 0.1) -> bytes:
    return save_tensors({"weight": np.full(shape, value, np.float32), "bias": np.zeros(1, np.float32)})


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = link
    return member


def good_archive() -> bytes:
    return pack([record("cat"), record("vintage look")], LITE0)


def hostile_archives() -> dict[str, bytes]:
    ok = weights()
    return {
        "not-a-tar": b"hello, this is not a tar file at all" * 20,
        "gzip-bomb": gzip.compress(b"\0" * 5_000_000),
        "truncated": good_archive()[:1500],
        "traversal": tar_of([(info("manifest.json"), manifest(["../evil"])), (info("../evil"), ok)]),
        "absolute": tar_of([(info("manifest.json"), manifest(["/etc/evil"])), (info("/etc/evil"), ok)]),
        "symlink": tar_of([(info("manifest.json"), manifest(["w"])), (info("w", tarfile.SYMTYPE, "/etc/passwd"), None)]),
        "hardlink": tar_of([(info("manifest.json"), manifest(["w"])), (info("w", tarfile.LNKTYPE, "manifest.json"), None)]),
        "device": tar_of([(info("manifest.json"), manifest(["w"])), (info("w", tarfile.CHRTYPE), None)]),
        "directory": tar_of([(info("manifest.json"), manifest([])), (info("dir", tarfile.DIRTYPE), None)]),
        "duplicate": tar_of([(info("manifest.json"), manifest(["w"])), (info("w"), ok), (info("w"), ok)]),
        "pickle-as-weights": tar_of([(info("manifest.json"), manifest(["w"])),
                                     (info("w"), pickle.dumps({"weight": [0.0] * D}))]),
        "wrong-shape": tar_of([(info("manifest.json"), manifest(["w"])), (info("w"), weights((D + 1,)))]),
        "v1-shape-in-v2": tar_of([(info("manifest.json"), manifest(["w"])), (info("w"), weights((LITE0.embedding_size,)))]),
        "unknown-form": tar_of([(info("manifest.json"), manifest(["w"], models=[
            {"tag": "x", "version": 1, "threshold": 0.5, "file": "w", "form": "magic"}])), (info("w"), ok)]),
        "nan-weights": tar_of([(info("manifest.json"), manifest(["w"])), (info("w"), weights(value=float("nan")))]),
        "other-backbone": tar_of([(info("manifest.json"), manifest(["w"], backbone="clip-vit-b32")), (info("w"), ok)]),
        "newer-format": tar_of([(info("manifest.json"), manifest(["w"], format_version=99)), (info("w"), ok)]),
        "no-manifest": tar_of([(info("w"), ok)]),
        "bad-json": tar_of([(info("manifest.json"), b"{not json")]),
        "missing-member": tar_of([(info("manifest.json"), manifest(["w"]))]),
        "unreferenced": tar_of([(info("manifest.json"), manifest(["w"])), (info("w"), ok), (info("extra"), ok)]),
        "bad-tag": tar_of([(info("manifest.json"), manifest(["w"], models=[
            {"tag": "../x", "version": 1, "threshold": 0.5, "file": "w"}])), (info("w"), ok)]),
        "bad-threshold": tar_of([(info("manifest.json"), manifest(["w"], models=[
            {"tag": "x", "version": 1, "threshold": 7, "file": "w"}])), (info("w"), ok)]),
        "too-many-members": tar_of([(info("manifest.json"), manifest([]))] + [(info(f"m{i}"), b"x") for i in range(12)]),
        "oversized": tar_of([(info("manifest.json"), manifest(["w"])), (info("w"), b"\0" * 1_100_000)]),
        "tar-bomb-header": tar_bomb_header(),
        "tar-bomb-gzipped": gzip.compress(tar_of([(info("manifest.json"), manifest(["w"])),
                                                  (info("w"), b"\0" * 20_000_000)]), 9),
        "nested-path": tar_of([(info("manifest.json"), manifest(["a/w"])), (info("a/w"), ok)]),
        "infinite-weights": tar_of([(info("manifest.json"), manifest(["w"])), (info("w"), weights(value=float("inf")))]),
        "duplicate-manifest": tar_of([(info("manifest.json"), manifest(["w"])), (info("manifest.json"), manifest([])),
                                      (info("w"), ok)]),
        # A lone surrogate is valid JSON but no UTF-8: once loaded, every listing of the tag was a 500.
        "surrogate-date": tar_of([(info("manifest.json"), manifest(["w"], models=[
            {"tag": "x", "version": 1, "threshold": 0.5, "file": "w", "trained_at": "\ud800"}])), (info("w"), ok)]),
        "surrogate-tag": tar_of([(info("manifest.json"), manifest(["w"], models=[
            {"tag": "\ud800", "version": 1, "threshold": 0.5, "file": "w"}])), (info("w"), ok)]),
        "deep-manifest": tar_of([(info("manifest.json"), b'{"format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")]),
        "overflowing-weights": tar_of([(info("manifest.json"), manifest(["w"])), (info("w"), weights(value=1e38))]),
        "pax-bomb": pax_bomb(),
        "huge-date": tar_of([(info("manifest.json"), manifest(["w"], models=[
            {"tag": "x", "version": 1, "threshold": 0.5, "file": "w", "trained_at": "2026" * 100_000}])), (info("w"), ok)]),
        "list-form": tar_of([(info("manifest.json"), manifest(["w"], models=[
            {"tag": "x", "version": 1, "threshold": 0.5, "file": "w", "form": []}])), (info("w"), ok)]),
        "huge-integer": tar_of([(info("manifest.json"), b'{"format": "tagsmith-state", "n": ' + b"9" * 5000 + b"}")]),
        "list-tag": tar_of([(info("manifest.json"), manifest(["w"], models=[
            {"tag": ["a"], "version": 1, "threshold": 0.5, "file": "w"}])), (info("w"), ok)]),
        "huge-metrics": tar_of([(info("manifest.json"), manifest(["w"], models=[
            {"tag": "x", "version": 1, "threshold": 0.5, "file": "w", "metrics": {"notes": "x" * 100_000}}])),
            (info("w"), ok)]),
        "pax-size-desync": pax_size_desync(),
        # Versions and metrics that load but that every later read of the tag trips on (500s, or
        # an archive the server stored and then refuses to read back).
        "version-2-to-the-63": with_model(ok, version=2**63),
        "version-near-doubles-end": with_model(ok, version=2**53 - 1),  # the next training never became current
        "version-beyond-64-bits": with_model(ok, version=2**64),
        "text-count": with_model(ok, metrics={"positives": "many", "negatives": 3}),
        "list-count": with_model(ok, metrics={"positives": [3]}),
        "infinite-score": with_model(ok, metrics={"roc_auc": "INF"}).replace(b'"INF"', b"1e999"),
        "nan-score": with_model(ok, metrics={"f1": "NAN"}).replace(b'"NAN"', b"NaN"),
        "most-wrong-without-type": with_model(ok, metrics={"most_wrong": [{"image_id": "a", "score": 0.9}]}),
        # Nested 253 deep, the metrics encoded alone but not inside an answer: every tag listing was a 500.
        "deep-metrics": with_model(ok, metrics={"notes": functools.reduce(lambda x, _: [x], range(253), 1)}),
        "boolean-threshold": with_model(ok, threshold=True),
        # 2 bytes of JSON each, about 70 in memory: eight such uploads at once held 2.9 GB.
        "object-flood": tar_of([(info("manifest.json"), manifest(["w"])[:-1] + b', "pad": [' + b"{}," * 2_000_000
                                 + b"{}]}"), (info("w"), ok)]),
        "nul-date": with_model(ok, trained_at="\u0000"),
        "not-a-date": with_model(ok, trained_at="yesterday, after lunch"),
    }


def with_model(weights_bytes: bytes, **entry: object) -> bytes:
    """An archive of one model whose manifest entry has ``entry``'s fields."""
    model = {"tag": "x", "version": 1, "threshold": 0.5, "file": "w", **entry}
    return tar_of([(info("manifest.json"), manifest(["w"], models=[model])), (info("w"), weights_bytes)])


def pax_size_desync() -> bytes:
    """A member whose PAX "size" record (0) disagrees with its header's size field, which covers a
    100 KB GNU long name: a walk by the header fields skips that name, tarfile reads it (and a PAX
    header hidden there would reach tarfile's quadratic parser)."""
    hidden = info("x", tarfile.GNUTYPE_LONGNAME)
    hidden.size = 100_000
    region = hidden.tobuf(tarfile.USTAR_FORMAT) + b"A" * 100_000 + b"\0" * (-100_000 % 512)
    region += info("manifest.json").tobuf(tarfile.USTAR_FORMAT)
    cover = info("cover")
    cover.size = len(region)
    cover.pax_headers = {"size": "0"}
    return cover.tobuf(tarfile.PAX_FORMAT) + region + b"\0" * 1024


def pax_bomb() -> bytes:
    """A 100 KB extended (PAX) header of digits: Python's tarfile before 3.11.10 parses it in
    quadratic time (CVE-2024-6232; 17 s of a server's CPU, every other request waiting)."""
    header = info("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    return tar_of([(header, b"1" * 100_000), (info("manifest.json"), manifest([]))])


def tar_bomb_header() -> bytes:
    """A member whose header claims 8 GB, followed by almost nothing."""
    member = info("w")
    member.size = 8 * 1024**3
    header = member.tobuf(format=tarfile.GNU_FORMAT)
    return tar_of([(info("manifest.json"), manifest(["w"]))])[:-1024] + header + b"\0" * 4096


@pytest.mark.parametrize("steering", ["pax-size", "global-pax", "symlink-with-data"])
def test_the_header_walk_refuses_what_would_make_tarfile_read_elsewhere(steering: str) -> None:
    """The walk that bounds extended headers must see every header tarfile parses: a member whose
    data tarfile reads at another length than its size field says could hide one from it."""
    if steering == "pax-size":
        data = pax_size_desync()
    else:
        member = info("cover", tarfile.XGLTYPE if steering == "global-pax" else tarfile.SYMTYPE, link="w")
        member.size = 1024  # tarfile skips no data after a link
        data = member.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024 + tar_of([(info("manifest.json"), manifest([]))])
    with pytest.raises(InvalidInput):
        check_extended_headers(io.BytesIO(data))


def test_versions_an_earlier_release_stored_still_read() -> None:
    """Uploads are checked more strictly than before; what the store already holds must still
    read, or every prediction would fail on it."""
    earlier = dataclasses.replace(record("cat"), metrics={"roc_auc": float("nan"), "positives": 3.0, "note": "x",
                                                         "origin": {"version": 2**62}})
    data = pack([earlier], LITE0)
    with pytest.raises(InvalidInput):
        unpack(data, LITE0, LIMITS)  # as an upload
    (read,) = unpack(data, LITE0, LIMITS, stored=True)
    assert read.metrics["positives"] == 3.0 and read.metrics["origin"] == {"version": 2**62}
    # What later checks of uploads refuse (a free-text date, a boolean threshold, metrics opening
    # many lists, nested deep) was stored by earlier releases, or by a load of many models at once.
    for earlier in (dataclasses.replace(record("cat"), trained_at="2024-05-01 12:00 UTC"),
                    dataclasses.replace(record("cat"), threshold=True),
                    dataclasses.replace(record("cat"), metrics={"per_fold": [[0.5]] * 2000}),
                    dataclasses.replace(record("cat"), metrics={"notes": functools.reduce(lambda x, _: [x], range(20), 1)})):
        data = pack([earlier], LITE0)
        with pytest.raises(InvalidInput):
            unpack(data, LITE0, LIMITS)
        (read,) = unpack(data, LITE0, LIMITS, stored=True)
        assert read.tag == "cat"


def test_round_trip_keeps_every_field() -> None:
    records = unpack(good_archive(), LITE0, LIMITS)
    assert [r.tag for r in records] == ["cat", "vintage look"]
    assert records[0].threshold == 0.4 and records[0].version == 3 and records[0].metrics == {"roc_auc": 0.9}
    np.testing.assert_array_equal(records[0].head.weight, record().head.weight)
    assert records[0].head.bias == 0.25


def test_version_1_archives_load_as_semantic_heads() -> None:
    semantic = np.linspace(-1, 1, LITE0.embedding_size, dtype=np.float32)
    v1 = manifest(["w"], format_version=1, style_size=None)
    archive = tar_of([(info("manifest.json"), v1),
                      (info("w"), save_tensors({"weight": semantic, "bias": np.array([0.5], np.float32)}))])
    (loaded,) = unpack(archive, LITE0, LIMITS)
    assert loaded.form == "semantic"
    np.testing.assert_array_equal(loaded.head.weight[: LITE0.embedding_size], semantic)
    assert not loaded.head.weight[LITE0.embedding_size :].any()


def test_member_names_never_come_from_tags() -> None:
    with tarfile.open(fileobj=io.BytesIO(good_archive())) as tar:
        assert tar.getnames() == ["manifest.json", "model-00000.safetensors", "model-00001.safetensors"]


@pytest.mark.parametrize("name", list(hostile_archives()))
def test_hostile_archive_is_refused(name: str) -> None:
    with pytest.raises(DomainError) as refused:
        unpack(hostile_archives()[name], LITE0, LIMITS)
    assert status_of(refused.value) in (400, 413)
    assert refused.value.message and refused.value.message.count("Model entry") <= 1  # said once, not nested


@pytest.mark.parametrize("other", ["jpeg", "png", "zip"])
def test_a_file_that_is_not_a_tar_is_called_so(other: str) -> None:
    """A JPEG sent as a state archive was refused as having "a member of tar type b'2'"."""
    data = {"jpeg": crops(CAT, 1, seed=1)[0], "png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
            "zip": b"PK\x03\x04" + b"\x14\x00" * 300}[other]
    with pytest.raises(DomainError) as refused:
        unpack(data, LITE0, LIMITS)
    assert refused.value.code == "invalid_archive" and refused.value.message == "The file is not a tar archive."


def test_hostile_archives_change_nothing_served(client: TestClient) -> None:
    assert client.post("/set_state", files={"data": ("s.tar", good_archive())}).status_code == 200
    probes = [crops(name, 1, seed=5)[0] for name in (CAT, *OTHERS[:2])]

    def served() -> tuple[bytes, list[object], object]:
        predictions = [client.post("/predict/custom", files={"data": ("p.jpg", p)}).json() for p in probes]
        return client.get("/get_state").content, predictions, client.get("/custom/tags").json()

    before = served()
    assert set(before[1][0]["custom"]) == {"cat", "vintage look"}  # type: ignore[index]
    archives = hostile_archives()
    for name, data in archives.items():
        response = client.post("/set_state", files={"data": ("s.tar", data)})
        assert response.status_code in (400, 413), (name, response.text)
        assert response.json()["error"] in ("invalid_archive", "archive_too_large", "too_large"), name
    after = served()
    print(f"\nhostile archives: {len(archives)} refused; models, predictions and tags equal before and after: "
          f"{after == before}")
    assert after == before


def test_a_trained_models_manifest_entry_is_far_within_the_containers_allowed(
    client: TestClient, services: Services
) -> None:
    """The bound on a manifest's objects and lists (checked before parsing) must never refuse what
    a server writes: a training's entry, its metrics and most_wrong included."""
    teach_cat(client, services, positives=4, negatives_each=2)
    with tarfile.open(fileobj=io.BytesIO(client.get("/get_state").content)) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        raw = member.read()
    per_model = (raw.count(b"{") + raw.count(b"[")) / len(json.loads(raw)["models"])
    assert per_model <= CONTAINERS_PER_MODEL / 2, per_model


def test_what_a_load_of_many_models_stores_reads_back_as_an_upload() -> None:
    """A load's bound on the objects and lists it opens is pooled over its models, but each model is
    stored alone and a backup brings it back as an upload: one model's metrics were let through with
    2,000 lists, and the backup of them was refused."""
    heavy = dataclasses.replace(record("heavy"), metrics={"per_fold": [[0.5]] * 1100})
    many = [record(f"t{i}") for i in range(8)]
    with pytest.raises(InvalidInput, match="more than 1024 lists and objects"):
        unpack(pack([*many, heavy], LITE0), LITE0, LIMITS)
    within = dataclasses.replace(record("heavy"), metrics={"per_fold": [[0.5]] * 1000})
    loaded = unpack(pack([*many, within], LITE0), LITE0, LIMITS)
    (alone,) = unpack(pack([loaded[-1]], LITE0), LITE0, LIMITS)  # as the store keeps it, and a backup brings it
    assert alone.metrics == within.metrics
