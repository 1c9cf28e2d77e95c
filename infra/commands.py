"""The ``tagsmith`` subcommands that talk to a server over HTTP, through ``tagsmith_client``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tagsmith_client import DEFAULT_URL, Client, TaskStatus

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
BATCH_BYTES = 16 * 1024 * 1024


def image_files(paths: Sequence[str]) -> list[Path]:
    """Files named, plus the image files (by suffix) anywhere under folders named, sorted."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"tagsmith: no such file or folder: {name}")
    return found


def _batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    total = 0
    for path in files:
        length = path.stat().st_size
        if batch and (len(batch) >= size or total + length > BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(path)
        total += length
    if batch:
        yield batch


def id_from_name(path: Path) -> str:
    """An image id from a file name: its stem, with characters ids cannot hold replaced by '-'."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "-" for c in path.stem)
    return cleaned.lstrip("_.-")[:128] or "image"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _bar(args: argparse.Namespace, **kwargs: Any) -> tqdm:
    kwargs.setdefault("disable", args.quiet)
    return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)


def cmd_add(client: Client, args: argparse.Namespace) -> int:
    files = image_files(args.paths)
    if not files:
        raise SystemExit("tagsmith: no image files found")
    sample_type = "positive" if args.positive else "negative" if args.negative else None
    if bool(args.tag) != bool(sample_type):
        raise SystemExit("tagsmith: give --tag together with --positive or --negative")
    results: list[dict[str, Any]] = []
    with _bar(args, total=len(files), unit="image", desc="adding") as bar:
        for batch in _batches(files, args.batch):
            ids = [id_from_name(p) for p in batch] if args.ids_from_names else None
            answer = client.add_images(batch, image_ids=ids, tag=args.tag, sample_type=sample_type)
            for path, item in zip(batch, answer["images"], strict=True):
                results.append({**item, "path": str(path)})
            bar.update(len(batch))
    failed = [r for r in results if "error" in r]
    if args.json:
        _print_json(results)
    else:
        for r in failed:
            print(f"{r['path']}: {r['message']} ({r['error']})", file=sys.stderr)
        where = f" as {sample_type} examples of '{args.tag}'" if args.tag else ""
        print(f"added {len(results) - len(failed)} images{where}" + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


def cmd_assign(client: Client, args: argparse.Namespace) -> int:
    for image_id in args.image_ids:
        answer = client.assign_image(args.type, args.tag, image_id)
    print(f"'{args.tag}' has {answer['positives']} positive and {answer['negatives']} negative examples")
    return 0


def cmd_unassign(client: Client, args: argparse.Namespace) -> int:
    for image_id in args.image_ids:
        answer = client.unassign_image(image_id, args.tag)
    print(f"'{args.tag}' has {answer['positives']} positive and {answer['negatives']} negative examples")
    return 0


def _metrics_line(result: dict[str, Any]) -> str:
    m = result.get("metrics", {})
    scores = ", ".join(f"{name} {m[key]:.2f}" for key, name in
                       (("roc_auc", "ROC AUC"), ("f1", "F1"), ("precision", "precision"), ("recall", "recall"))
                       if key in m)
    examples = f"{m.get('positives', '?')} positive / {m.get('negatives', '?')} negative"
    return f"version {result['version']}: {scores or 'no cross-validation (too few examples)'}; " \
           f"threshold {result['threshold']:.3f}; {examples}"


def cmd_train(client: Client, args: argparse.Namespace) -> int:
    task = client.train(args.tag)
    if not args.wait:
        if args.json:
            _print_json(task)
        else:
            print(task["task_id"])
        return 0
    layout = "{desc:<10} {percentage:3.0f}%|{bar}| {elapsed}"
    with _bar(args, total=100, unit="%", desc="queued", bar_format=layout) as bar:
        def show(status: TaskStatus) -> None:
            bar.set_description_str(str(status.get("stage") or status.get("status")))
            bar.update(round(100 * float(status.get("progress", 0.0))) - bar.n)

        final = client.wait(task["task_id"], timeout=args.timeout, on_progress=show)
        show(final)  # the bar ends at 100%, "done"
    if args.json:
        _print_json(final)
    else:
        print(f"trained '{args.tag}' {_metrics_line(final['result'])}")
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    status = client.status(args.task_id)
    if args.json:
        _print_json(status)
    else:
        line = f"{status['tag']}: {status['status']} ({status['stage']}, {100 * status['progress']:.0f}%)"
        if status.get("result"):
            line += f"\n{_metrics_line(status['result'])}"
        if status.get("error"):
            line += f"\n{status['error']}"
        print(line)
    return 0


def _custom_cell(custom: dict[str, Any]) -> str:
    return ", ".join(f"{tag} {s['score']:.2f}{'' if s['match'] else ' (no)'}" for tag, s in custom.items()) or "-"


def cmd_predict(client: Client, args: argparse.Namespace) -> int:
    files = image_files(args.paths)
    answers: dict[str, Any] = {}
    for path in _bar(args, iterable=files, unit="image", desc="predicting", disable=args.quiet or len(files) < 2):
        if args.tag:
            answers[str(path)] = client.predict_custom(path, args.tag)
        elif args.custom:
            answers[str(path)] = client.predict_custom(path)
        else:
            answers[str(path)] = client.predict(path)
    if args.json:
        _print_json(answers)
    elif args.tag:
        _table(["file", "score", "match", "threshold", "version"],
               [[p, f"{a['score']:.3f}", "yes" if a["match"] else "no", f"{a['threshold']:.3f}", a["version"]]
                for p, a in answers.items()])
    elif args.custom:
        _table(["file", "custom tags"], [[p, _custom_cell(a["custom"])] for p, a in answers.items()])
    else:
        _table(["file", "custom tags", "keywords", "styles"], [
            [p, _custom_cell(a["custom"]), ", ".join(k["name"] for k in a["keywords"][:5]) or "-",
             ", ".join(s["name"] for s in a["styles"]) or "-"]
            for p, a in answers.items()])
    return 0


def cmd_export(client: Client, args: argparse.Namespace) -> int:
    data = client.get_state(args.tag)
    if args.output == "-":
        sys.stdout.buffer.write(data)
    else:
        Path(args.output).write_bytes(data)
        print(f"wrote {args.output} ({len(data)} bytes)")
    return 0


def cmd_load(client: Client, args: argparse.Namespace) -> int:
    loaded = client.set_state(args.archive)["loaded"]
    for model in loaded:
        print(f"loaded '{model['tag']}' as version {model['version']}")
    if not loaded:
        print("the archive holds no models")
    return 0


def _summary(model: dict[str, Any] | None) -> str:
    if not model:
        return "-"
    m = model.get("metrics", {})
    return f"v{model['version']}" + (f" (ROC AUC {m['roc_auc']:.2f}, F1 {m['f1']:.2f})" if "roc_auc" in m else "")


def cmd_tags(client: Client, args: argparse.Namespace) -> int:
    tags = client.tags()
    if args.json:
        _print_json(tags)
    else:
        _table(["tag", "positives", "negatives", "model"],
               [[t["tag"], t["positives"], t["negatives"], _summary(t["model"])] for t in tags])
    return 0


def cmd_versions(client: Client, args: argparse.Namespace) -> int:
    answer = client.versions(args.tag)
    if args.json:
        _print_json(answer)
        return 0
    rows = []
    for v in answer["versions"]:
        m = v["metrics"]
        rows.append([f"{v['version']}{' *' if v['current'] else ''}", v["trained_at"],
                     f"{m.get('positives', '?')}/{m.get('negatives', '?')}",
                     *(f"{m[k]:.2f}" if k in m else "-" for k in ("roc_auc", "f1", "precision", "recall")),
                     f"{v['threshold']:.3f}"])
    _table(["version", "trained at", "pos/neg", "ROC AUC", "F1", "precision", "recall", "threshold"], rows)
    return 0


def cmd_rollback(client: Client, args: argparse.Namespace) -> int:
    answer = client.rollback(args.tag, args.version)
    print(f"'{args.tag}' now uses version {answer['version']} (was {answer['previous']})")
    return 0


def cmd_suggest(client: Client, args: argparse.Namespace) -> int:
    answer = client.suggest(args.tag, args.limit)
    if args.json:
        _print_json(answer)
        return 0
    for title, key in (("label these next (least certain)", "uncertain"), ("likely positives", "likely_positive")):
        print(f"{title}:")
        _table(["image", "score"], [[s["image_id"], f"{s['score']:.3f}"] for s in answer[key]])
        print()
    return 0


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    client.delete(args.tag)
    print(f"reset '{args.tag}'")
    return 0


def cmd_delete_image(client: Client, args: argparse.Namespace) -> int:
    for image_id in args.image_ids:
        client.delete_image(image_id)
    print(f"deleted {len(args.image_ids)} images")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the client subcommands; each gets ``--url``, ``--json`` and ``--quiet``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("TAGSMITH_URL") or DEFAULT_URL,
                        help="tagsmith server (default $TAGSMITH_URL or %(default)s)")
    common.add_argument("--api-key", default=os.environ.get("TAGSMITH_API_KEY") or None,
                        help="API key, when the server needs one (default $TAGSMITH_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    def add(name: str, run: Any, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(client_command=run)
        return parser

    p = add("add", cmd_add, "add image files, or every image in folders, optionally as examples of a tag")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--tag", help="assign the images to this tag")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--positive", action="store_true", help="as positive examples")
    kind.add_argument("--negative", action="store_true", help="as negative examples")
    p.add_argument("--ids-from-names", action="store_true", help="use each file's name as its image id")
    p.add_argument("--batch", type=int, default=16, help="images per request (default %(default)s)")
    p = add("assign", cmd_assign, "make stored images positive or negative examples of a tag")
    p.add_argument("type", choices=["positive", "negative"])
    p.add_argument("tag")
    p.add_argument("image_ids", nargs="+")
    p = add("unassign", cmd_unassign, "make stored images no examples of a tag")
    p.add_argument("tag")
    p.add_argument("image_ids", nargs="+")
    p = add("train", cmd_train, "train a tag's model")
    p.add_argument("tag")
    p.add_argument("--wait", action="store_true", help="wait for the training, showing its progress")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    p = add("status", cmd_status, "show a training task's state")
    p.add_argument("task_id")
    p = add("predict", cmd_predict, "predict keywords, styles and custom tags for image files or folders")
    p.add_argument("paths", nargs="+")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--tag", help="only this custom tag")
    which.add_argument("--custom", action="store_true", help="only the custom tags")
    p = add("export", cmd_export, "export the current models as a state archive")
    p.add_argument("-o", "--output", default="tagsmith-state.tar", help="file to write, '-' for stdout")
    p.add_argument("--tag", help="only this tag")
    p = add("load", cmd_load, "load models from a state archive")
    p.add_argument("archive")
    add("tags", cmd_tags, "list tags with their example counts and current models")
    p = add("versions", cmd_versions, "list a tag's model versions with their metrics (* marks the current one)")
    p.add_argument("tag")
    p = add("rollback", cmd_rollback, "make an earlier version of a tag's model current again")
    p.add_argument("tag")
    p.add_argument("version", type=int)
    p = add("suggest", cmd_suggest, "unlabelled images to label next for a tag")
    p.add_argument("tag")
    p.add_argument("--limit", type=int, default=10)
    p = add("delete", cmd_delete, "reset a tag: its models and assignments go, the images stay")
    p.add_argument("tag")
    p = add("delete-image", cmd_delete_image, "delete stored images")
    p.add_argument("image_ids", nargs="+")
