"""The ``tagsmith`` client commands against a real server: add folders, train with a progress
bar, predict files and folders as a table or JSON, export and load state."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import psutil
import pytest

from infra.cli import main, serving_lines
from infra.embedded import data_folder_lock, free_port
from shared.core.settings import Settings
from shared.models.edge import edge_manifest
from tagsmith_client import Client, TagsmithError
from tests.support.photos import CAT, OTHERS, crops
from tests.support.servers import ROOT, TagsmithServer, clean_env


def run(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--url", url])
    out, err = capsys.readouterr()
    return code, out, err


def photos(folder: Path, prefix: str, name: str, count: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(crops(name, count, seed=seed)):
        (folder / f"{prefix} {i}.jpg").write_bytes(data)
    return folder


def test_add_train_predict_export_load(live_server: TagsmithServer, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    url = live_server.base
    cats = photos(tmp_path / "cats", "cli-cat", CAT, 4, seed=31)
    others = tmp_path / "others"
    for name in OTHERS:
        photos(others / name, f"cli-{name}", name, 1, seed=32)  # nested folders are searched too
    (others / "notes.txt").write_text("not a photo")
    (others / "notes.jpg").write_text("not a photo either")

    code, out, err = run(capsys, url, "add", str(cats), "--tag", "cli cat", "--positive", "--ids-from-names")
    assert code == 0, err
    assert out.strip() == "added 4 images as positive examples of 'cli cat'"
    assert "4/4" in err  # the progress bar
    code, out, err = run(capsys, url, "add", str(cats), "--tag", "cli cat", "--positive", "--ids-from-names")
    assert (code, out.strip()) == (0, "added 4 images as positive examples of 'cli cat' (4 of them stored already)")
    monkeypatch.setenv("COLUMNS", "60")  # narrow: the long paths are cut, never the ids
    code, out, err = run(capsys, url, "add", str(others), "--tag", "cli cat", "--negative")
    monkeypatch.delenv("COLUMNS")
    assert code == 1
    header, rule, *rows, summary = out.strip().splitlines()
    assert summary == f"added {len(OTHERS)} images as negative examples of 'cli cat'; 1 failed"
    assert header.split() == ["file", "image", "id"] and len(rows) == len(OTHERS)  # the ids the server chose
    with Client(url) as api:
        assert {row.split()[-1] for row in rows} == set(api.tag("cli cat")["negatives"])
    assert "notes.jpg: The file is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP or TIFF). (not_an_image)" in err
    assert main(["tags", "--json", "--url", url]) == 0
    tags = {t["tag"]: t for t in json.loads(capsys.readouterr().out)}
    assert (tags["cli cat"]["positives"], tags["cli cat"]["negatives"]) == (4, len(OTHERS))
    assert main(["tags", "--contains", "CLI C", "--json", "--url", url]) == 0
    found = [t["tag"] for t in json.loads(capsys.readouterr().out)]
    assert "cli cat" in found and all("cli c" in name.casefold() for name in found)
    assert run(capsys, url, "tags", "--contains", "no-such-tag-xyz")[1].strip() == "no tag's name holds 'no-such-tag-xyz'"

    code, out, err = run(capsys, url, "train", "cli cat", "--wait")
    assert code == 0, err
    assert out.startswith("trained 'cli cat' version 1: ROC AUC ")
    assert "100%" in err and "done" in err  # the bar ends at 100 % on the last stage
    assert set(re.findall(r"done\s+(\d+)%", err)) == {"100"}  # never a "done 0%" frame
    assert main(["library", "--tag", "cli cat", "--json", "--url", url]) == 0  # one tag of a shared server's
    assert list(json.loads(capsys.readouterr().out)["tags"]) == ["cli cat"]

    code, out, err = run(capsys, url, "train", "cli cat")
    task_id = out.strip()
    code, out, err = run(capsys, url, "status", task_id)
    assert code == 0 and out.startswith("cli cat: ")
    with Client(url) as api:  # finished before the load below, so the load makes the newest version
        api.wait(task_id, timeout=300)

    probes = tmp_path / "probes"
    probes.mkdir()
    (probes / "cat.jpg").write_bytes(crops(CAT, 1, seed=33)[0])
    (probes / "rocket.jpg").write_bytes(crops("rocket", 1, seed=33)[0])
    monkeypatch.setenv("COLUMNS", "90")  # tables fit the terminal: here 90 columns
    code, out, err = run(capsys, url, "predict", str(probes))
    monkeypatch.delenv("COLUMNS")
    assert code == 0, err
    header, rule, *rows = out.splitlines()
    assert header.split()[:5] == ["file", "custom", "tags", "(✓", "match)"] and set(rule) <= {"-", " "}
    assert max(len(line) for line in out.splitlines()) <= 90  # fitted: paths are cut at their start
    assert rows[0].split()[0].endswith("cat.jpg") and "cli cat ✓ " in rows[0] and "(no)" not in out
    assert "cli cat ✓" not in rows[1]
    code, out, err = run(capsys, url, "predict", str(probes), "--tag", "cli cat", "--json")
    scores = {line["path"]: line for line in map(json.loads, out.splitlines())}  # JSON Lines, one per file
    assert scores[str(probes / "cat.jpg")]["match"] and not scores[str(probes / "rocket.jpg")]["match"]

    archive = tmp_path / "state.tar"
    code, out, err = run(capsys, url, "export", "-o", str(archive), "--tag", "cli cat")
    assert code == 0 and out.startswith(f"wrote {archive}")
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames()
    code, out, err = run(capsys, url, "load", str(archive))
    assert code == 0 and re.fullmatch(r"loaded 'cli cat' as version \d+ \(version \d+ in the archive\)", out.strip())
    code, out, err = run(capsys, url, "versions", "cli cat")
    assert code == 0
    table, _, caution = out.partition("\n\n")  # the table, then what to know about the current version
    rows = table.splitlines()
    assert [line.split()[0] for line in rows[2:]][:1] == ["1"] and " * " not in rows[2]
    assert "trained here" in rows[2] and "loaded (was v" in rows[-1]
    assert caution.startswith("version ") and "examples" in caution  # trained on a few photos

    edge = tmp_path / "edge.onnx"
    code, out, err = run(capsys, url, "export-onnx", "-o", str(edge), "--tag", "cli cat")
    assert code == 0 and out.startswith(f"wrote {edge} (") and "'cli cat'" in out, err
    assert [t["tag"] for t in edge_manifest(edge.read_bytes())["tags"]] == ["cli cat"]
    for command in ("export", "export-onnx"):  # into a stream that may be stdout: the line goes to stderr
        code, out, err = run(capsys, url, command, "-o", "/dev/null", "--tag", "cli cat")
        assert code == 0 and out == "" and err.startswith("wrote /dev/null ("), (command, out, err)
    code, out, err = run(capsys, url, "rollback", "cli cat", "1")
    assert code == 0 and out.startswith("'cli cat' now uses version 1")


def test_counts_partial_failures_and_empty_tables(live_server: TagsmithServer, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Counts agree with their nouns; a command over several images that is refused midway says
    which were done before and which were not tried; an empty list is a line, not a bare header."""
    url = live_server.base
    one = photos(tmp_path / "one", "cli-one", CAT, 2, seed=41)
    code, out, err = run(capsys, url, "add", str(one / "cli-one 0.jpg"), "--ids-from-names")
    assert code == 0 and out.strip() == "added 1 image", err
    code, out, err = run(capsys, url, "add", str(one / "cli-one 0.jpg"), "--ids-from-names")  # again: nothing new
    assert code == 0 and out.strip() == "added 0 images; 1 stored already", err
    run(capsys, url, "add", str(one / "cli-one 1.jpg"), "--ids-from-names")

    code, out, err = run(capsys, url, "assign", "positive", "cli partial", "cli-one-0", "nope-id", "cli-one-1")
    assert code == 1
    assert out.strip() == "'cli partial' has 1 positive example and 0 negative examples"
    assert err.splitlines() == [
        "tagsmith: nope-id: No image with id 'nope-id'. (unknown_image)",
        "tagsmith: before that, assigned 1 image to 'cli partial' as positive: cli-one-0; not tried: cli-one-1",
    ]
    code, out, err = run(capsys, url, "versions", "cli partial")
    assert (code, out.strip()) == (0, "'cli partial' has no trained versions yet")
    code, out, err = run(capsys, url, "find", "--filename", "no file is called this")
    assert (code, out.strip()) == (0, "no images match")
    code, out, err = run(capsys, url, "delete-image", "cli-one-1")
    assert (code, out.strip()) == (0, "deleted 1 image")
    code, out, err = run(capsys, url, "delete-image", "cli-one-0", "cli-one-1")
    assert code == 1 and out == ""
    assert err.splitlines()[-1] == "tagsmith: before that, deleted 1 image: cli-one-0"


