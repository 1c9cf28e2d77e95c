"""State archives: a tar of ``manifest.json`` plus one safetensors file per model.

``unpack`` validates everything (member types, names, sizes, the manifest, the backbone,
tensor shapes and values) before it returns anything, so a caller that publishes only what
``unpack`` returned publishes all of a valid archive or nothing. Never pickle.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, TypeGuard

import numpy as np
import orjson
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from shared.core.errors import DomainError, InvalidInput, TooLarge
from shared.core.names import validate_tag
from shared.models.backbone import BackboneSpec
from shared.models.heads import FORMS, MOST_WRONG, Head

FORMAT = "tagsmith-state"
# What a backup's manifest says it is (shared/domain/backup.py): named here, beside the state
# archive's, so that reading a backup as a state archive can say where it goes instead.
BACKUP_FORMAT = "tagsmith-backup"
# Version 2: heads span the semantic and style embeddings. Version 1 heads span the semantic
# embedding only; they load as "semantic" heads with zero style weights.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# A model's metrics travel in Redis and in every /custom/tags answer: kept small.
MAX_METRICS_BYTES = 64 * 1024
# How deeply metrics may nest (training writes 3 levels): answers wrap them in a few more, and the
# JSON encoder stops at 255.
MAX_METRICS_DEPTH = 8
# Objects and lists a model's manifest entry may open, counted as its '{' and '[' bytes: training
# writes about 20 (the entry, its metrics, the losses of each form and strength, most_wrong's
# examples), and a tag's name may hold 64 brackets. One model's metrics may hold at most
# MAX_METRICS_CONTAINERS, so that what a load of many models stores (each model alone, in its own
# archive) reads back, and a backup of it restores.
CONTAINERS_PER_MODEL = 128
MAX_METRICS_CONTAINERS = 1024
# metrics["origin"] of a version loaded from a state archive (shared.domain.state.with_origin):
# these fields, each text of at most ORIGIN_TEXT_LENGTH characters, or for "version" a version
# number. It is not counted in MAX_METRICS_BYTES (it is small and bounded here), so a load that
# adds it to metrics at the limit still makes an archive that reads back.
ORIGIN_FIELDS = {"loaded_from": str, "version": int, "trained_at": str, "loaded_at": str}
ORIGIN_TEXT_LENGTH = 64
# The highest model version an archive or a backup may bring, checked before anything is stored:
# Redis's scripts compare versions as doubles, exact up to 2^53 (a version beyond it trained into
# one that never became current, and the backup no longer restored); 2^52 leaves room for as many
# trainings after it.
MAX_VERSION = 2**52
STORED_MAX_VERSION = 2**63 - 1  # what earlier releases let into the store
# Metrics the server and the web page read themselves, beyond serving them: when an archive has
# them, they must be what training writes (the API schema's Metrics), else every listing of the
# tag would fail on them.
SCORE_METRICS = ("roc_auc", "f1", "precision", "recall", "accuracy")  # a finite number, or null
COUNT_METRICS = ("positives", "negatives", "presumed_negatives", "folds")  # a non-negative integer
MAX_COUNT = 10**12
EXAMPLE_TYPES = ("positive", "negative", "presumed_negative")  # of a most_wrong entry
# The largest logit a head could give (|weight| x |normalised features| + |bias|): beyond it, the
# float32 scoring of all heads in one multiply could overflow to inf - inf = NaN. Trained heads
# stay far below (a logit of 40 is already a probability of 1 - 4e-18).
MAX_LOGIT = 1e6
_MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


@dataclass(frozen=True)
class ModelRecord:
    """One trained model of one tag, as it travels in an archive."""

    tag: str
    version: int
    threshold: float
    trained_at: str
    head: Head
    form: str = "both"
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArchiveLimits:
    max_bytes: int
    max_members: int


def pack(records: list[ModelRecord], spec: BackboneSpec) -> bytes:
    """Serialise models into an archive; member names are numbered, never taken from tags."""
    members: dict[str, bytes] = {}
    entries = []
    for i, record in enumerate(records):
        name = f"model-{i:05d}.safetensors"
        members[name] = save_tensors(
            {
                "weight": np.ascontiguousarray(record.head.weight, dtype=np.float32),
                "bias": np.array([record.head.bias], dtype=np.float32),
            }
        )
        entries.append(
            {
                "tag": record.tag,
                "version": record.version,
                "threshold": record.threshold,
                "trained_at": record.trained_at,
                "form": record.form,
                "metrics": record.metrics,
                "file": name,
            }
        )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": spec.id,
        "embedding_size": spec.embedding_size,
        "style_size": spec.style_size,
        "models": entries,
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [(MANIFEST, json.dumps(manifest, indent=1).encode()), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _invalid(message: str) -> InvalidInput:
    return InvalidInput("invalid_archive", message)


def read_json(raw: bytes, name: str, invalid: Callable[[str], InvalidInput], finite: bool = True,
              max_containers: int | None = None) -> Any:
    """The JSON member ``name`` of an archive, or ``invalid(reason)`` raised; with ``finite``,
    numbers JSON cannot write (NaN, infinities, 1e999) are refused too.

    ``max_containers``: how many objects and lists it may open, counted before parsing as its '{'
    and '[' bytes (those in strings too: callers leave room for names): each costs 2 bytes of JSON
    but 60-100 in memory, so 16 MiB of '{},' held 1 GB, and the parse holds the interpreter's lock
    throughout."""
    if max_containers is not None and raw.count(b"{") + raw.count(b"[") > max_containers:
        raise invalid(f"{name} opens more objects and lists than its archive's members need "
                      f"(at most {max_containers}).")
    with _PARSING if max_containers is not None else contextlib.nullcontext():  # an upload's: one at a time
        return _parse_json(raw, name, invalid, finite)


# Uploaded manifests are parsed one at a time in a process: each may take several times its size.
_PARSING = threading.Lock()


def _parse_json(raw: bytes, name: str, invalid: Callable[[str], InvalidInput], finite: bool) -> Any:
    try:
        if not finite:
            return json.loads(raw)
        return json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except ValueError as exc:  # not UTF-8, not JSON, non-finite, or integers beyond Python's 4,300 digits
        raise invalid(f"{name} is not valid JSON: {exc}") from None
    except RecursionError:
        raise invalid(f"{name} is nested too deeply.") from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a number JSON allows")


# Extended headers (PAX records, GNU long names): our archives and backups have none. Python's
# tarfile parses PAX records with a regular expression that takes quadratic time on hostile ones
# (CVE-2024-6232, fixed in 3.11.10: a 100 KB record held a server for 17 s; an 8 KiB one takes
# 0.1 s), and reads a GNU long name whole into memory: each is refused over MAX_EXTENDED_HEADER,
# and all of an archive's together over MAX_EXTENDED_TOTAL, before tarfile sees them. The walk
# must find every header tarfile will parse, so it also refuses what would make tarfile step
# differently from the ustar size fields: PAX "size" and GNU sparse records (tarfile reads records
# on into the padding of the header's last block, so that must be NUL), global PAX headers, sparse
# files, and links, devices and folders (whose data tarfile does not skip).
MAX_EXTENDED_HEADER = 1024
MAX_EXTENDED_TOTAL = 64 * 1024
_REGULAR = (b"0", b"\0", b"7")
_EXTENDED = (b"x", b"L", b"K")  # a file's PAX records, GNU long name and long link name
_STEERING_RECORDS = (b" size=", b" GNU.sparse.")  # records that change where tarfile reads next


def _check_extended_headers(data: bytes) -> None:
    """Walk the tar's 512-byte headers and refuse what ``check_extended_headers`` refuses."""
    check_extended_headers(io.BytesIO(data))


