"""State archives: round trip, and every hostile archive refused before anything changes."""

from __future__ import annotations

import gzip
import io
import json
import pickle  # only to build a hostile payload; tagsmith never unpickles
import tarfile

import numpy as np
import pytest
from safetensors.numpy import save as save_tensors
from starlette.testclient import TestClient

from shared.core.errors import DomainError
from shared.models.archive import ArchiveLimits, pack, unpack
from shared.models.backbone import LITE0
from shared.web.errors import status_of
from tests.support.api import record
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
    }


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
    assert refused.value.message


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
