"""``tagsmith predict`` and ``tagsmith add`` over folders with a bad file: every good file's result,
every bad file named with the server's reason, exit 1 at the end; ``predict --json`` as JSON Lines;
``predict --xmp`` sidecars read back by exiftool (Debian's libimage-exiftool-perl), merged into
an existing darktable sidecar without losing anything."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from infra import xmp
from infra.cli import main
from infra.commands import _add_batch, sidecar_keywords
from tagsmith_client import TagsmithError
from tests.support.photos import CAT, crops
from tests.support.servers import TagsmithServer

DARKTABLE_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:darktable="http://darktable.sf.net/"
   xmp:Rating="3"
   xmpMM:DerivedFrom="cat.jpg"
   darktable:xmp_version="5"
   darktable:history_end="1">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>holiday</rdf:li>
     <rdf:li>Cat</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <darktable:history>
    <rdf:Seq>
     <rdf:li
      darktable:num="0"
      darktable:operation="exposure"
      darktable:enabled="1"
      darktable:modversion="6"
      darktable:params="0000000000000000"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def run(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--url", url, "-q"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def exiftool() -> str:
    found = shutil.which("exiftool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("exiftool must be installed (Debian's libimage-exiftool-perl; scripts/setup does it in CI)")
        pytest.skip("exiftool is not installed (Debian's libimage-exiftool-perl)")
    return found


def read_xmp(exiftool: str, sidecar: Path, *tags: str) -> dict[str, Any]:
    """What exiftool reads from a sidecar; list tags always as lists (exiftool -j gives one item bare)."""
    done = subprocess.run([exiftool, "-j", "-XMP:Subject", "-XMP:HierarchicalSubject", *tags, str(sidecar)],
                          capture_output=True, text=True, timeout=60, check=True)
    found: dict[str, Any] = json.loads(done.stdout)[0]
    for key in ("Subject", "HierarchicalSubject"):
        if key in found and not isinstance(found[key], list):
            found[key] = [found[key]]
        if key in found:
            found[key] = [str(item) for item in found[key]]
    return found


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two good photos and a truncated JPEG."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(crops(CAT, 1, seed=41)[0])
    (photos / "rocket.jpg").write_bytes(crops("rocket", 1, seed=41)[0])
    whole = crops(CAT, 1, seed=42)[0]
    (photos / "broken.jpg").write_bytes(whole[: len(whole) // 3])
    return photos


def served_error(server: TagsmithServer, photo: Path) -> dict[str, Any]:
    with open(photo, "rb") as image:
        response = requests.post(f"{server.base}/predict", files={"data": image}, timeout=60)
    assert response.status_code == 400, response.text
    return {**response.json(), "status": response.status_code}


def test_predict_prints_every_good_file_and_names_the_bad_one(
        live_server: TagsmithServer, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reason = served_error(live_server, folder / "broken.jpg")
    code, out, err = run(capsys, live_server.base, "predict", str(folder))
    assert code == 1, err
    header, rule, *rows = out.splitlines()
    assert header.split()[:3] == ["file", "custom", "tags"]
    assert [row.split()[0] for row in rows] == [str(folder / "cat.jpg"), str(folder / "rocket.jpg")]
    assert f"{folder / 'broken.jpg'}: {reason['message']} ({reason['error']})" in err.splitlines()
    assert "1 of 3 files failed" in err and "Traceback" not in err

    # The same with one custom tag or every one: the good files still get their table.
    code, out, err = run(capsys, live_server.base, "predict", str(folder), "--custom")
    assert code == 1 and len(out.splitlines()) == 4 and str(folder / "broken.jpg") in err


def test_file_names_reach_the_terminal_without_their_control_characters(
        live_server: TagsmithServer, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file named with escape sequences retitled and recoloured the terminal, and a newline in it
    faked a line of output; they are printed as escapes now (the JSON output keeps the name)."""
    hostile = "evil\x1b]0;PWNED\x07\x1b[31mred\nline2"
    (folder / f"{hostile}.jpg").write_bytes((folder / "cat.jpg").read_bytes())
    (folder / f"{hostile}-cut.jpg").write_bytes((folder / "broken.jpg").read_bytes())
    code, out, err = run(capsys, live_server.base, "predict", str(folder))
    assert code == 1 and "\x1b" not in out + err and "\x07" not in out + err
    assert "evil\\x1b]0;PWNED\\x07\\x1b[31mred\\nline2" in out and "line2-cut.jpg: " in err
    assert len(out.splitlines()) == 2 + 3  # header, rule, three good files: no faked line
    (folder / "写真\u3000一.jpg").write_bytes((folder / "cat.jpg").read_bytes())  # an ideographic space: as it is
    (folder / "gpj.\u202etxt.jpg").write_bytes((folder / "cat.jpg").read_bytes())  # reverses what follows: escaped
    code, out, err = run(capsys, live_server.base, "predict", str(folder))
    assert "写真\u3000一.jpg" in out and "gpj.\\u202etxt.jpg" in out and "\u202e" not in out
    code, out, err = run(capsys, live_server.base, "predict", str(folder), "--json")
    assert any(json.loads(line)["path"].endswith(f"{hostile}.jpg") for line in out.splitlines())