def check_extended_headers(file: BinaryIO) -> None:
    """Walk the 512-byte headers of a seekable file from its start (a large archive spooled to
    disk) and refuse extended headers over their limits, or any header or PAX record that would
    make tarfile's walk differ from this one; the file is left at its start."""
    offset = extended = 0
    try:
        while True:
            file.seek(offset)
            block = file.read(512)
            if len(block) < 512 or not block.strip(b"\0"):
                return  # the end-of-archive blocks (or a truncated file, which tarfile reports)
            if not _checksum_matches(block):
                raise _invalid("The file is not a tar archive." if offset == 0 else
                               "The file is not a readable tar archive: a header's checksum does not match.")
            size, kind = _tar_number(block[124:136]), block[156:157]
            padded = -(-size // 512) * 512
            if kind in _EXTENDED:
                extended += size
                if size > MAX_EXTENDED_HEADER or extended > MAX_EXTENDED_TOTAL:
                    raise _invalid(f"The archive has extended tar headers of more than {MAX_EXTENDED_HEADER} "
                                   f"bytes each or {MAX_EXTENDED_TOTAL} in all; only plain files are read.")
                records = file.read(padded)
                if kind == b"x" and (records[size:].strip(b"\0")
                                     or any(r in b" " + records[:size] for r in _STEERING_RECORDS)):
                    raise _invalid("The archive has PAX size or sparse records; only plain files are read.")
            elif kind not in _REGULAR:
                raise _invalid(f"The archive has a member of tar type {kind!r}; only regular files are read.")
            offset += 512 + padded
    finally:
        file.seek(0)


_HIGH_BYTES = bytes(range(128, 256))


def _checksum_matches(header: bytes) -> bool:
    """Whether a 512-byte tar header carries its own checksum: the sum of its bytes with the
    checksum field counted as spaces (unsigned, or signed as some old tar programs wrote it)."""
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)  # as tarfile reads it
    except ValueError:
        return False
    rest = header[:148] + header[156:]
    unsigned = sum(rest) + 8 * 32
    if stored == unsigned:
        return True
    high = len(rest) - len(rest.translate(None, _HIGH_BYTES))  # each counts 256 less when signed
    return stored == unsigned - 256 * high


