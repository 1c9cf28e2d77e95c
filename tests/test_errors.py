"""Bad input gets a clear JSON error with the right status and changes nothing."""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image
from starlette.testclient import TestClient

from shared.core.errors import InvalidInput
from shared.core.names import validate_new_tag, validate_tag
from shared.domain.services import Services
from tests.support.api import add, run_queued_jobs
from tests.support.photos import CAT, crops, encode, photo


def assert_error(response, status: int, code: str | None = None) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["message"]
    if code:
        assert body["error"] == code


def png_bomb() -> bytes:
    """A tiny PNG that claims 20000 x 20000 pixels (400 MP)."""
    return encode(Image.new("1", (20000, 20000)), "PNG", optimize=True)


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"just some text, not an image", 415, "not_an_image"),
        (b"%PDF-1.4 fake", 415, "not_an_image"),
        (b"", 400, "empty_file"),
        (encode(photo(CAT))[:3000], 400, "corrupt_image"),
        (encode(photo(CAT), "PNG")[:5000], 400, "corrupt_image"),
    ],
    ids=["text", "pdf", "empty", "truncated-jpeg", "truncated-png"],
)
def test_bad_uploads_are_refused_and_store_nothing(
    client: TestClient, services: Services, payload: bytes, status: int, code: str
) -> None:
    response = client.post("/custom/add?image_id=bad", files={"data": ("x.jpg", payload, "image/jpeg")})
    assert_error(response, status, code)
    assert not services.registry.image_exists("bad")
    assert list(services.store.list("images/")) == []
    assert_error(client.post("/predict", files={"data": ("x.jpg", payload, "image/jpeg")}), status, code)