def test_errors_are_reported_with_a_nonzero_exit(live_server: TagsmithServer, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, live_server.base, "versions", "no such tag")
    assert code == 1 and err.strip() == "tagsmith: No tag 'no such tag'. (unknown_tag)"
    nobody = f"http://127.0.0.1:{free_port()}"
    code, out, err = run(capsys, nobody, "tags")
    assert code == 1 and "Cannot reach tagsmith at" in err
    two = photos(tmp_path / "two", "cli-two", CAT, 2, seed=42)
    for command in ("add", "predict"):  # stopped before the first file: no "added 0 images", but the count
        code, out, err = run(capsys, nobody, command, str(two))
        assert (code, out) == (1, ""), (command, out)
        assert err.strip().endswith("stopped with 2 of 2 files not done"), (command, err)
    code, out, err = run(capsys, live_server.base.removeprefix("http://"), "tags")  # an address as curl takes it
    assert code == 0, err
    code, out, err = run(capsys, "ftp://127.0.0.1:5000", "tags")
    assert (code, err.strip()) == (2, "tagsmith: 'ftp://127.0.0.1:5000' is not an http:// or https:// address of a "
                                      "tagsmith server")
    with pytest.raises(SystemExit, match="no such file or folder"):
        main(["add", str(tmp_path / "missing"), "--url", live_server.base])