def _tar_number(field: bytes) -> int:
    """A tar header's number: octal text, or base-256 when the first byte's top bit is set."""
    if field[:1] == b"\xff":
        raise _invalid("The file is not a readable tar archive: a header's size is negative.")
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.replace(b"\0", b" ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise _invalid("The file is not a readable tar archive: a header's size is not a number.") from None


def read_members(data: bytes, limits: ArchiveLimits) -> dict[str, bytes]:
    """The archive's regular files by name, refusing anything but flat, unique, bounded files."""
    if len(data) > limits.max_bytes:
        raise TooLarge("archive_too_large", f"The archive is larger than {limits.max_bytes} bytes.")
    _check_extended_headers(data)
    members: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            while (info := tar.next()) is not None:
                if len(members) >= limits.max_members:
                    raise _invalid(f"The archive has more than {limits.max_members} members.")
                if not info.isreg():
                    raise _invalid(f"Member {info.name!r} is not a regular file (links and devices are refused).")
                if not _MEMBER_NAME.fullmatch(info.name):
                    raise _invalid(f"Member name {info.name!r} is not allowed (flat names only, no paths).")
                if info.name in members:
                    raise _invalid(f"Member {info.name!r} appears twice.")
                total += info.size
                if total > limits.max_bytes:
                    raise TooLarge("archive_too_large", "The archive's members exceed the size limit.")
                extracted = tar.extractfile(info)
                content = extracted.read() if extracted else b""
                if len(content) != info.size:
                    raise _invalid(f"Member {info.name!r} is truncated.")
                members[info.name] = content
    except DomainError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise _invalid(f"The file is not a readable tar archive: {exc}") from None
    return members


def unpack(data: bytes, spec: BackboneSpec, limits: ArchiveLimits, stored: bool = False) -> list[ModelRecord]:
    """Validate a whole archive and return its models, or raise InvalidInput or TooLarge saying what is wrong.

    ``stored``: a version this server stored itself, read as earlier releases checked what they
    stored (metrics served as they are, non-finite numbers and versions below 2^63 allowed), so
    that a stricter check of uploads never makes a stored model unreadable."""
    members = read_members(data, limits)
    if MANIFEST not in members:
        raise _invalid("The archive has no manifest.json.")
    if len(members[MANIFEST]) > MAX_MANIFEST_BYTES:
        raise TooLarge("archive_too_large", "manifest.json is too large.")
    manifest = read_json(members[MANIFEST], MANIFEST, _invalid, finite=not stored,
                         max_containers=None if stored else CONTAINERS_PER_MODEL * len(members) + 1024)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        kind = manifest.get("format") if isinstance(manifest, dict) else None
        hint = " (a backup, made by /backup, restores with /restore)" if kind == BACKUP_FORMAT else ""
        raise _invalid(f"manifest.json does not describe a {FORMAT} archive{hint}.")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise _invalid(
            f"Archive format version {version!r} is not supported "
            f"(this server reads versions {', '.join(map(str, READABLE_VERSIONS))})."
        )
    expected_style = spec.style_size if version >= 2 else None
    if (
        manifest.get("backbone") != spec.id
        or manifest.get("embedding_size") != spec.embedding_size
        or manifest.get("style_size") != expected_style
    ):
        raise _invalid(
            f"The archive was made for backbone {manifest.get('backbone')!r} with other embedding sizes; "
            f"this server runs {spec.id!r}."
        )
    entries = manifest.get("models")
    if not isinstance(entries, list):
        raise _invalid("manifest.json has no list of models.")
    records: list[ModelRecord] = []
    used: set[str] = set()
    for i, entry in enumerate(entries):
        records.append(_record(entry, i, members, used, spec, version, stored))
    tags = [r.tag for r in records]
    if len(set(tags)) != len(tags):
        raise _invalid("The archive holds the same tag twice.")
    unreferenced = set(members) - used - {MANIFEST}
    if unreferenced:
        raise _invalid(f"The archive has members no model refers to: {sorted(unreferenced)[:5]}.")
    return records


def _valid_metrics(metrics: dict[str, Any]) -> bool:
    """Whether the metrics the server and the web page read (``SCORE_METRICS``, ``COUNT_METRICS``,
    ``most_wrong``) have the types training gives them; other fields are only served."""
    for name in SCORE_METRICS:
        value = metrics.get(name)
        if value is not None and (not _is_number(value) or not math.isfinite(value)):
            return False
    for name in COUNT_METRICS:
        if name in metrics and not is_whole(metrics[name], 0, MAX_COUNT):
            return False
    wrong = metrics.get("most_wrong", [])
    return isinstance(wrong, list) and len(wrong) <= MOST_WRONG and all(
        isinstance(w, dict) and isinstance(w.get("image_id"), str) and w.get("type") in EXAMPLE_TYPES
        and _is_number(w.get("score")) and math.isfinite(w["score"]) for w in wrong)


def _valid_timestamp(value: Any) -> bool:
    """Empty, or an ISO 8601 date and time of at most 64 characters (training writes UTC to the second)."""
    if not isinstance(value, str) or len(value) > 64:
        return False
    if not value:
        return True
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return value.isascii() and value.isprintable()


def _shape(value: Any) -> tuple[int, int]:
    """How many levels of lists and objects ``value`` nests, and how many it holds (0, 0 for a
    number or text)."""
    deepest, count, level = 0, 0, [(value, 0)]
    while level:
        item, depth = level.pop()
        if isinstance(item, (dict, list)):
            deepest, count = max(deepest, depth + 1), count + 1
            level += [(child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)]
    return deepest, count


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_whole(value: Any, low: int = 1, high: int = MAX_VERSION) -> TypeGuard[int]:
    """An integer (not a bool) in [low, high]: by default, a version number."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _valid_origin(origin: Any, highest: int) -> bool:
    """Whether ``metrics["origin"]`` has the shape ``ORIGIN_FIELDS`` describes (fields may be missing)."""
    if not isinstance(origin, dict) or not set(origin) <= set(ORIGIN_FIELDS):
        return False
    for name, value in origin.items():
        if ORIGIN_FIELDS[name] is int:
            if not is_whole(value, high=highest):
                return False
        elif not isinstance(value, str) or len(value) > ORIGIN_TEXT_LENGTH:
            return False
    return True


def _record(
    entry: Any,
    i: int,
    members: dict[str, bytes],
    used: set[str],
    spec: BackboneSpec,
    format_version: int,
    stored: bool,
) -> ModelRecord:
    if not isinstance(entry, dict):
        raise _invalid(f"Model entry {i} is not an object.")
    if "tag" in entry and not isinstance(entry["tag"], str):
        raise _invalid(f"Model entry {i} has a tag that is not text.")
    try:
        tag = validate_tag(entry["tag"])  # a new tag's length: labels.check_new_tags, where it is made
        version, threshold = entry["version"], entry["threshold"]
        trained_at, metrics, file = entry.get("trained_at", ""), entry.get("metrics", {}), entry["file"]
    except KeyError as exc:
        raise _invalid(f"Model entry {i} lacks {exc}.") from None
    except InvalidInput as exc:
        raise _invalid(f"Model entry {i}: {exc.message}") from None
    highest = STORED_MAX_VERSION if stored else MAX_VERSION
    if not is_whole(version, high=highest):
        raise _invalid(f"Model entry {i} ({tag}) has an invalid version (an integer from 1 to {highest}).")
    # What this server stored itself is read as the release that stored it checked it.
    number = isinstance(threshold, (int, float)) if stored else _is_number(threshold)
    if not number or not (0.0 <= threshold <= 1.0):
        raise _invalid(f"Model entry {i} ({tag}) has a threshold that is not a number in [0, 1].")
    dated = isinstance(trained_at, str) and len(trained_at) <= 64 if stored else _valid_timestamp(trained_at)
    if not dated or not isinstance(metrics, dict):
        raise _invalid(f"Model entry {i} ({tag}) has invalid trained_at (an ISO 8601 date and time, or empty) or metrics.")
    depth, containers = _shape(metrics) if not stored else (0, 0)
    if depth > MAX_METRICS_DEPTH or containers > MAX_METRICS_CONTAINERS:
        raise _invalid(f"Model entry {i} ({tag}) has metrics nested more than {MAX_METRICS_DEPTH} levels deep or "
                       f"holding more than {MAX_METRICS_CONTAINERS} lists and objects.")
    if "origin" in metrics and not _valid_origin(metrics["origin"], highest):
        raise _invalid(f"Model entry {i} ({tag}) has an invalid metrics.origin: an object of "
                       f"{', '.join(ORIGIN_FIELDS)} (texts of {ORIGIN_TEXT_LENGTH} characters at most, a version).")
    if not stored and not _valid_metrics(metrics):
        raise _invalid(f"Model entry {i} ({tag}) has metrics of the wrong type: {', '.join(SCORE_METRICS)} finite "
                       f"numbers or null; {', '.join(COUNT_METRICS)} whole numbers from 0; most_wrong a list of at "
                       f"most {MOST_WRONG} examples (image_id, type, score).")
    try:  # the API renders them with orjson: lone surrogates, ints beyond 64 bits or deep nesting would be 500s
        orjson.dumps(trained_at)
        orjson.dumps(metrics.get("origin"))
        served = orjson.dumps({k: v for k, v in metrics.items() if k != "origin"})
    except orjson.JSONEncodeError:
        raise _invalid(f"Model entry {i} ({tag}) has a training date or metrics that cannot be served as JSON.") from None
    if len(served) > MAX_METRICS_BYTES:
        raise TooLarge("archive_too_large", f"Model entry {i} ({tag}) has {len(served)} bytes of metrics; "
                       f"the limit is {MAX_METRICS_BYTES}.")
    form = entry.get("form", "semantic") if format_version >= 2 else "semantic"
    if not isinstance(form, str) or form not in FORMS:
        raise _invalid(f"Model entry {i} ({tag}) has an unknown form {form!r}.")
    if not isinstance(file, str) or file not in members or file == MANIFEST or file in used:
        raise _invalid(f"Model entry {i} ({tag}) names a missing or shared member {file!r}.")
    used.add(file)
    try:
        tensors = load_tensors(members[file])
    except Exception:
        raise _invalid(f"Member {file!r} is not a safetensors file.") from None
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if set(tensors) != {"weight", "bias"} or weight is None or bias is None:
        raise _invalid(f"Member {file!r} must hold exactly the tensors 'weight' and 'bias'.")
    size = spec.embedding_size + (spec.style_size if format_version >= 2 else 0)
    if weight.shape != (size,) or bias.shape != (1,):
        raise _invalid(f"Member {file!r} has shapes {weight.shape}, {bias.shape}; expected ({size},), (1,).")
    if weight.dtype != np.float32 or bias.dtype != np.float32:
        raise _invalid(f"Member {file!r} must hold float32 tensors.")
    if not (np.isfinite(weight).all() and math.isfinite(float(bias[0]))):
        raise _invalid(f"Member {file!r} holds NaN or infinite weights.")
    feature_norm = math.sqrt(spec.embedding_size + spec.style_size)  # each group is normalised to sqrt(size)
    if float(np.linalg.norm(weight.astype(np.float64))) * feature_norm + abs(float(bias[0])) > MAX_LOGIT:
        raise _invalid(f"Member {file!r} holds weights so large that its scores could overflow.")
    if format_version == 1:  # a semantic-only head: zero weights on the style group
        weight = np.concatenate([weight, np.zeros(spec.style_size, dtype=np.float32)])
    return ModelRecord(
        tag=tag,
        version=version,
        threshold=float(threshold),
        trained_at=trained_at,
        head=Head(weight=weight.copy(), bias=float(bias[0])),
        form=form,
        metrics=metrics,
    )
