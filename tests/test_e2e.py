"""End to end: the real ``tagsmith serve`` as a subprocess, driven by the seed's own snippets and curl lines.

The server binds a free port (so a ``tagsmith serve`` on 5000 may run beside the tests); the
seed's snippets (``tests/support/seed_snippets.py``) and curl lines are pointed at it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support import seed_snippets
from tests.support.photos import CAT, OTHERS, crops
from tests.support.servers import TagsmithServer, serving

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone


def curl(*args: str) -> dict:
    output = subprocess.run(["curl", "-s", "--fail-with-body", *args], check=True, capture_output=True).stdout
    return json.loads(output)


def wait_for(host: str, task_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = curl(f"{host}/status/{task_id}")
        if status["status"] in ("finished", "failed"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} did not finish: {status}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TagsmithServer]:
    with serving(tmp_path_factory.mktemp("e2e") / "data") as instance:
        yield instance


@pytest.fixture(scope="module")
def seed(server: TagsmithServer) -> SimpleNamespace:
    return seed_snippets.load(server.port)


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    folder = tmp_path_factory.mktemp("photos")
    files: dict[str, list[Path]] = {}
    for name, count, seed in [(CAT, 8, 1), *((other, 3, 2) for other in OTHERS), (CAT, 2, 50), ("coffee", 2, 50)]:
        key = name if seed != 50 else f"{name}-held-out"
        for i, data in enumerate(crops(name, count, seed)):
            path = folder / f"{key}-{i}.jpg"
            path.write_bytes(data)
            files.setdefault(key, []).append(path)
    return files


def test_seed_flow_end_to_end_and_across_a_restart(
    server: TagsmithServer, seed: SimpleNamespace, photo_files: dict[str, list[Path]]
) -> None:
    host = f"127.0.0.1:{server.port}"
    add_image, assign_image = seed.add_image, seed.assign_image
    get_predictions, get_predictions_added = seed.get_predictions, seed.get_predictions_added
    get_custom_predictions, get_custom_predictions_for_tag = seed.get_custom_predictions, seed.get_custom_predictions_for_tag
    cats = photo_files[CAT]
    generated = add_image(str(cats[0]))["image_id"]
    assign_image("positive", "cat", generated)
    for i, path in enumerate(cats[1:]):
        added = add_image(str(path), f"cat-{i}")
        assert (added["image_id"], added["format"]) == (f"cat-{i}", "JPEG")
        assert assign_image("positive", "cat", f"cat-{i}")["type"] == "positive"
    for name in OTHERS:
        for i, path in enumerate(photo_files[name]):
            curl(f"{host}/custom/add?image_id={name}-{i}", "-X", "POST", "-F", f"data=@{path}")
            curl(f"{host}/custom/assign/{name}-{i}/negative/cat")

    task = curl(f"{host}/custom/train/cat")
    status = wait_for(host, task["task_id"])
    assert status["status"] == "finished", status
    assert status["result"]["version"] == 1 and status["result"]["metrics"]["roc_auc"] >= 0.9

    held_cat, held_coffee = photo_files[f"{CAT}-held-out"][0], photo_files["coffee-held-out"][0]
    cat_score = get_custom_predictions_for_tag(str(held_cat), "cat")
    coffee_score = get_custom_predictions_for_tag(str(held_coffee), "cat")
    assert cat_score["score"] > coffee_score["score"] and cat_score["match"] and not coffee_score["match"]
    assert get_custom_predictions(str(held_cat))["custom"]["cat"]["score"] == cat_score["score"]
    everything = get_predictions(str(held_cat))
    assert "cat" in {k["name"] for k in everything["keywords"]}
    assert everything["custom"]["cat"]["match"]
    assert get_predictions_added("cat-0")["custom"]["cat"]["match"]
    assert get_predictions_added("coffee-0", "cat")["match"] is False
    assert curl(f"{host}/predict", "-X", "POST", "-F", f"data=@{held_cat}")["custom"]["cat"]["match"]

    state = subprocess.run(["curl", "-s", f"{host}/get_state"], check=True, capture_output=True).stdout
    (server.data_dir.parent / "state.tar").write_bytes(state)
    assert curl(f"{host}/custom/delete/cat") == {"tag": "cat", "deleted": True}
    assert get_custom_predictions(str(held_cat)) == {"custom": {}}
    loaded = curl(f"{host}/set_state", "-X", "POST", "-F", f"data=@{server.data_dir.parent / 'state.tar'}")
    assert [m["tag"] for m in loaded["loaded"]] == ["cat"]
    assert get_custom_predictions_for_tag(str(held_cat), "cat")["score"] == pytest.approx(cat_score["score"], abs=1e-6)

    for i in range(7):
        assign_image("positive", "cat", f"cat-{i}")
    for name in OTHERS:
        for i in range(3):
            assign_image("negative", "cat", f"{name}-{i}")
    retrained = wait_for(host, curl(f"{host}/custom/train/cat")["task_id"])
    assert retrained["result"]["version"] == 3 and retrained["result"]["metrics"]["fine_tuned_from"] == 2

    server.stop(signal.SIGKILL)
    server.start()
    assert wait_for(host, task["task_id"])["result"]["version"] == 1
    assert get_predictions_added("cat-0", "cat")["version"] == 3
    assert assign_image("positive", "cat", "cat-1")["positives"] == 7
    assert add_image(str(cats[2]), "cat-0")["error"] == "image_exists"  # other bytes than it holds
    assert get_custom_predictions_for_tag(str(held_cat), "cat")["match"]