def test_uploads_meet_only_the_supported_formats_parsers(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow tries every plugin whose signature an upload matches, and some parse in pure Python (an
    upload of 22 MB that starts like an EPS file took 9-12 s of CPU before its 415): files in other
    formats are refused without any other parser reading them, whichever route takes them."""
    Image.init()
    tried: list[str] = []
    for fmt, (factory, accept) in list(Image.OPEN.items()):
        def recording(*args, fmt=fmt, factory=factory):  # type: ignore[no-untyped-def]
            tried.append(fmt)
            return factory(*args)

        monkeypatch.setitem(Image.OPEN, fmt, (recording, accept))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n" + b"%%Title: x\n" * 1000
    others = {"x.eps": eps, "x.ico": encode(photo(CAT).resize((64, 64)), "ICO"),
              "x.pcx": encode(photo(CAT).resize((64, 64)), "PCX")}
    for name, payload in others.items():
        for route in ("/custom/add?image_id=other", "/predict", "/predict/custom"):
            response = client.post(route, files={"data": (name, payload)})
            assert_error(response, 415, "not_an_image")
            assert "JPEG, PNG" in response.json()["message"]
    assert not services.registry.image_exists("other")
    assert set(tried) <= {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}, tried
    assert client.post("/predict", files={"data": ("x.jpg", encode(photo(CAT)))}).status_code == 200


def test_bad_uploads_among_good_ones_fail_alone(client: TestClient) -> None:
    """Concurrent predictions share batches: a corrupt upload fails its own request only."""
    cat = encode(photo(CAT))
    payloads = [cat, encode(photo(CAT))[:3000], cat, b"not an image", cat, b""] * 2
    with ThreadPoolExecutor(len(payloads)) as pool:
        responses = list(pool.map(lambda p: client.post("/predict", files={"data": ("x.jpg", p, "image/jpeg")}), payloads))
    for payload, response in zip(payloads, responses, strict=True):
        if payload is cat:
            assert response.status_code == 200, response.text
            assert "cat" in {k["name"] for k in response.json()["keywords"]}
        else:
            assert_error(response, 400 if payload != b"not an image" else 415)


def test_decompression_bomb_is_refused(client: TestClient, services: Services) -> None:
    response = client.post("/custom/add?image_id=bomb", files={"data": ("bomb.png", png_bomb(), "image/png")})
    assert_error(response, 413, "too_many_pixels")
    assert not services.registry.image_exists("bomb")


def test_missing_or_wrong_data_field(client: TestClient) -> None:
    photo_bytes = crops(CAT, 1, seed=0)[0]
    assert_error(client.post("/custom/add", files={"image": ("x.jpg", photo_bytes)}), 400, "missing_field")
    assert_error(client.post("/custom/add", data={"data": "not a file"}), 400, "missing_field")
    assert_error(client.post("/custom/add", content=photo_bytes), 400, "missing_field")
    assert_error(client.post("/predict"), 400, "missing_field")


def test_upload_over_the_limit_is_413(client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services.settings, "max_upload_bytes", 10_000)
    for big in (encode(photo(CAT), quality=95), encode(photo(CAT), "PNG")):  # ~50 KB, ~300 KB
        assert len(big) > 40_000
        assert_error(client.post("/custom/add?image_id=big", files={"data": ("x.jpg", big)}), 413, "too_large")
    assert not services.registry.image_exists("big")
    # Refused for its declared length, the answer names the setting that refuses it.
    answer = client.post("/custom/add?image_id=big", files={"data": ("x.png", encode(photo(CAT), "PNG"))})
    assert "(TAGSMITH_MAX_UPLOAD_BYTES is 10000)" in answer.json()["message"], answer.text


@pytest.mark.parametrize(
    "tag",
    ["a%2Fb", "a%5Cb", "%2E%2E", ".hidden", "tab%09tag", "nul%00", "new%0Aline", "%E2%80%8Bzw", " padded", "x" * 65,
     "%E3%85%A4", "%E2%A0%80", "%E1%85%9F", "%F3%A0%84%80", "cat%CD%8F", "cat%EF%B8%8F", "caf%C3%A9%EF%B8%8F",
     "%E7%8C%AB%EF%B8%8F", "z%E2%A0%80z"],
    ids=["slash", "backslash", "dotdot", "leading-dot", "tab", "nul", "newline", "zero-width", "space", "too-long",
         "hangul-filler", "braille-blank", "choseong-filler", "variation-selector-17", "grapheme-joiner",
         "emoji-selector-after-a-letter", "emoji-selector-after-an-accented-letter", "emoji-selector-after-an-ideograph",
         "braille-blank-between-letters"],
)
def test_hostile_tag_names_are_refused(client: TestClient, services: Services, tag: str) -> None:
    client.post("/custom/add?image_id=img", files={"data": ("x.jpg", crops(CAT, 1, seed=0)[0])})
    for response in (
        client.get(f"/custom/assign/img/positive/{tag}"),
        client.get(f"/custom/train/{tag}"),
        client.get(f"/custom/delete/{tag}"),
        client.post(f"/predict/custom/{tag}", files={"data": ("x.jpg", b"x")}),
    ):
        assert response.status_code in (400, 404), response.text  # never served (not a tag), never made
    assert services.registry.tags() == []


@pytest.mark.parametrize(
    ("tag", "says"),
    [("%D1%81at", "mixes Cyrillic and Latin letters"), ("%EF%BD%83%EF%BD%81%EF%BD%94", "use 'cat'"),
     ("%F0%9D%90%9Cat", "use 'cat'"), ("%EF%AC%81sh", "use 'fish'"), ("cat%C2%B2", "use 'cat2'"),
     ("%E2%84%B9", "use 'i'"), ("%EF%BD%B6%EF%BE%80", "use 'カタ'"), ("black-%D1%81at", "The word 'сat' mixes"),
     ("%CE%B1lpha", "mixes Greek and Latin letters"), ("%E0%B8%81%E0%B9%89%E0%B9%89", "stacks combining marks"),
     ("cafe%CC%81%CC%81", "stacks combining marks"), ("ca%CC%80%CC%81%CC%82%CC%83%CC%84t", "stacks combining marks"),
     ("%CC%81", "combining marks with no letter"), ("%CD%85", "combining marks with no letter"),
     ("a%20%CC%81b", "combining marks with no letter")],
    ids=["cyrillic-es", "fullwidth", "mathematical-bold", "ligature", "superscript", "information-without-selector",
         "halfwidth-katakana", "cyrillic-in-second-word", "greek-alpha", "thai-tone-mark-twice", "acute-twice",
         "five-marks-on-a-letter", "lone-acute", "lone-ypogegrammeni", "acute-on-a-space"],
)
def test_tags_that_look_like_other_tags_are_refused(client: TestClient, services: Services, tag: str,
                                                    says: str) -> None:
    """"сat" (Cyrillic es), "ｃａｔ" and "𝐜at" were new tags beside "cat". Compatibility forms
    (which NFKC changes) are refused naming the plain form, and so is a word mixing scripts."""
    client.post("/custom/add?image_id=img", files={"data": ("x.jpg", crops(CAT, 1, seed=0)[0])})
    assert client.get("/custom/assign/img/positive/cat").status_code == 200
    for response in (client.get(f"/custom/assign/img/positive/{tag}"),
                     client.post(f"/custom/add_many?image_id=img2&tag={tag}&type=positive",
                                 files={"data": ("y.jpg", crops(CAT, 1, seed=1)[0])})):
        assert_error(response, 400, "invalid_tag")
        assert says in response.json()["message"], response.json()
    assert client.get(f"/custom/train/{tag}").status_code == 404  # a name no tag has
    assert services.registry.tags() == ["cat"]


def test_a_new_tag_that_looks_like_a_tag_there_is_is_refused(client: TestClient, services: Services) -> None:
    """Words wholly in one script pass the rules above, but "сор" in Cyrillic beside "cop" looked
    like the same tag twice: a new tag with the same Unicode skeleton (UTS #39) as one there is,
    in letters of other scripts, is refused, naming that one; beside other tags, it is a tag like
    any. Within one script such pairs are words of their own ("modem" beside "modern")."""
    client.post("/custom/add?image_id=img", files={"data": ("x.jpg", crops(CAT, 1, seed=0)[0])})
    for tag in ("cop", "AI", "modern", "kir"):
        assert client.get(f"/custom/assign/img/positive/{tag}").status_code == 200
    for tag, twin in (("\u0441\u043e\u0440", "cop"), ("\u0391\u0399", "AI")):
        for response in (client.get(f"/custom/assign/img/negative/{tag}"),
                         client.post(f"/custom/add_many?image_id=img2&tag={tag}&type=positive",
                                     files={"data": ("y.jpg", crops(CAT, 1, seed=1)[0])})):
            assert_error(response, 400, "invalid_tag")
            assert f"looks like the tag '{twin}'" in response.json()["message"]
    for tag in ("modem", "Al", "k\u0131r"):  # the same skeleton in the same script: another word
        assert client.get(f"/custom/assign/img/positive/{tag}").status_code == 200, tag
    assert client.get("/custom/delete/cop").status_code == 200
    assert client.get("/custom/assign/img/positive/\u0441\u043e\u0440").status_code == 200  # alone, a Russian word
    assert client.get("/custom/assign/img/positive/cop").status_code == 400  # now it is the lookalike
    assert client.get("/custom/assign/img/negative/AI").status_code == 200  # tags there are: named as before


def test_a_new_tag_differing_from_one_there_is_only_in_case_is_refused(client: TestClient, services: Services) -> None:
    """"Cat" assigned beside "cat" made a second tag, listed apart, by a slip of the shift key."""
    client.post("/custom/add?image_id=img", files={"data": ("x.jpg", crops(CAT, 1, seed=0)[0])})
    assert client.get("/custom/assign/img/positive/cat").status_code == 200
    for tag in ("Cat", "CAT"):
        response = client.get(f"/custom/assign/img/positive/{tag}")
        assert_error(response, 400, "invalid_tag")
        assert "differs from the tag 'cat', which exists, only in case" in response.json()["message"]
    assert client.get("/custom/assign/img/positive/Cats").status_code == 200  # more than case: another tag
    assert client.get("/custom/assign/img/positive/Maße").status_code == 200
    assert client.get("/custom/assign/img/positive/Masse").status_code == 200  # another word, not another case
    assert_error(client.get("/custom/assign/img/positive/MASSE"), 400, "invalid_tag")
    assert services.registry.tags() == ["Cats", "Masse", "Maße", "cat"]


def test_a_state_archive_makes_no_tag_that_assigning_would_refuse(client: TestClient, services: Services) -> None:
    """``/set_state`` made new tags by any name ``validate_tag`` passed: "сat" beside "cat",
    "cat" with a combining grapheme joiner, fullwidth "ｃａｔ", all listed and predicted, looking alike.
    A tag an archive brings that does not exist yet meets the rules of a new tag; one that exists
    is named as stored."""
    from shared.models.archive import pack
    from shared.models.backbone import LITE0
    from tests.support.api import record

    def load(*tags: str) -> object:
        return client.post("/set_state", files={"data": ("s.tar", pack([record(t) for t in tags], LITE0))})

    assert load("cat", "cop").status_code == 200
    for tags, says in ((("\u0441at",), "mixes Cyrillic and Latin"), (("\u0441\u043e\u0440",), "looks like the tag 'cop'"),
                       (("cat\u034f",), "show as nothing"), (("\uff43\uff41\uff54",), "use 'cat'"),
                       (("AI", "\u0391\u0399"), "look alike"), (("Cop",), "differs from the tag 'cop', which exists, only in case"),
                       (("dog", "Dog"), "differ only in case")):
        response = load(*tags)
        assert_error(response, 400, "invalid_tag")  # type: ignore[arg-type]
        assert says in response.json()["message"], response.json()  # type: ignore[attr-defined]
    assert services.registry.tags() == ["cat", "cop"] and not list(services.store.list("models/AI/"))
    old = "\uff43\uff41\uff54"
    services.registry.assign(add(client, crops(CAT, 1, seed=3)[0], "img"), old, "positive", 0)  # an earlier release's
    assert load(old).status_code == 200  # a tag that exists: named as stored


def test_tags_stored_before_the_lookalike_rules_are_still_named(client: TestClient, services: Services) -> None:
    """The rules are for new tags: a tag an earlier release took (or a backup brings) can still be
    trained, listed, predicted and deleted by its name."""
    for tag in ("\u0441at", "\uff43\uff41\uff54", "\U0001d41cat", "x\u00b2", "cat\ufe0f"):
        with pytest.raises(InvalidInput):
            validate_new_tag(tag)
        assert validate_tag(tag) == tag
    old = "\uff43\uff41\uff54"
    for i, sample_type in enumerate(("positive", "positive", "negative", "negative")):
        add(client, crops(CAT, 1, seed=i)[0], f"img{i}")
        services.registry.assign(f"img{i}", old, sample_type, services.settings.max_tags)  # as an earlier release did
    assert client.get(f"/custom/assign/img0/positive/{old}").status_code == 200  # an existing tag: named as stored
    assert client.get(f"/custom/train/{old}").status_code == 202
    run_queued_jobs(services)
    assert client.post(f"/predict/custom/{old}", files={"data": ("x.jpg", crops(CAT, 1, seed=9)[0])}).status_code == 200
    assert client.get(f"/custom/images?tag={old}").json()["total"] == 4
    assert client.get(f"/custom/delete/{old}").status_code == 200
    assert services.registry.tags() == []


def test_unicode_tags_are_fine(client: TestClient, services: Services) -> None:
    client.post("/custom/add?image_id=img", files={"data": ("x.jpg", crops(CAT, 1, seed=0)[0])})
    tags = ("flat lay – Ünïcode", "rock & roll", "50's", "猫", "a..b", "❤️", "1️⃣ place", "ℹ️", "‼️",
            "\u2809\u2801\u281e\u2800\u2819\u2815\u281b",  # Braille, its blank pattern between words
            "葛\U000e0100飾", "ᠠ\u180bᠡ",  # emoji, a Japanese ideographic variant, a Mongolian spelling
            "café", "naïve", "고양이", "Ελλάδα", "русский", "हिन्दी", "العربية", "עברית", "ქართული", "ภาษาไทย",
            "น้ำ", "ㅋㅋ", "Hawaiʻi", "cat сат",  # Thai's vowel AM and lone Hangul letters, which NFKC changes
            "Tシャツ", "iPhone用", "CD플레이어", "ラーメン", "注音ㄅㄆ", "🈯", "㊗️", "™️",  # scripts UTS #39 lets mix
            "Việt Nam", "שָׁלוֹם", "ก้า",  # two or three combining marks on a letter, or two on two
            "\u0f56\u0fb7\u0fb2\u0f71\u0f74\u0f7e")  # Tibetan "bhrūṃ": three subjoined letters count as letters
    for tag in tags:
        response = client.get(f"/custom/assign/img/positive/{tag}")
        assert response.status_code == 200, response.text
        assert response.json()["tag"] == tag
    assert services.registry.tags() == sorted(tags)


def test_unknown_ids_and_bad_type(client: TestClient, services: Services) -> None:
    assert_error(client.get("/custom/assign/nope/positive/cat"), 404, "unknown_image")
    client.post("/custom/add?image_id=img", files={"data": ("x.jpg", crops(CAT, 1, seed=0)[0])})
    assert_error(client.get("/custom/assign/img/neutral/cat"), 400, "invalid_type")
    assert_error(client.get("/custom/predict/nope"), 404, "unknown_image")
    assert_error(client.get("/custom/predict/cat/nope"), 404, "unknown_image")
    assert_error(client.get("/status/0123456789abcdef"), 404, "unknown_task")
    assert_error(client.get("/status/..%2F..%2Fetc"), 404)
    assert_error(client.post("/custom/add?image_id=../../etc/passwd", files={"data": ("x.jpg", b"x")}), 400,
                 "invalid_image_id")
    assert_error(client.get("/custom/delete/never-seen"), 404, "unknown_tag")
    assert_error(client.post("/predict/custom/never-seen", files={"data": ("x.jpg", b"x")}), 404, "unknown_tag")
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_error(client.delete("/custom/add"), 405, "method_not_allowed")
    assert client.get("/predict").json()["message"] == "This route does not take GET; it takes POST."
    both = client.put("/custom/images/img")  # one route for GET, another for DELETE: both are named
    assert both.json()["message"] == "This route does not take PUT; it takes DELETE or GET or HEAD."
    assert both.headers["allow"] == "DELETE, GET, HEAD"
    assert services.registry.tags() == []


def test_training_without_both_kinds_of_examples_is_400(client: TestClient, services: Services) -> None:
    assert_error(client.get("/custom/train/empty"), 404, "unknown_tag")  # as its versions are
    client.post("/custom/add?image_id=img", files={"data": ("x.jpg", crops(CAT, 1, seed=0)[0])})
    client.get("/custom/assign/img/positive/onesided")
    assert_error(client.get("/custom/train/onesided"), 400, "not_enough_examples")
    typo = client.get("/custom/train/onesidde").json()  # a tag nobody made: most often a typo, named
    assert typo["error"] == "unknown_tag" and "There is no tag 'onesidde'" in typo["message"]
    assert "Did you mean 'onesided'?" in typo["message"]
    assert "Did you mean" not in client.get("/custom/train/zebra").json()["message"]
    assert services.queue.queue.count == 0


def test_redis_down_is_503_json(client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    monkeypatch.setattr(services.registry, "redis", dead)
    response = client.get("/custom/assign/img/positive/cat")
    assert_error(response, 503, "backend_unavailable")


def test_images_in_many_modes_are_accepted(client: TestClient) -> None:
    base = photo(CAT).resize((120, 80))
    variants = {
        "cmyk": encode(base.convert("CMYK"), "JPEG"),
        "grey16": encode(Image.fromarray(__import__("numpy").asarray(base.convert("L"), dtype="uint16") * 257), "PNG"),
        "rgba": encode(base.convert("RGBA"), "PNG"),
        "palette": encode(base.convert("P"), "GIF"),
        "webp": encode(base, "WEBP"),
    }
    for name, data in variants.items():
        response = client.post(f"/custom/add?image_id={name}", files={"data": (name, data)})
        assert response.status_code == 201, (name, response.text)


def test_colour_images_keep_their_colours_in_every_mode_and_size(client: TestClient) -> None:
    """TIFFs in YCbCr or LAB: from 512 px a side they were reduced as greyscale (a red photo
    tagged black and white, its thumbnail grey), and a LAB one was refused as corrupt by /custom/add."""
    import numpy as np

    red = Image.new("RGB", (600, 520), (219, 19, 18))
    for mode in ("YCbCr", "LAB"):
        for size in ((120, 100), red.size):
            data = encode(red.resize(size).convert(mode), "TIFF")
            response = client.post("/custom/add", files={"data": (f"{mode}.tif", data)})
            assert response.status_code in (200, 201), (mode, size, response.text)
            thumbnail = client.get(f"/custom/images/{response.json()['image_id']}/thumbnail")
            r, g, b = np.asarray(Image.open(io.BytesIO(thumbnail.content)).convert("RGB"), dtype=float).mean(axis=(0, 1))
            assert r > 180 and g < 60 and b < 60, (mode, size, (r, g, b))


def test_exif_rotation_is_applied(client: TestClient) -> None:
    image = photo(CAT).resize((200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    body = client.post("/custom/add", files={"data": ("r.jpg", buffer.getvalue())}).json()
    assert (body["width"], body["height"]) == (100, 200)


def test_a_full_disk_is_503_json_and_stores_nothing(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local store's disk full: 503 backend_unavailable (as an S3 server that refuses writes),
    not 500 internal_error, and the image is not registered."""
    import errno

    from shared.data import store as store_module

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    real_write = store_module.os.write
    monkeypatch.setattr(store_module.os, "write", disk_full)
    assert_error(client.post("/custom/add?image_id=full", files={"data": ("x.jpg", crops(CAT, 1, seed=0)[0])}),
                 503, "backend_unavailable")
    monkeypatch.setattr(store_module.os, "write", real_write)
    assert not services.registry.image_exists("full")
    assert client.post("/custom/add?image_id=full", files={"data": ("x.jpg", crops(CAT, 1, seed=0)[0])}).status_code == 201


def test_add_many_reports_what_it_stored_when_the_store_fails_midway(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object store failing on the second file of a batch: the first is stored and assigned
    already, so a bare 503 for the whole batch hid it (a retry then got 409 image_exists for it,
    or stored a duplicate under a new generated id). Each file gets its row; the batch stops at
    the failure instead of waiting out the store's timeouts once per remaining file."""
    from shared.data.store import StoreUnavailable

    real_put = services.store.put

    def put(key: str, data: bytes) -> None:
        if key == "images/b":
            raise StoreUnavailable("S3 write failed: connection refused")
        real_put(key, data)

    monkeypatch.setattr(services.store, "put", put)
    photos = crops(CAT, 3, seed=0)
    response = client.post(
        "/custom/add_many?tag=cat&type=positive",
        files=[("data", (f"{i}.jpg", p)) for i, p in zip("abc", photos, strict=True)],
        data={"image_id": ["a", "b", "c"]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["added"], body["failed"]) == (1, 2)
    assert [(r["image_id"], r.get("status"), r.get("error")) for r in body["images"]] == [
        ("a", None, None), ("b", 503, "backend_unavailable"), ("c", 503, "backend_unavailable")]
    assert services.registry.examples("cat") == (["a"], [])
    assert not services.registry.image_exists("b") and not services.registry.image_exists("c")


def test_add_many_that_stores_nothing_before_the_store_fails_is_a_503(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.data.store import StoreUnavailable

    def put(key: str, data: bytes) -> None:
        raise StoreUnavailable("S3 write failed: connection refused")

    monkeypatch.setattr(services.store, "put", put)
    response = client.post("/custom/add_many", files=[("data", ("a.jpg", crops(CAT, 1, seed=0)[0]))])
    assert_error(response, 503, "backend_unavailable")


def test_a_multipart_content_type_in_capitals_is_accepted(client: TestClient, services: Services) -> None:
    """Media types ignore case (RFC 9110): 'Multipart/Form-Data' is multipart/form-data."""
    data = crops(CAT, 1, seed=0)[0]
    body = (b'--b0undary\r\nContent-Disposition: form-data; name="data"; filename="cat.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--b0undary--\r\n")
    for path in ("/custom/add?image_id=upper", "/custom/add_many"):
        response = client.post(path, content=body, headers={"Content-Type": "Multipart/Form-Data; boundary=b0undary"})
        assert response.status_code in (200, 201) and "error" not in response.text, (path, response.text)
    assert services.registry.image_ids() == ["upper"]  # the batch's same bytes found the stored image


def test_a_training_that_cannot_go_on_is_one_warning_not_an_error_with_a_traceback(
    client: TestClient, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """Its examples unlabelled between the request and the job: the task says why, and the log
    has one WARNING line; RQ had logged it at ERROR with a traceback, like a crash of the service."""
    for i, data in enumerate(crops(CAT, 2, seed=4)):
        add(client, data, f"c{i}")
        client.get(f"/custom/assign/c{i}/{'positive' if i == 0 else 'negative'}/cat")
    task = client.get("/custom/train/cat").json()
    client.get("/custom/unassign/c0/cat")  # its one positive
    with caplog.at_level(logging.WARNING):
        run_queued_jobs(services)
    status = client.get(f"/status/{task['task_id']}").json()
    assert status["status"] == "failed" and "positive" in status["error"], status
    failed = [r for r in caplog.records if "failed" in r.getMessage() and task["task_id"] in r.getMessage()]
    assert [r.levelname for r in failed] == ["WARNING"], [(r.levelname, r.getMessage()[:200]) for r in caplog.records]
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    assert "Traceback" not in caplog.text
