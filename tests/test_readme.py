"""The README's code blocks work as written: each block a user would paste (curl, Python, the
command line) runs, in the README's order, against a real ``tagsmith serve`` on a free port.

Only the addresses change (``127.0.0.1:5000`` becomes the test server's, and port 5002, where the
backup section starts a second server, a free port; the command line gets ``TAGSMITH_URL``). The blocks run in a folder with the photos they name and ``.venv`` (the
checkout's), as a user runs them in the checkout. ``curl`` runs with ``--fail-with-body`` added, so a refused request fails its
block; Python blocks fail on their own (``raise_for_status``, the client's exceptions). Blocks that
cannot run here say why in ``NOT_RUN``; a new block must be run or listed there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.embedded import free_port
from tests.support.servers import TagsmithServer, serving
from tools.example_photos import write_example_photos

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone

README = Path(__file__).resolve().parent.parent / "README.md"
RUNNABLE = {"sh", "python"}
# First line of a block that is not run, and why.
NOT_RUN = {
    "./scripts/serve        # set up .venv and serve": "starts the service itself (the fixture runs `tagsmith serve`)",
    "./scripts/serve                      # or: .venv/bin/tagsmith serve": "starts the service itself",
    "./scripts/setup --test && .venv/bin/python -m tools.example_photos": "installs the test tools; the `workdir` "
    "fixture writes the same photos",
    "cd infra": "Docker Compose needs a Docker engine, which this machine lacks",
    "kubectl create namespace tagsmith": "needs a Kubernetes cluster",
}


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    line: int

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0]


def readme_blocks() -> list[Block]:
    blocks, lines = [], README.read_text().splitlines()
    fence = re.compile(r"^```(\w*)\s*$")
    start, language = None, ""
    for number, line in enumerate(lines, 1):
        match = fence.match(line)
        if match and start is None:
            start, language = number, match.group(1)
        elif line.strip() == "```" and start is not None:
            blocks.append(Block(language, "\n".join(lines[start:number - 1]) + "\n", start))
            start = None
    return blocks


def runnable_blocks() -> list[Block]:
    return [b for b in readme_blocks() if b.language in RUNNABLE and not _not_run(b)]


def _not_run(block: Block) -> str | None:
    return next((why for start, why in NOT_RUN.items() if block.first_line.startswith(start)), None)


def test_every_block_is_run_or_says_why_not() -> None:
    blocks = readme_blocks()
    assert all(b.language for b in blocks), [b.line for b in blocks if not b.language]  # a language on every fence
    listed = [b for b in blocks if _not_run(b)]
    assert len(listed) == len(NOT_RUN), "an entry of NOT_RUN matches no block: remove it"
    assert {b.language for b in runnable_blocks()} == RUNNABLE and len(runnable_blocks()) >= 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TagsmithServer]:
    with serving(tmp_path_factory.mktemp("readme") / "data") as instance:
        yield instance


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photos the README's blocks name, as a user would have them in the current folder."""
    folder = tmp_path_factory.mktemp("user")
    write_example_photos(folder)  # what the README tells a user to run for them
    (folder / ".venv").symlink_to(Path(sys.executable).parent.parent)  # as in the checkout, where serve made it
    checked_curl = folder / "bin" / "curl"
    checked_curl.parent.mkdir()
    checked_curl.write_text(f'#!/bin/sh\nexec {_real_curl()} --fail-with-body "$@"\n')
    checked_curl.chmod(0o755)
    return folder


def _real_curl() -> str:
    found = subprocess.run(["sh", "-c", "command -v curl"], capture_output=True, text=True).stdout.strip()
    assert found, "curl is needed to run the README's curl blocks"
    return found


@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: f"{b.language}-line{b.line}")
def test_readme_block_runs_as_written(block: Block, server: TagsmithServer, workdir: Path) -> None:
    address, spare = f"127.0.0.1:{server.port}", free_port()  # spare: for the second server a block starts
    text = block.text.replace("127.0.0.1:5000", address).replace("127.0.0.1:5002", f"127.0.0.1:{spare}")
    text = text.replace("--port 5002", f"--port {spare}")
    env = {
        **server.env,
        "PATH": os.pathsep.join([str(workdir / "bin"), server.env.get("PATH", "")]),
        "TAGSMITH_URL": f"http://{address}",
    }
    command = ["bash", "-e", "-o", "pipefail", "-c", text] if block.language == "sh" else [sys.executable, "-c", text]
    returncode, output = _run_block(command, workdir, env)
    assert returncode == 0, f"README block at line {block.line} failed:\n{output[-6000:]}"


def _run_block(command: list[str], workdir: Path, env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run a block in its own process group, its output to a file (a server it started in the
    background and left running would hold a pipe open until the timeout); then end whatever it
    left running, failed or not."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            returncode = -1
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
        output.seek(0)
        return returncode, output.read().decode(errors="replace")


def test_the_prediction_example_has_the_served_shape(server: TagsmithServer, workdir: Path) -> None:
    import requests

    example = next(b for b in readme_blocks() if b.language == "json" and '"keywords"' in b.text)
    with open(workdir / "photo.jpg", "rb") as image:
        served = requests.post(f"{server.base}/predict", files={"data": image}, timeout=60).json()
    assert set(json.loads(example.text)) == set(served)
    assert set(json.loads(example.text)["keywords"][0]) == set(served["keywords"][0])