def test_the_command_line_talks_to_the_port_serve_was_given_in_the_environment(
        live_server: TagsmithServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``TAGSMITH_PORT=5002 tagsmith serve`` and then ``tagsmith tags`` in the same shell: the
    command line went to port 5000, another server's if one ran there, without a word."""
    monkeypatch.delenv("TAGSMITH_URL", raising=False)
    monkeypatch.setenv("TAGSMITH_PORT", str(live_server.port))
    monkeypatch.setenv("TAGSMITH_HOST", "0.0.0.0")  # every address: the client asks the loopback one
    assert main(["tags", "--json"]) == 0, capsys.readouterr().err
    monkeypatch.setenv("TAGSMITH_URL", f"http://127.0.0.1:{free_port()}")  # the address given wins
    assert main(["tags"]) == 1 and "Cannot reach tagsmith at" in capsys.readouterr().err


def test_a_refused_key_says_how_the_command_line_sends_one(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The server's 401 names the X-API-Key header; a command-line user needs the option instead."""
    import tagsmith_client

    class Refusing(Client):
        def tags(self, contains: str = "") -> list[dict[str, object]]:
            raise TagsmithError(401, "unauthorized", "This server needs an API key: send it in the X-API-Key header.")

    monkeypatch.setattr(tagsmith_client, "Client", Refusing)
    code, out, err = run(capsys, f"http://127.0.0.1:{free_port()}", "tags")
    assert code == 1 and "--api-key or TAGSMITH_API_KEY" in err, err


def test_a_missing_local_file_is_an_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tagsmith load missing.tar` ended in a FileNotFoundError traceback (as did `export -o` into a
    folder that does not exist); `add` and `predict` already say "no such file or folder"."""
    url = f"http://127.0.0.1:{free_port()}"  # never reached: the local file fails first
    code, out, err = run(capsys, url, "load", str(tmp_path / "missing.tar"))
    assert code == 1 and err.startswith("tagsmith: ") and "missing.tar" in err, err
    assert "Traceback" not in err


def test_serve_says_what_to_do_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "infra.cli", "serve", "--port", str(port), "--data-dir",
                               str(tmp_path / "data")], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 1 and f"port {port} on 127.0.0.1 is taken" in done.stderr and "--port" in done.stderr
    assert "TAGSMITH_URL" in done.stderr  # how the command line and clients then find it
    assert "Traceback" not in done.stderr and not (tmp_path / "data").exists()  # nothing started


def test_a_second_serve_on_a_data_folder_says_at_once_that_it_waits(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A second `serve` on a folder in use stayed silent for the 30 s it waits for the first one to
    stop, then failed: now it says at once what it waits for, and still fails clearly after."""
    with data_folder_lock(tmp_path / "data"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as refused, data_folder_lock(tmp_path / "data", wait_s=0.5):
            pass
    said = capsys.readouterr().out
    assert said.count("waiting up to") == 1 and "another tagsmith serve is using" in said, said
    assert "--data-dir" in str(refused.value.code)


def test_serve_on_every_address_names_an_address_a_browser_opens() -> None:
    """`serve --host 0.0.0.0` said "serving http://0.0.0.0:5000/", which no browser opens."""
    everywhere = serving_lines(Settings(host="0.0.0.0", port=5002), "gateway")
    assert everywhere[0].startswith("serving http://127.0.0.1:5002/ (listening on every address)"), everywhere
    assert "TAGSMITH_ALLOWED_HOSTS" in everywhere[1] and "0.0.0.0" not in everywhere[1]
    one = serving_lines(Settings(host="192.0.2.7", port=5002), "gateway")
    assert one[0].startswith("serving http://192.0.2.7:5002/ (gateway)") and "(or 192.0.2.7)" in one[1], one
    assert serving_lines(Settings(host="::1", port=5002), "gateway") == [
        "serving http://[::1]:5002/ (gateway); Ctrl+C stops it"]


def test_serve_beyond_loopback_without_api_keys_warns_that_anyone_may_change_everything() -> None:
    """The host check stops DNS rebinding, not another machine, which may send ``Host: localhost``:
    listening beyond loopback with no keys had said nothing of that."""
    for host in ("0.0.0.0", "192.0.2.7", "::"):
        said = serving_lines(Settings(host=host, port=5002), "data in d", whole=True)
        assert any(line.startswith("WARNING: no API keys") and "TAGSMITH_API_KEYS" in line for line in said), said
        keyed = serving_lines(Settings(host=host, port=5002, api_keys="k1"), "data in d", whole=True)
        assert not any("WARNING" in line for line in keyed), keyed
        # one container's function service: only the gateway reaches it, and that is the deployment's to say
        assert not any("WARNING" in line for line in serving_lines(Settings(host=host, port=5002), "the predict service"))
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert not any("WARNING" in line for line in serving_lines(Settings(host=host, port=5002), "data", whole=True))


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [("TAGSMITH_API_KEYS", " , ", "TAGSMITH_API_KEYS: names no key"),
     ("TAGSMITH_API_KEYS", "\n", "TAGSMITH_API_KEYS: names no key"),  # a Secret made from a file with a lone newline
     ("TAGSMITH_API_KEYS", " ", "TAGSMITH_API_KEYS: names no key"),
     ("TAGSMITH_PORT", "five", "TAGSMITH_PORT: Input should be a valid integer"),
     ("TAGSMITH_PORT", "99999", "TAGSMITH_PORT must be a port number"),
     ("TAGSMITH_LOG_LEVEL", "verbose", "TAGSMITH_LOG_LEVEL must be one of DEBUG"),
     ("TAGSMITH_RUNTIME", "tensorrt", "TAGSMITH_RUNTIME must be one of auto, torch"),
     ("TAGSMITH_DEVICE", "gpu", "TAGSMITH_DEVICE must be auto, cpu, cuda")],
)
def test_a_setting_that_cannot_be_used_stops_the_command_with_its_name_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str, said: str
) -> None:
    """A bad ``TAGSMITH_`` variable printed pydantic's traceback, naming a field; " , " as the API keys
    had meant no keys at all, silently."""
    monkeypatch.setenv(variable, value)
    assert main(["worker", "--burst"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tagsmith: ") and said in err and "Traceback" not in err, err
    assert value.strip(" ,\n") == "" or value not in err  # values are not echoed: some are secrets


def test_serve_runs_its_worker_at_a_lower_cpu_priority(live_server: TagsmithServer) -> None:
    """Training and library embedding yield to requests on the cores they share."""
    assert live_server.process is not None
    server = psutil.Process(live_server.process.pid)
    workers = [p for p in server.children() if "worker" in p.cmdline()]
    assert len(workers) == 1
    assert workers[0].nice() == min(server.nice() + 10, 19)  # 19: the lowest priority there is


HOSTILE = "\x1b]0;PWNED\x07\x1b[2J\x1b[31mEVIL\x1b[0m\r\nfake line"


class _HostileServer:
    """A client whose server's every text holds escape sequences (a real tagsmith refuses such tags)."""

    def __enter__(self) -> _HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def status(self, task_id: str) -> dict[str, object]:
        return {"tag": HOSTILE, "status": "failed", "stage": HOSTILE, "progress": 0.0, "error": HOSTILE,
                "result": {"version": HOSTILE, "threshold": 0.5, "metrics": {}}}

    def versions(self, tag: str) -> dict[str, object]:
        return {"versions": [{"version": 1, "current": True, "trained_at": HOSTILE, "threshold": 0.5,
                              "metrics": {"origin": {"version": HOSTILE}}, "caution": HOSTILE}]}

    def rollback(self, tag: str, version: int) -> dict[str, object]:
        return {"version": HOSTILE, "previous": HOSTILE}

    def library(self, tags: object = ()) -> dict[str, object]:
        return {"images": 1, "embedded": HOSTILE, "pending": HOSTILE, "tags": {HOSTILE: {
            "version": 1, "scores_from": HOSTILE, "up_to_date": False}}}

    def set_state(self, archive: str) -> dict[str, object]:
        return {"loaded": [{"tag": HOSTILE, "version": HOSTILE, "origin": {}}]}


@pytest.mark.parametrize("command", [["status", "t"], ["versions", "x"], ["rollback", "x", "1"], ["library"],
                                     ["load", "f.tar"]])
def test_what_a_server_sends_never_reaches_the_terminal_as_escape_sequences(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile (or broken) server's stage, error, caution or tag retitled the terminal, cleared it
    and faked lines of output: the command line prints them as escapes."""
    import tagsmith_client

    monkeypatch.setattr(tagsmith_client, "Client", lambda *args, **kwargs: _HostileServer())
    main(command)
    out = capsys.readouterr()
    printed = out.out + out.err
    assert "EVIL" in printed and not any(c in printed for c in "\x1b\x07\r"), printed
    assert "\nfake line" not in printed
