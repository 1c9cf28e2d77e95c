"""The ``tagsmith`` subcommands that talk to a server over HTTP, through ``tagsmith_client``."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TextIO

from tqdm import tqdm

from infra import xmp
from tagsmith_client import Client, TagsmithError, TaskStatus, default_url
from tagsmith_client.client import is_stream_path

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
            raise SystemExit(f"tagsmith: no such file or folder: {shown(name)}")
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


# Bidirectional overrides and isolates, and the line and paragraph separators: they reorder or
# break what follows them on a terminal.
_REORDERING = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


def shown(text: object) -> str:
    """``text`` for a terminal: control characters (a file name may hold escape sequences that
    retitle or recolour the terminal, or a newline that fakes a line) and bidirectional overrides
    written as escapes; other characters (an ideographic space, an emoji's joiner) as they are."""
    return "".join(c.encode("unicode_escape", "backslashreplace").decode()
                   if unicodedata.category(c) in ("Cc", "Cs") or c in _REORDERING else c for c in str(text))


def say(text: str, file: TextIO | None = None) -> None:
    """Print a line for a person as ``shown`` writes it: it holds what a server sent (a tag, a
    stage, an error, a caution), which the terminal must not take as escape sequences or lines."""
    print(shown(text), file=file or sys.stdout)


def refusal(error: TagsmithError) -> str:
    """A server's refusal as the command line prints it: message and code (and, for a missing or
    wrong API key, how to give one)."""
    hint = " Give the command the key with --api-key or TAGSMITH_API_KEY." if error.status == 401 else ""
    return f"{shown(error.message)} ({shown(error.code)}){hint}"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 image``, ``2 images``: a count and its noun, agreeing."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _terminal_width() -> int | None:
    """The width tables fit: ``$COLUMNS`` when set, else the terminal's; None (no limit) when the
    output is not a terminal (a file, a pipe)."""
    if os.environ.get("COLUMNS", "").isdigit() or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


MIN_COLUMN = 8


def _cut(text: str, width: int, keep_end: bool) -> str:
    if len(text) <= width:
        return text
    return "…" + text[len(text) - width + 1:] if keep_end else text[: width - 1] + "…"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], empty: str = "nothing to show",
           whole: Sequence[int] = ()) -> None:
    """Rows under a header and a rule, fitted to the terminal: the widest columns are cut
    (with "…"; the first keeps its end, as it is usually a path), never those in ``whole`` (ids a
    person copies). No rows: ``empty`` alone."""
    if not rows:
        print(empty)
        return
    cells = [[shown(c) for c in headers], *[[shown(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    room = _terminal_width()
    if room is not None:
        room -= 2 * (len(widths) - 1) + 1  # the gaps, and a column left free so lines never wrap
        least = [w if i in whole else min(w, max(MIN_COLUMN, len(h)))  # headers stay whole
                 for i, (w, h) in enumerate(zip(widths, cells[0], strict=True))]
        while sum(widths) > room:
            widest = max(range(len(widths)), key=lambda i: widths[i] - least[i])
            if widths[widest] <= least[widest]:
                break  # too narrow a terminal: lines wrap rather than lose every column
            widths[widest] -= 1
    for n, row in enumerate(cells):
        print("  ".join(_cut(c, w, i == 0).ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _bar(args: argparse.Namespace, **kwargs: Any) -> tqdm:
    kwargs.setdefault("disable", args.quiet)
    return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)


# Refusals that concern the file sent (corrupt, not an image, too large): the next file may well
# succeed. Any other (server unreachable or failing, API key, an unknown or invalid tag) would end
# the same way for every file, so the command stops there.
FILE_STATUSES = {400, 408, 413, 415}
REQUEST_CODES = {"invalid_tag", "invalid_type", "missing_parameter", "image_ids_mismatch", "too_many_files"}


def about_the_file(error: TagsmithError) -> bool:
    """Whether a refusal concerns the file sent rather than every request alike."""
    return error.status in FILE_STATUSES and error.code not in REQUEST_CODES


def _failure(path: Path, error: TagsmithError | OSError) -> dict[str, Any]:
    """A failed file's row: the server's code, message and status, or ``unreadable_file`` (status
    null) for a file that could not be read here."""
    if isinstance(error, TagsmithError):
        return {"path": str(path), "error": error.code, "message": error.message, "status": error.status}
    return {"path": str(path), "error": "unreadable_file", "message": error.strerror or str(error), "status": None}


def _stopped(error: TagsmithError, left: int, total: int) -> None:
    """The refusal that stopped a command over many files, and how many it did not get to."""
    rest = f"; stopped with {left} of {_count(total, 'file')} not done" if total > 1 else ""
    print(f"tagsmith: {refusal(error)}{rest}", file=sys.stderr)


def _add_batch(client: Client, batch: list[Path], args: argparse.Namespace,
               sample_type: str | None) -> list[dict[str, Any]]:
    """One add_many request for the batch: a row per file, in order. A file that cannot be read here
    gets its own row; a batch the server finds too large as a whole is sent again one file at a
    time. Raises ``TagsmithError`` for a refusal that would end the same way for every file."""
    rows: dict[Path, dict[str, Any]] = {}
    with contextlib.ExitStack() as files:
        opened: list[tuple[Path, IO[bytes]]] = []
        for path in batch:
            try:
                opened.append((path, files.enter_context(open(path, "rb"))))
            except OSError as exc:
                rows[path] = _failure(path, exc)
        if opened:
            ids = [id_from_name(p) for p, _ in opened] if args.ids_from_names else None
            try:
                answer = client.add_images([f for _, f in opened], image_ids=ids, tag=args.tag,
                                           sample_type=sample_type)
            except TagsmithError as exc:
                if len(opened) > 1 and (exc.status == 413 or exc.code == "too_many_files"):
                    files.close()
                    for path, _ in opened:
                        rows[path] = _add_batch(client, [path], args, sample_type)[0]
                elif about_the_file(exc):
                    rows[opened[0][0]] = _failure(opened[0][0], exc)
                else:
                    raise
            except OSError as exc:  # a file that opened but cannot be read: each again alone, to find it
                if len(opened) == 1:
                    rows[opened[0][0]] = _failure(opened[0][0], exc)
                else:
                    files.close()
                    for path, _ in opened:
                        rows[path] = _add_batch(client, [path], args, sample_type)[0]
            else:
                for (path, _), item in zip(opened, answer["images"], strict=True):
                    rows[path] = {**item, "path": str(path)}
    return [rows[path] for path in batch]


def cmd_add(client: Client, args: argparse.Namespace) -> int:
    files = image_files(args.paths)
    if not files:
        raise SystemExit("tagsmith: no image files found")
    sample_type = "positive" if args.positive else "negative" if args.negative else None
    if bool(args.tag) != bool(sample_type):
        raise SystemExit("tagsmith: give --tag together with --positive or --negative")
    results: list[dict[str, Any]] = []
    stopped: TagsmithError | None = None
    with _bar(args, total=len(files), unit="image", desc="adding") as bar:
        for batch in _batches(files, args.batch):
            try:
                results += _add_batch(client, batch, args, sample_type)
            except TagsmithError as exc:
                stopped = exc
                break
            bar.update(len(batch))
    failed = [r for r in results if "error" in r]
    if args.json:
        _print_json(results)
    else:
        added = [r for r in results if "error" not in r]
        if added and not args.ids_from_names:  # the server chose the ids: say which file got which
            _table(["file", "image id", ""], [[r["path"], r["image_id"], "stored already" if r.get("duplicate") else ""]
                                              for r in added], whole=(1,))
        for r in failed:
            print(f"{shown(r['path'])}: {shown(r['message'])} ({shown(r['error'])})", file=sys.stderr)
        stored = sum(1 for r in added if r.get("duplicate"))
        if args.tag:  # each is an example now, stored before or not
            done = f"added {_count(len(added), 'image')} as {sample_type} examples of '{args.tag}'"
            done += f" ({stored} of them stored already)" if stored else ""
        else:  # a file stored already adds nothing
            done = f"added {_count(len(added) - stored, 'image')}" + (f"; {stored} stored already" if stored else "")
        if results or stopped is None:
            say(done + (f"; {len(failed)} failed" if failed else ""))
    if stopped is not None:
        _stopped(stopped, len(files) - len(results), len(files))
    return 1 if failed or stopped else 0


def _ids(ids: Sequence[str], most: int = 10) -> str:
    return ", ".join(ids[:most]) + (f" and {len(ids) - most} more" if len(ids) > most else "")


def _each_image(image_ids: Sequence[str], act: Callable[[str], dict[str, Any]],
                did: str) -> tuple[dict[str, Any] | None, int]:
    """``act`` on each image id in turn. A refusal stops there, saying which image it was about,
    which images were done before it (``did``, e.g. "deleted {images}") and which were not tried.
    Returns the last answer (None if none) and the exit code."""
    answer = None
    for n, image_id in enumerate(image_ids):
        try:
            answer = act(image_id)
        except TagsmithError as exc:
            print(f"tagsmith: {shown(image_id)}: {refusal(exc)}", file=sys.stderr)
            done, rest = image_ids[:n], image_ids[n + 1:]
            if done or rest:
                line = f"tagsmith: before that, {did.replace('{images}', _count(n, 'image'), 1)}"
                line += f": {_ids(done)}" if done else ""
                print(line + (f"; not tried: {_ids(rest)}" if rest else ""), file=sys.stderr)
            return answer, 1
    return answer, 0


def _examples_line(tag: str, answer: dict[str, Any]) -> str:
    return (f"'{tag}' has {_count(answer['positives'], 'positive example')} and "
            f"{_count(answer['negatives'], 'negative example')}")


def cmd_assign(client: Client, args: argparse.Namespace) -> int:
    answer, code = _each_image(args.image_ids, lambda i: dict(client.assign_image(args.type, args.tag, i)),
                               f"assigned {{images}} to '{args.tag}' as {args.type}")
    if answer is not None:
        say(_examples_line(args.tag, answer))
    return code


def cmd_unassign(client: Client, args: argparse.Namespace) -> int:
    answer, code = _each_image(args.image_ids, lambda i: client.unassign_image(i, args.tag),
                               f"unassigned {{images}} from '{args.tag}'")
    if answer is not None:
        say(_examples_line(args.tag, answer))
    return code


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
            say(task["task_id"])
        return 0
    layout = "{desc:<10} {percentage:3.0f}%|{bar}| {elapsed}"
    with _bar(args, total=100, unit="%", desc="queued", bar_format=layout) as bar:
        def show(status: TaskStatus) -> None:
            # The stage and the percentage change together, in one frame: a finished task is
            # "done 100%" (never a "done 0%" frame between the two), whatever progress it reports.
            finished = status.get("status") == "finished"
            bar.n = 100 if finished else min(100, max(0, round(100 * float(status.get("progress") or 0.0))))
            bar.set_description_str(shown(status.get("stage") or status.get("status")), refresh=False)
            bar.refresh()

        final = client.wait(task["task_id"], timeout=args.timeout, on_progress=show)
        show(final)  # the bar ends at 100%, "done"
    if args.json:
        _print_json(final)
    else:
        say(f"trained '{args.tag}' {_metrics_line(final['result'])}")
        if final["result"].get("caution"):
            say(final["result"]["caution"])
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    status = client.status(args.task_id)
    if args.json:
        _print_json(status)
    else:
        say(f"{status['tag']}: {status['status']} ({status['stage']}, {100 * status['progress']:.0f}%)")
        if status.get("result"):
            say(_metrics_line(status["result"]))
        if status.get("error"):
            say(status["error"])
    return 0


def _check_mark() -> str:
    """✓ where standard output can print it, else *."""
    try:
        "✓".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "*"
    return "✓"


def _custom_cell(custom: dict[str, Any]) -> str:
    """Matched tags first, marked: ``cat ✓ 0.93, dog 0.12``."""
    mark = _check_mark()
    ordered = sorted(custom.items(), key=lambda item: not item[1]["match"])  # stable: best first within each
    return ", ".join(f"{tag} {mark} {s['score']:.2f}" if s["match"] else f"{tag} {s['score']:.2f}"
                     for tag, s in ordered) or "-"


def _style_name(name: str) -> str:
    return name.replace("_", " ")


def _predict_one(client: Client, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    if args.tag:
        return client.predict_custom(path, args.tag)
    if args.custom:
        return client.predict_custom(path)
    return dict(client.predict(path))


def sidecar_keywords(answer: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What ``--xmp`` writes for one prediction: the matched custom tags (best first), then the base
    keywords (labels and their parents, best first); only the custom tags with ``--custom``, only
    the tag with ``--tag`` (if it matches)."""
    if args.tag:
        return [str(answer["tag"])] if answer["match"] else []
    custom = [tag for tag, score in answer.get("custom", {}).items() if score["match"]]
    return custom + [str(k["name"]) for k in answer.get("keywords", [])]


def _write_sidecar(path: Path, answer: dict[str, Any], args: argparse.Namespace) -> dict[str, str]:
    sidecar = xmp.sidecar_path(path)
    try:
        return {"path": str(sidecar), "result": xmp.write_keywords(sidecar, sidecar_keywords(answer, args))}
    except xmp.XmpError as exc:
        return {"path": str(sidecar), "error": f"left as it was: {exc}"}
    except OSError as exc:
        return {"path": str(sidecar), "error": f"not written: {exc.strerror or exc}"}


def _sidecar_summary(results: Counter[str]) -> str:
    written = results["created"] + results["merged"]
    line = f"wrote {written} XMP sidecar{'' if written == 1 else 's'}"
    if results["merged"]:
        line += f" ({results['merged']} merged into existing ones)"
    if results["unchanged"]:
        line += f"; {results['unchanged']} left unchanged (nothing new to add)"
    return line + (f"; {results['error']} failed" if results["error"] else "")


def cmd_predict(client: Client, args: argparse.Namespace) -> int:
    files = image_files(args.paths)
    rows: list[dict[str, Any]] = []
    sidecars: Counter[str] = Counter()
    stopped: TagsmithError | None = None
    for path in _bar(args, iterable=files, unit="image", desc="predicting", disable=args.quiet or len(files) < 2):
        try:
            answer = _predict_one(client, path, args)
        except TagsmithError as exc:
            if not about_the_file(exc):
                stopped = exc
                break
            row = _failure(path, exc)
        except OSError as exc:  # the file could not be read here
            row = _failure(path, exc)
        else:
            row = {"path": str(path), **answer}
            if args.xmp:
                row["xmp"] = _write_sidecar(path, answer, args)
                sidecars[row["xmp"].get("result", "error")] += 1
        rows.append(row)
        if args.json:  # JSON Lines, each as soon as it is known
            tqdm.write(json.dumps(row, ensure_ascii=False), file=sys.stdout)
            sys.stdout.flush()
    good = [r for r in rows if "error" not in r]
    failed = [r for r in rows if "error" in r]
    if not args.json:
        if good and args.tag:
            _table(["file", "score", "match", "threshold", "version"],
                   [[r["path"], f"{r['score']:.3f}", "yes" if r["match"] else "no", f"{r['threshold']:.3f}",
                     r["version"]] for r in good])
        elif good and args.custom:
            _table(["file", f"custom tags ({_check_mark()} match)"],
                   [[r["path"], _custom_cell(r["custom"])] for r in good])
        elif good:
            _table(["file", f"custom tags ({_check_mark()} match)", "keywords", "styles"], [
                [r["path"], _custom_cell(r["custom"]), ", ".join(k["name"] for k in r["keywords"][:5]) or "-",
                 ", ".join(_style_name(s["name"]) for s in r["styles"]) or "-"]
                for r in good])
        for r in failed:
            print(f"{shown(r['path'])}: {shown(r['message'])} ({shown(r['error'])})", file=sys.stderr)
    for r in good:
        if "error" in r.get("xmp", {}):
            print(f"{shown(r['xmp']['path'])}: {shown(r['xmp']['error'])}", file=sys.stderr)
    if args.xmp:
        say(_sidecar_summary(sidecars), file=sys.stderr if args.json else sys.stdout)
    if failed and not args.json:
        say(f"{len(failed)} of {_count(len(rows), 'file')} failed", file=sys.stderr)
    if stopped is not None:
        _stopped(stopped, len(files) - len(rows), len(files))
    return 1 if failed or stopped or sidecars["error"] else 0


def _wrote(path: str, line: str) -> None:
    """Say what was written, on stdout unless the file was a stream that may be stdout itself
    (``-o /dev/stdout``), where the line would join the data."""
    say(line, file=sys.stderr if is_stream_path(Path(path)) else sys.stdout)


def cmd_export(client: Client, args: argparse.Namespace) -> int:
    data = client.get_state(args.tag)
    if args.output == "-":
        sys.stdout.buffer.write(data)
    else:
        Path(args.output).write_bytes(data)
        _wrote(args.output, f"wrote {args.output} ({len(data)} bytes)")
    return 0


def cmd_export_onnx(client: Client, args: argparse.Namespace) -> int:
    size = client.export_onnx(args.output, args.tag)
    which = ", ".join(f"'{t}'" for t in args.tag) if args.tag else "every tag with a model"
    _wrote(args.output, f"wrote {args.output} ({size} bytes): the backbone and the current models of {which}")
    return 0


def cmd_load(client: Client, args: argparse.Namespace) -> int:
    loaded = client.set_state(args.archive)["loaded"]
    for model in loaded:
        origin = model.get("origin") or {}
        was = f" (version {origin['version']} in the archive)" if "version" in origin else ""
        say(f"loaded '{model['tag']}' as version {model['version']}{was}")
    if not loaded:
        say("the archive holds no models")
    return 0


def cmd_backup(client: Client, args: argparse.Namespace) -> int:
    size = client.backup(args.file)
    _wrote(args.file, f"wrote {args.file} ({size} bytes)")
    return 0


def cmd_restore(client: Client, args: argparse.Namespace) -> int:
    answer = client.restore(args.file)
    if args.json:
        _print_json(answer)
    else:
        versions = sum(len(t["versions"]) for t in answer["tags"])
        say(f"restored {_count(answer['images'], 'image')}, {_count(len(answer['tags']), 'tag')} and "
              f"{_count(versions, 'model version')}")
    return 0


def _summary(model: dict[str, Any] | None) -> str:
    if not model:
        return "-"
    m = model.get("metrics", {})
    return f"v{model['version']}" + (f" (ROC AUC {m['roc_auc']:.2f}, F1 {m['f1']:.2f})" if "roc_auc" in m else "")


def cmd_tags(client: Client, args: argparse.Namespace) -> int:
    tags = client.tags(contains=args.contains or "")
    if args.json:
        _print_json(tags)
    else:
        _table(["tag", "positives", "negatives", "model"],
               [[t["tag"], t["positives"], t["negatives"], _summary(t["model"])] for t in tags],
               empty=f"no tag's name holds '{shown(args.contains)}'" if args.contains else "no tags yet")
    return 0


def cmd_versions(client: Client, args: argparse.Namespace) -> int:
    answer = client.versions(args.tag)
    if args.json:
        _print_json(answer)
        return 0
    if not answer["versions"]:
        say(f"'{args.tag}' has no trained versions yet")
        return 0
    rows = []
    for v in answer["versions"]:
        m = v["metrics"]
        rows.append([f"{v['version']}{' *' if v['current'] else ''}", v["trained_at"], _origin(m.get("origin")),
                     f"{m.get('positives', '?')}/{m.get('negatives', '?')}",
                     *(f"{m[k]:.2f}" if isinstance(m.get(k), (int, float)) else "-"
                       for k in ("roc_auc", "f1", "precision", "recall")),
                     f"{v['threshold']:.3f}"])
    _table(["version", "trained at", "origin", "pos/neg", "ROC AUC", "F1", "precision", "recall", "threshold"],
           rows)
    current = next((v for v in answer["versions"] if v["current"]), None)
    if current and current.get("caution"):
        print()
        say(f"version {current['version']}: {current['caution']}")
    return 0


def _origin(origin: Any) -> str:
    """Where a version came from: trained on this server, or loaded (``metrics.origin``)."""
    if not isinstance(origin, dict):
        return "trained here"
    return f"loaded (was v{origin['version']})" if "version" in origin else "loaded"


def cmd_rollback(client: Client, args: argparse.Namespace) -> int:
    answer = client.rollback(args.tag, args.version)
    say(f"'{args.tag}' now uses version {answer['version']} (was {answer['previous']})")
    return 0


def cmd_suggest(client: Client, args: argparse.Namespace) -> int:
    answer = client.suggest(args.tag, args.limit)
    if args.json:
        _print_json(answer)
        return 0
    for title, key, none in (("label these next (the model is unsure; nearest the threshold first)", "uncertain",
                              "none: the model is sure of every unlabelled image"),
                             ("likely positives", "likely_positive", "no images")):
        say(f"{title}:")
        _table(["image", "score"], [[s["image_id"], f"{s['score']:.3f}"] for s in answer[key]], empty=none)
        print()
    return 0


def cmd_find(client: Client, args: argparse.Namespace) -> int:
    query = {"tag": args.tag, "match": args.match, "min_score": args.min_score, "label": args.label,
             "all": args.all_of, "any": args.any_of, "none": args.none_of, "filename": args.filename,
             "sort": args.sort, "order": args.order}
    found = list(itertools.islice(client.iter_images(min(args.limit, 500), **query), args.limit))
    if args.json:
        _print_json(found)
        return 0
    headers = ["image", "file name", "added"] + (["score", "match", "label"] if args.tag else [])
    rows = [[i["image_id"], i.get("filename", ""), i.get("created_at", "")]
            + ([_score(i.get("score")), "yes" if i.get("match") else "", i.get("label") or ""] if args.tag else [])
            for i in found]
    _table(headers, rows, empty="no images match")
    return 0


def _score(value: float | None) -> str:
    return "not yet scored" if value is None else f"{value:.3f}"


def cmd_similar(client: Client, args: argparse.Namespace) -> int:
    answer = client.similar(args.image_id, args.limit)
    if args.json:
        _print_json(answer)
        return 0
    _table(["image", "file name", "similarity"],
           [[i["image_id"], i.get("filename", ""), f"{i['similarity']:.3f}"] for i in answer["similar"]],
           empty="no similar images (no other image is embedded yet)")
    return 0


def cmd_library(client: Client, args: argparse.Namespace) -> int:
    answer = client.library(args.tag)
    if args.json:
        _print_json(answer)
        return 0
    say(f"{_count(answer['images'], 'image')}: {answer['embedded']} embedded, "
          f"{answer['pending']} waiting for a worker")
    _table(["tag", "version", "library scored with"],
           [[tag, t["version"], t["scores_from"] if t["up_to_date"] else f"{t['scores_from'] or '-'} (rescoring)"]
            for tag, t in answer["tags"].items()], empty="no tag has a model yet")
    return 0


def cmd_export_scores(client: Client, args: argparse.Namespace) -> int:
    if args.output == "-":
        written = client.export_scores(sys.stdout.buffer, args.format, args.tag, args.match)
    else:
        written = client.save_scores(args.output, args.format, args.tag, args.match)
        say(f"wrote {args.output} ({written} bytes)", file=sys.stderr)
    return 0


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    client.delete(args.tag)
    say(f"reset '{args.tag}'")
    return 0


def cmd_delete_image(client: Client, args: argparse.Namespace) -> int:
    deleted: list[str] = []

    def delete(image_id: str) -> dict[str, Any]:
        answer = client.delete_image(image_id)
        deleted.append(image_id)
        return answer

    _, code = _each_image(args.image_ids, delete, "deleted {images}")
    if code == 0:
        say(f"deleted {_count(len(deleted), 'image')}")
    return code


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the client subcommands; each gets ``--url``, ``--json`` and ``--quiet``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=default_url(),
                        help="tagsmith server (default $TAGSMITH_URL, else $TAGSMITH_HOST and $TAGSMITH_PORT "
                        "as serve reads them: %(default)s)")
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
    p.epilog = ("Every file is predicted: a file the server refuses (corrupt, not an image, too large) is listed "
                "with the server's reason, and the command then exits 1. With --json, one JSON object per line "
                "and file: the path and the prediction, or the path and the error (error, message, status). "
                "Sidecars (--xmp) are for darktable and digiKam: Lightroom reads sidecars of raw files only.")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--tag", help="only this custom tag")
    which.add_argument("--custom", action="store_true", help="only the custom tags")
    p.add_argument("--xmp", action="store_true",
                   help="write the matched custom tags and the base keywords (with --custom: the matched tags; "
                        "with --tag: the tag if it matches) into an XMP sidecar beside each photo, named after the "
                        "whole file name as darktable and digiKam expect: photo.jpg.xmp, as dc:subject and "
                        "lr:hierarchicalSubject. An existing sidecar is merged, never replaced: everything in it "
                        "stays and only keywords it lacks are added")
    p = add("export", cmd_export, "export the current models as a state archive")
    p.add_argument("-o", "--output", default="tagsmith-state.tar", help="file to write, '-' for stdout")
    p.add_argument("--tag", help="only this tag")
    p = add("export-onnx", cmd_export_onnx,
            "export the backbone and the current custom models as one ONNX file for devices")
    p.add_argument("-o", "--output", default="tagsmith-edge.onnx", help="file to write (default %(default)s)")
    p.add_argument("--tag", action="append", default=[], help="only this tag (repeatable; default every tag)")
    p = add("load", cmd_load, "load models from a state archive")
    p.add_argument("archive")
    p = add("backup", cmd_backup, "back up everything taught: images, examples, every model version")
    p.add_argument("file", help="file to write (replaced only once the whole backup has arrived)")
    p = add("restore", cmd_restore, "restore a backup into an empty server")
    p.add_argument("file")
    p = add("tags", cmd_tags, "list tags with their example counts and current models")
    p.add_argument("--contains", help="only tags whose name holds this text (any case)")
    p = add("versions", cmd_versions, "list a tag's model versions with their metrics (* marks the current one)")
    p.add_argument("tag")
    p = add("rollback", cmd_rollback, "make an earlier version of a tag's model current again")
    p.add_argument("tag")
    p.add_argument("version", type=int)
    p = add("suggest", cmd_suggest, "unlabelled images to label next for a tag")
    p.add_argument("tag")
    p.add_argument("--limit", type=int, default=10)
    p = add("find", cmd_find, "search the library: images a tag matches, labelled or not, by file name")
    p.add_argument("--tag", help="show each image's score, match and label for this tag; the filters use it")
    p.add_argument("--match", action=argparse.BooleanOptionalAction, default=None,
                   help="only images the tag matches (--no-match: scored below its threshold)")
    p.add_argument("--min-score", type=float)
    p.add_argument("--label", choices=["positive", "negative", "none"], help="only images labelled so for --tag")
    p.add_argument("--all", dest="all_of", action="append", metavar="TAG", help="only images this tag matches too")
    p.add_argument("--any", dest="any_of", action="append", metavar="TAG", help="only images one of these tags matches")
    p.add_argument("--none", dest="none_of", action="append", metavar="TAG", help="only images this tag does not match")
    p.add_argument("--filename", help="only images whose file name contains this")
    p.add_argument("--sort", choices=["score", "date"])
    p.add_argument("--order", choices=["desc", "asc"])
    p.add_argument("--limit", type=int, default=50, help="how many to show (default 50)")
    p = add("similar", cmd_similar, "stored images most like a stored image")
    p.add_argument("image_id")
    p.add_argument("--limit", type=int, default=20)
    p = add("library", cmd_library, "how far the workers are with embedding and scoring the library")
    p.add_argument("--tag", action="append", default=[], help="only this tag (repeatable; default every tag with a model)")
    p = add("export-scores", cmd_export_scores, "every library image's score for every tag, as CSV or JSON lines")
    p.add_argument("-o", "--output", default="-", help="the file to write (default: standard output)")
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    p.add_argument("--tag", action="append", default=[], help="only this tag (repeatable)")
    p.add_argument("--match", action="store_true", help="only the rows where the tag matches")
    p = add("delete", cmd_delete, "reset a tag: its models and assignments go, the images stay")
    p.add_argument("tag")
    p = add("delete-image", cmd_delete_image, "delete stored images")
    p.add_argument("image_ids", nargs="+")