def test_predict_json_lines_have_every_file_and_the_error(
        live_server: TagsmithServer, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reason = served_error(live_server, folder / "broken.jpg")
    code, out, err = run(capsys, live_server.base, "predict", str(folder), "--json")
    assert code == 1, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["path"] for line in lines] == [str(folder / name) for name in ("broken.jpg", "cat.jpg", "rocket.jpg")]
    assert lines[0] == {"path": str(folder / "broken.jpg"), "error": reason["error"], "message": reason["message"],
                        "status": 400}
    for line in lines[1:]:
        assert {"keywords", "styles", "style_scores", "custom"} <= set(line) and "error" not in line
    assert any(k["name"] == "cat" for k in lines[1]["keywords"])


def test_a_refusal_for_every_file_stops_once(live_server: TagsmithServer, folder: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown tag would be refused for every file: said once, not once per file."""
    code, out, err = run(capsys, live_server.base, "predict", str(folder), "--tag", "no such xmp tag", "--json")
    assert code == 1 and out == ""
    assert err.strip() == ("tagsmith: Tag 'no such xmp tag' has no trained model. (unknown_tag); "
                           "stopped with 3 of 3 files not done")


def test_add_finishes_the_batch_and_fails_at_the_end(live_server: TagsmithServer, folder: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "notes.jpg").write_text("not a photo")
    (folder / "more.jpg").write_bytes(crops(CAT, 1, seed=43)[0])
    # Two files a request: the bad files fall in different batches, the good ones after them still go.
    code, out, err = run(capsys, live_server.base, "add", str(folder), "--batch", "2")
    assert code == 1
    *table, summary = out.strip().splitlines()
    assert summary == "added 3 images; 2 failed" and len(table) == 2 + 3  # the ids the server chose, a file each
    assert f"{folder / 'broken.jpg'}: The image data is corrupt or truncated" in err
    assert f"{folder / 'notes.jpg'}: The file is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP or TIFF). (not_an_image)" in err


class SplittingServer:
    """A stand-in for the client whose server refuses any request of more than one file as too large
    (as a proxy with a small body limit does), and one file of them on its own."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []

    def add_images(self, images: list[Any], **_: Any) -> dict[str, Any]:
        names = [Path(image.name).name for image in images]
        self.requests.append(names)
        if len(names) > 1 or names == ["huge.jpg"]:
            raise TagsmithError(413, "too_large", "The request body is too large.")
        return {"added": 1, "failed": 0, "images": [{"filename": names[0], "image_id": names[0][:-4]}]}


def test_a_batch_refused_as_too_large_is_sent_again_a_file_at_a_time(tmp_path: Path) -> None:
    for name in ("a.jpg", "huge.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"x")
    files = [tmp_path / name for name in ("a.jpg", "huge.jpg", "b.jpg")]
    server = SplittingServer()
    args = argparse.Namespace(ids_from_names=False, tag=None)
    rows = _add_batch(server, files, args, None)  # type: ignore[arg-type]
    assert server.requests == [["a.jpg", "huge.jpg", "b.jpg"], ["a.jpg"], ["huge.jpg"], ["b.jpg"]]
    assert [r.get("image_id") for r in rows] == ["a", None, "b"]
    assert rows[1] == {"path": str(files[1]), "error": "too_large", "message": "The request body is too large.",
                       "status": 413}


def test_xmp_sidecars_are_written_and_merged(live_server: TagsmithServer, folder: Path, exiftool: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    url = live_server.base
    # A custom tag of its own, so that matched custom tags are in the sidecars too.
    examples = folder.parent / "examples"
    for i, data in enumerate(crops(CAT, 3, seed=44)):
        (examples / "cats").mkdir(parents=True, exist_ok=True)
        (examples / "cats" / f"xmp-cat-{i}.jpg").write_bytes(data)
    for name in ("rocket", "coffee", "astronaut"):
        (examples / "other").mkdir(parents=True, exist_ok=True)
        (examples / "other" / f"xmp-{name}.jpg").write_bytes(crops(name, 1, seed=44)[0])
    assert run(capsys, url, "add", str(examples / "cats"), "--tag", "xmp cat", "--positive")[0] == 0
    assert run(capsys, url, "add", str(examples / "other"), "--tag", "xmp cat", "--negative")[0] == 0
    code, _, err = run(capsys, url, "train", "xmp cat", "--wait")
    assert code == 0, err

    # rocket.jpg gets a new sidecar; cat.jpg's darktable sidecar is merged; broken.jpg gets none.
    darktable = xmp.sidecar_path(folder / "cat.jpg")
    darktable.write_text(DARKTABLE_SIDECAR)
    code, out, err = run(capsys, url, "predict", str(folder), "--json", "--xmp")
    assert code == 1  # broken.jpg
    lines = {Path(line["path"]).name: line for line in map(json.loads, out.splitlines())}
    assert "xmp" not in lines["broken.jpg"] and not (folder / "broken.jpg.xmp").exists()
    assert lines["cat.jpg"]["xmp"] == {"path": str(darktable), "result": "merged"}
    assert lines["rocket.jpg"]["xmp"] == {"path": str(folder / "rocket.jpg.xmp"), "result": "created"}
    assert "wrote 2 XMP sidecars (1 merged into existing ones)" in err
    assert not (folder / "rocket.xmp").exists() and not (folder / "cat.xmp").exists()

    everything = argparse.Namespace(tag=None, custom=False)
    assert lines["cat.jpg"]["custom"]["xmp cat"]["match"] and not lines["rocket.jpg"]["custom"]["xmp cat"]["match"]
    new = read_xmp(exiftool, folder / "rocket.jpg.xmp")
    assert new["Subject"] == new["HierarchicalSubject"] == sidecar_keywords(lines["rocket.jpg"], everything)
    assert "xmp cat" not in new["Subject"] and new["Subject"]

    merged = read_xmp(exiftool, darktable, "-XMP:Rating", "-XMP-darktable:all")
    added = [k for k in sidecar_keywords(lines["cat.jpg"], everything) if k.casefold() != "cat"]
    assert "xmp cat" in added and "cat" in [k["name"] for k in lines["cat.jpg"]["keywords"]]
    assert merged["Subject"] == ["holiday", "Cat", *added]  # "cat" is there already, as "Cat"
    assert merged["HierarchicalSubject"] == merged["Subject"]  # darktable reads this one alone when present
    assert merged["Rating"] == 3 and merged["Xmp_version"] == 5 and merged["History_end"] == 1
    assert (merged["HistoryOperation"], merged["HistoryParams"], merged["HistoryModversion"]) == \
        ("exposure", "0000000000000000", 6)

    # Again: nothing new, nothing rewritten.
    before = darktable.read_bytes()
    code, out, err = run(capsys, url, "predict", str(folder / "cat.jpg"), str(folder / "rocket.jpg"), "--xmp")
    assert code == 0, err
    assert "wrote 0 XMP sidecars; 2 left unchanged (nothing new to add)" in out
    assert darktable.read_bytes() == before

    # A sidecar that is not XMP is left as it was, and said so.
    (folder / "rocket.jpg.xmp").write_text("<not xmp")
    code, out, err = run(capsys, url, "predict", str(folder / "rocket.jpg"), "--xmp")
    assert code == 1 and (folder / "rocket.jpg.xmp").read_text() == "<not xmp"
    assert f"{folder / 'rocket.jpg.xmp'}: left as it was: it is not well-formed XML" in err


# --- the sidecar module alone --------------------------------------------------------------------


def test_keywords_from_a_hostile_server_keep_the_sidecar_readable_and_flat(tmp_path: Path) -> None:
    """A keyword holding a control character made a sidecar that no XML reader could read (every
    later merge failed), and "a|=1" was read by photo tools as the levels "a" › "=1"."""
    sidecar = tmp_path / "a.jpg.xmp"
    assert xmp.write_keywords(sidecar, ["ok\x01bad", "a|=1", "\x1b"]) == "created"
    assert xmp.write_keywords(sidecar, ["again"]) == "merged"  # still XML
    document = xmp.parse(sidecar.read_bytes())
    assert xmp.read_keywords(document) == ["okbad", "a|=1", "again"]
    assert xmp.read_keywords(document, xmp.LR, "hierarchicalSubject") == ["okbad", "again"]


def test_an_existing_sidecar_keeps_everything(tmp_path: Path) -> None:
    sidecar = tmp_path / "cat.jpg.xmp"
    sidecar.write_text(DARKTABLE_SIDECAR)
    sidecar.chmod(0o640)
    assert xmp.write_keywords(sidecar, ["cat", "tabby cat", "holiday", "tabby cat"]) == "merged"
    document = xmp.parse(sidecar.read_bytes())
    assert xmp.read_keywords(document) == ["holiday", "Cat", "tabby cat"]
    assert xmp.read_keywords(document, xmp.LR, "hierarchicalSubject") == ["holiday", "Cat", "tabby cat"]
    history = document.getElementsByTagNameNS("http://darktable.sf.net/", "history")
    assert len(history) == 1 and "darktable:operation=\"exposure\"" in history[0].toxml()
    assert 'xmp:Rating="3"' in sidecar.read_text() and sidecar.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["cat.jpg.xmp"]  # no temporary file left


def test_a_hierarchy_already_there_is_extended_not_replaced(tmp_path: Path) -> None:
    sidecar = tmp_path / "a.jpg.xmp"
    sidecar.write_text(
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/">'
        "<dc:subject><rdf:Bag><rdf:li>cat</rdf:li></rdf:Bag></dc:subject>"
        "<lr:hierarchicalSubject><rdf:Bag><rdf:li>animals|cat</rdf:li></rdf:Bag></lr:hierarchicalSubject>"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')
    assert xmp.write_keywords(sidecar, ["cat", "dog"]) == "merged"
    text = sidecar.read_text()
    assert text.count("<?xpacket") == 2
    document = xmp.parse(text.encode())
    assert xmp.read_keywords(document) == ["cat", "dog"]
    assert xmp.read_keywords(document, xmp.LR, "hierarchicalSubject") == ["animals|cat", "dog"]


@pytest.mark.parametrize("content", [
    '<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>',
    '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    "<x:xmpmeta xmlns:x='adobe:ns:meta/'/>",  # no rdf:RDF
    "not xml",
], ids=["entities", "external-entity", "not-xmp", "not-xml"])
def test_a_sidecar_that_cannot_be_merged_is_left_as_it_was(tmp_path: Path, content: str) -> None:
    sidecar = tmp_path / "a.jpg.xmp"
    sidecar.write_text(content)
    with pytest.raises(xmp.XmpError):
        xmp.write_keywords(sidecar, ["cat"])
    assert sidecar.read_text() == content and len(list(tmp_path.iterdir())) == 1


def test_a_sidecar_link_to_nowhere_creates_no_file_where_it_points(tmp_path: Path) -> None:
    """A dangling `photo.jpg.xmp` link (say, from an unpacked archive) made the XMP file wherever it
    pointed, and a link to any XMP file rewrote it; a link to an existing sidecar in the photo's
    folder is still merged into."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "elsewhere").mkdir()
    elsewhere = tmp_path / "elsewhere" / "planted.txt"
    link = tmp_path / "photos" / "a.jpg.xmp"
    link.symlink_to(elsewhere)
    with pytest.raises(xmp.XmpError, match="links are followed only to an existing file"):
        xmp.write_keywords(link, ["cat"])
    assert not elsewhere.exists() and list(elsewhere.parent.iterdir()) == []
    outside = tmp_path / "elsewhere" / "real.xmp"  # an existing XMP file outside the photos' folder
    assert xmp.write_keywords(outside, ["dog"]) == "created"
    before = outside.read_bytes()
    (tmp_path / "photos" / "c.jpg.xmp").symlink_to(outside)
    with pytest.raises(xmp.XmpError, match="links are followed only to an existing file"):
        xmp.write_keywords(tmp_path / "photos" / "c.jpg.xmp", ["cat"])
    assert outside.read_bytes() == before
    real = tmp_path / "photos" / "b.xmp"
    assert xmp.write_keywords(real, ["dog"]) == "created"
    (tmp_path / "photos" / "b.jpg.xmp").symlink_to(real)
    assert xmp.write_keywords(tmp_path / "photos" / "b.jpg.xmp", ["cat"]) == "merged"
    assert "cat" in real.read_text() and (tmp_path / "photos" / "b.jpg.xmp").is_symlink()


def test_a_sidecar_that_is_no_regular_file_or_too_large_is_left_alone(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A named pipe in place of `photo.jpg.xmp` made `predict --xmp` wait for good (reading it), and
    a huge file would have been read whole."""
    pipe = tmp_path / "a.jpg.xmp"
    os.mkfifo(pipe)
    with pytest.raises(xmp.XmpError, match="not a regular file"):
        xmp.write_keywords(pipe, ["cat"])  # at once: nothing writes to the pipe
    big = tmp_path / "b.jpg.xmp"
    big.write_bytes(b" " * 101)
    monkeypatch.setattr(xmp, "MAX_SIDECAR_BYTES", 100)
    with pytest.raises(xmp.XmpError, match="101 bytes"):
        xmp.write_keywords(big, ["cat"])
    assert big.read_bytes() == b" " * 101


def test_no_keywords_no_sidecar(tmp_path: Path) -> None:
    assert xmp.write_keywords(tmp_path / "a.jpg.xmp", []) == "unchanged"
    assert not (tmp_path / "a.jpg.xmp").exists()
    assert xmp.sidecar_path(tmp_path / "a.jpg") == tmp_path / "a.jpg.xmp"
