"""Backups: everything a user taught, as one tar streamed out, and restored into an empty server.

A backup is a tar (PAX) of flat, numbered members, never named after ids or tags:

- ``image-<n>``          an image's bytes as uploaded
- ``model-<n>.tar``      one stored version of a tag's model: its state archive as the store keeps
                         it (``models/<tag>/v<N>.tar``)
- ``manifest.json``      last, once everything it lists is written: the format and its version, the
                         backbone, every image (id, file name, sha256, size, created_at, member) and
                         every tag (its positive and negative example ids, every stored version with
                         its member, and the current version)

The export reads one image at a time from the store and writes it: the backup is never held in
memory. The restore reads an upload spooled to a temporary file, validates all of it (member types,
names, sizes and counts, the manifest, ids and tags, each image's sha256 and that it decodes, each
model archive through ``shared.models.archive.unpack``, the backbone) before it changes anything,
then adds the images through the ordinary add path (library rows, embedding queued), assigns the
examples, stores every version under its own number and publishes the current ones. A failure
midway removes what it added; so does the next restore, when a crash cut one short (a journal in
Redis names what it was about to add). Nothing is ever unpickled.
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import json
import logging
import re
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from shared.core.errors import Conflict, DomainError, InvalidInput, NotFound, TooLarge, Unavailable
from shared.core.names import MAX_FILENAME, clean_filename, validate_image_id, validate_tag
from shared.data import keys
from shared.data.registry import EpochMoved, ModelPointer, utc_now
from shared.data.store import ObjectNotFound
from shared.domain import catalog, images
from shared.models.archive import BACKUP_FORMAT, ModelRecord, check_extended_headers, is_whole, pack, read_json, unpack
from shared.models.decoding import VERIFY_SIZE, decode_image

if TYPE_CHECKING:
    from shared.domain.services import Services

FORMAT = BACKUP_FORMAT
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# What one backup may hold besides TAGSMITH_MAX_BACKUP_BYTES: members (images and model versions)
# and the manifest's size, which is parsed in memory (about 200 bytes per image).
MAX_MEMBERS = 500_001
MAX_MANIFEST_BYTES = 128 * 1024 * 1024
_MEMBER = re.compile(r"(image-[0-9]{6,9}|model-[0-9]{6,9}\.tar|manifest\.json)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TIME = "%Y-%m-%dT%H:%M:%SZ"
# One restore at a time per server (every gateway shares the lease in Redis); a restore whose
# process died frees the server this long after its last renewal.
RESTORE_LEASE_SECONDS = 30
# What a restore's image reservations start with (``Registry.reserve_image``): the next restore
# gives back those of one that died.
RESERVATION_HOLDER = "restore:"

log = logging.getLogger("tagsmith")


# Export ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupPlan:
    """What a backup will hold, read from Redis before the stream starts (so that a backend down
    is an error response, not a cut stream): images oldest first, and each tag's examples and
    current version."""

    images: list[tuple[str, dict[str, str]]]
    tags: list[tuple[str, list[str], list[str], int | None]]


def plan_backup(services: Services) -> BackupPlan:
    registry = services.registry
    ids = list(reversed(registry.image_ids()))  # oldest first: restored in the order they were added
    found: list[tuple[str, dict[str, str]]] = []
    for start in range(0, len(ids), 1000):
        page = ids[start : start + 1000]
        found += [(i, m) for i, m in zip(page, registry.images(page), strict=True) if m]
    models = registry.models()
    tags = []
    for tag in registry.tags():
        positives, negatives = registry.examples(tag)
        current = models.get(tag)
        tags.append((tag, positives, negatives, current.version if current else None))
    return BackupPlan(found, tags)


class _Chunks:
    """A write-only file that keeps what tarfile writes until the stream takes it."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, _Reader(data))


class _Reader:
    """The bytes of one member, read by tarfile in pieces (no second copy in a BytesIO)."""

    def __init__(self, data: bytes) -> None:
        self.view, self.offset = memoryview(data), 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.view) if size < 0 else self.offset + size
        piece = self.view[self.offset : end].tobytes()
        self.offset += len(piece)
        return piece


def stream_backup(services: Services, plan: BackupPlan) -> Iterator[bytes]:
    """The backup as tar bytes, a member at a time (blocking store reads: run it in the threadpool).
    An image or version deleted since the plan is left out, and so are its mentions."""
    sink = _Chunks()
    image_entries: list[dict[str, Any]] = []
    tag_entries: list[dict[str, Any]] = []
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for image_id, meta in plan.images:
            try:
                data = services.store.get(keys.image_key(image_id))
            except ObjectNotFound:
                continue  # deleted meanwhile
            member = f"image-{len(image_entries):06d}"
            _add_member(tar, member, data)
            image_entries.append({
                "image_id": image_id, "filename": meta.get("filename", ""),
                "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "created_at": meta.get("created_at") or utc_now(), "member": member,
            })
            yield sink.take()
        written = {entry["image_id"] for entry in image_entries}
        models = 0
        for tag, positives, negatives, current in plan.tags:
            versions = []
            for pointer in catalog.stored_versions(services, tag):
                try:
                    data = services.store.get(pointer.key)
                except ObjectNotFound:
                    continue  # pruned meanwhile
                member = f"model-{models:06d}.tar"
                models += 1
                _add_member(tar, member, data)
                versions.append({"version": pointer.version, "member": member})
                yield sink.take()
            tag_entries.append({
                "tag": tag,
                "current": current if any(v["version"] == current for v in versions) else None,
                "positives": [i for i in positives if i in written],
                "negatives": [i for i in negatives if i in written],
                "versions": versions,
            })
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "backbone": services.spec.id,
                    "created_at": utc_now(), "images": image_entries, "tags": tag_entries}
        _add_member(tar, MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
    yield sink.take()


# Restore --------------------------------------------------------------------------------------


def _invalid(message: str) -> InvalidInput:
    return InvalidInput("invalid_backup", message)


@dataclass(frozen=True)
class _Image:
    image_id: str
    filename: str
    sha256: str
    created_at: str
    member: str


@dataclass(frozen=True)
class _Tag:
    tag: str
    current: int | None
    positives: list[str]
    negatives: list[str]
    versions: dict[int, str] = field(default_factory=dict)  # version -> member


@dataclass(frozen=True)
class _Backup:
    """A validated backup: what its manifest says, and where each member lies in the file."""

    images: list[_Image]
    tags: list[_Tag]
    members: dict[str, tarfile.TarInfo]


def require_empty(services: Services) -> None:
    """Conflict unless the server has no images and no tags: a restore never merges."""
    registry = services.registry
    images_count, models = registry.image_count(), registry.models()
    tags = registry.tags()
    if images_count or tags or models:
        raise Conflict("not_empty", f"A backup is restored only into an empty server; this one has "
                       f"{_count(images_count, 'image')} and {_count(len(tags), 'tag')}. Restore into a new server, "
                       "or delete them first.")


def require_restorable(services: Services) -> None:
    """Conflict unless the server is empty but for what an unfinished restore added (which a restore
    removes first: ``undo_unfinished_restore``); checked before an upload is read, and again once
    the restore is claimed."""
    added, touched = services.registry.restore_journal()
    if added or touched:
        _require_only_journalled(services, added, touched)
    else:
        require_empty(services)


def _require_only_journalled(services: Services, added: list[str], touched: list[str]) -> None:
    registry = services.registry
    journalled = set(added)
    own_images = [i for i in registry.image_ids() if i not in journalled]
    own_tags = sorted((set(registry.tags()) | set(registry.models())) - set(touched))
    if own_images or own_tags:
        raise Conflict("not_empty", "A backup is restored only into an empty server; this one holds what an "
                       f"unfinished restore added and {_count(len(own_images), 'image')} and "
                       f"{_count(len(own_tags), 'tag')} besides. Delete them all, or restore into a new server.")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class LeaseLost(Exception):
    """The restore's lease lapsed: it stops where it is and removes nothing, since what it added may
    now be another restore's to keep."""


class RestoreClaim:
    """The restore lease held by one restore, renewed by a thread until ``release``: two restores
    at once would interleave, and the one that failed would remove what the other restored."""

    def __init__(self, services: Services) -> None:
        self._registry = services.registry
        self._token = uuid.uuid4().hex
        if not self._registry.claim_lease("restore", self._token, RESTORE_LEASE_SECONDS):
            raise Conflict("restore_in_progress", "Another backup is being restored into this server; "
                           "wait for it to finish.")
        self._stopped = threading.Event()
        self.lost = threading.Event()  # set once a renewal failed: another restore may hold the server
        self._renewer = threading.Thread(target=self._renew, name="restore-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stopped.wait(RESTORE_LEASE_SECONDS / 3):
            try:
                held = self._registry.renew_lease("restore", self._token, RESTORE_LEASE_SECONDS)
            except Exception as exc:  # Redis down: the restore itself fails on its next write
                held, reason = False, repr(exc)
            else:
                reason = "the lease was taken or removed"
            if not held:
                log.warning("restore lease not renewed: %s", reason)
                self.lost.set()

    def check(self) -> None:
        """Raise LeaseLost once the lease could not be renewed."""
        if self.lost.is_set():
            raise LeaseLost

    def release(self) -> None:
        self._stopped.set()
        self._renewer.join()
        with contextlib.suppress(Exception):  # unreachable Redis: the lease lapses by itself
            self._registry.release_lease("restore", self._token)


def restore_backup(services: Services, file: BinaryIO, claim: RestoreClaim) -> dict[str, Any]:
    """Validate the whole backup in ``file``, then restore it into this (empty) server while
    ``claim`` holds it; see the module's docstring. Returns what was restored."""
    require_empty(services)  # the caller removed an unfinished restore's leftovers (undo_unfinished_restore)
    backup = _read_backup(services, file)
    require_empty(services)  # again: the validation may have taken a while
    try:
        _apply(services, file, backup, claim)
    except LeaseLost:
        raise Conflict("restore_interrupted", "The restore lost its hold on the server (Redis could not be "
                       f"reached for {RESTORE_LEASE_SECONDS} s); what it restored so far stays until the next "
                       "restore removes it first. Restore again.") from None
    return {
        "images": len(backup.images),
        "tags": [{"tag": t.tag, "positives": len(t.positives), "negatives": len(t.negatives),
                  "versions": sorted(t.versions), "current": t.current} for t in backup.tags],
    }


def undo_unfinished_restore(services: Services, claim: RestoreClaim) -> None:
    """Remove what an earlier restore added if it never finished (its process was killed, or it
    lost its lease), as its own failure would have: its journal in Redis names every image and tag
    it was about to add. Only when the server holds nothing else: an image or tag the journal does
    not name (added by someone since) makes it 409 ``not_empty`` and nothing is removed. A user's
    delete takes an image or tag out of the journal, so one made again under its name is the user's."""
    registry = services.registry
    added, touched = registry.restore_journal()
    if not (added or touched):
        return
    _require_only_journalled(services, added, touched)
    log.warning("removing what an unfinished restore added: %d images, %d tags", len(added), len(touched))
    # The add it died in holds its id for RESERVATION_SECONDS: restoring again had been refused
    # ("being added right now") for two minutes after the lease lapsed. This restore holds the lease
    # now. A restore that lost it but still runs (Redis out of its reach for the lease's 30 s) stops
    # before its next image; an add of its still under way cannot commit (its token is gone), but
    # could yet write its bytes over this restore's copy of that one id (the same backup's, unless
    # another backup is restored now) or remove its cached embedding and thumbnails.
    registry.release_images_held_by(added, RESERVATION_HOLDER)
    if not _undo(services, added, touched, claim):
        raise Unavailable("backend_unavailable", "What an unfinished earlier restore added could not all be "
                          "removed; try again shortly.")
    registry.clear_restore_journal()


def _members(tar: tarfile.TarFile, limit: int) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    while (info := tar.next()) is not None:
        if len(members) >= MAX_MEMBERS:
            raise _invalid(f"The backup has more than {MAX_MEMBERS} members.")
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise _invalid(f"Member {info.name!r} is not a regular file (links, folders and devices are refused).")
        if not _MEMBER.fullmatch(info.name):
            raise _invalid(f"Member name {info.name!r} is not allowed (image-<n>, model-<n>.tar and "
                           "manifest.json only: no paths).")
        if info.name in members:
            raise _invalid(f"Member {info.name!r} appears twice.")
        total += info.size
        if total > limit:
            raise TooLarge("backup_too_large", "The backup's members exceed the size limit.")
        members[info.name] = info
    return members


def _member_bytes(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    extracted = tar.extractfile(info)
    data = extracted.read() if extracted else b""
    if len(data) != info.size:
        raise _invalid(f"Member {info.name!r} is truncated.")
    return data


def _read_backup(services: Services, file: BinaryIO) -> _Backup:
    """Validate everything; InvalidInput (or TooLarge) saying what is wrong."""
    settings = services.settings
    check_extended_headers(file)
    try:
        with tarfile.open(fileobj=file, mode="r:") as tar:
            members = _members(tar, settings.max_backup_bytes)
            if MANIFEST not in members:
                raise _invalid("The backup has no manifest.json (a backup cut short lacks it: it is written last).")
            if members[MANIFEST].size > MAX_MANIFEST_BYTES:
                raise TooLarge("backup_too_large", f"manifest.json is larger than {MAX_MANIFEST_BYTES} bytes.")
            manifest_images, manifest_tags = _manifest(services, _member_bytes(tar, members[MANIFEST]), len(members))
            used = {MANIFEST}
            found = _images(manifest_images, members, used)
            tags = _tags(services, manifest_tags, {i.image_id for i in found}, members, used)
            unreferenced = set(members) - used
            if unreferenced:
                raise _invalid(f"The backup has members its manifest does not list: {sorted(unreferenced)[:5]}.")
            for image in found:
                _check_image(services, image, _sized(tar, members[image.member], settings.max_upload_bytes))
            for tag in tags:
                for version, member in tag.versions.items():
                    _model(services, tag.tag, version, _sized(tar, members[member], settings.max_archive_bytes))
    except DomainError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise _invalid(f"The file is not a readable tar archive: {exc}") from None
    return _Backup(found, tags, members)


def _sized(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int) -> bytes:
    if info.size > limit:
        raise TooLarge("backup_too_large", f"Member {info.name!r} is larger than {limit} bytes.")
    return _member_bytes(tar, info)


def _manifest(services: Services, raw: bytes, members: int) -> tuple[list[Any], list[Any]]:
    # One object per image and per version, four per tag (the tag, its lists of examples and of
    # versions), the manifest's own; and room for brackets in names, as they are counted too: a
    # file name's 255 characters per member, a tag name's per tag.
    settings = services.settings
    containers = (2 + MAX_FILENAME) * members + (4 + settings.max_tag_length) * settings.max_tags + 64
    manifest = read_json(raw, "manifest.json", _invalid, max_containers=containers)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _invalid(f"manifest.json does not describe a {FORMAT} archive (a state archive loads with /set_state).")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _invalid(f"Backup format version {manifest.get('format_version')!r} is not supported "
                       f"(this server reads version {FORMAT_VERSION}).")
    if manifest.get("backbone") != services.spec.id:
        raise _invalid(f"The backup was made with backbone {manifest.get('backbone')!r}; this server runs "
                       f"{services.spec.id!r}.")
    found, tags = manifest.get("images"), manifest.get("tags")
    if not isinstance(found, list) or not isinstance(tags, list):
        raise _invalid("manifest.json needs a list of images and a list of tags.")
    return found, tags


def _use(member: Any, what: str, members: dict[str, tarfile.TarInfo], used: set[str]) -> str:
    if not isinstance(member, str) or member not in members or member in used:
        raise _invalid(f"{what} names a missing or shared member {member!r}.")
    used.add(member)
    return member


def _images(entries: list[Any], members: dict[str, tarfile.TarInfo], used: set[str]) -> list[_Image]:
    found: list[_Image] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _invalid(f"Image entry {i} is not an object.")
        raw_id, filename, sha, created = (entry.get(k) for k in ("image_id", "filename", "sha256", "created_at"))
        try:
            image_id = validate_image_id(raw_id if isinstance(raw_id, str) else "")
        except InvalidInput as exc:
            raise _invalid(f"Image entry {i}: {exc.message}") from None
        if image_id in seen:
            raise _invalid(f"Image {image_id!r} appears twice.")
        seen.add(image_id)
        if not isinstance(filename, str):
            raise _invalid(f"Image {image_id!r} has a file name that is not text.")
        filename = clean_filename(filename)  # as kept now: an earlier release kept some names uncleaned
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise _invalid(f"Image {image_id!r} has no sha256 (64 lowercase hex digits).")
        if not isinstance(created, str) or not _is_time(created):
            raise _invalid(f"Image {image_id!r} has a created_at that is not a time like 2025-01-01T12:00:00Z.")
        member = _use(entry.get("member"), f"Image {image_id!r}", members, used)
        found.append(_Image(image_id, filename, sha, created, member))
    return found


def _is_time(text: str) -> bool:
    try:
        time.strptime(text, _TIME)
    except ValueError:
        return False
    return len(text) == 20


def _tags(services: Services, entries: list[Any], ids: set[str], members: dict[str, tarfile.TarInfo],
          used: set[str]) -> list[_Tag]:
    settings = services.settings
    if len(entries) > settings.max_tags:
        raise Conflict("too_many_tags", f"The backup has {len(entries)} tags; this server allows "
                       f"{settings.max_tags} (TAGSMITH_MAX_TAGS).")
    tags: list[_Tag] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _invalid(f"Tag entry {i} is not an object.")
        name = entry.get("tag")
        try:
            tag = validate_tag(name if isinstance(name, str) else "", settings.max_tag_length)
        except InvalidInput as exc:
            raise _invalid(f"Tag entry {i}: {exc.message}") from None
        if tag != name or tag in seen:
            raise _invalid(f"Tag {name!r} is not in its normal form, or appears twice.")
        seen.add(tag)
        positives, negatives = entry.get("positives"), entry.get("negatives")
        for examples in (positives, negatives):
            if not isinstance(examples, list) or not all(isinstance(x, str) and x in ids for x in examples):
                raise _invalid(f"Tag {tag!r} has examples that are not ids of the backup's images.")
        assert isinstance(positives, list) and isinstance(negatives, list)
        if len(set(positives)) != len(positives) or len(set(negatives)) != len(negatives) \
                or set(positives) & set(negatives):
            raise _invalid(f"Tag {tag!r} lists an example twice, or as both positive and negative.")
        raw_versions = entry.get("versions")
        if not isinstance(raw_versions, list):
            raise _invalid(f"Tag {tag!r} has no list of versions.")
        versions: dict[int, str] = {}
        for version_entry in raw_versions:
            version = version_entry.get("version") if isinstance(version_entry, dict) else None
            if not is_whole(version) or version in versions:
                raise _invalid(f"Tag {tag!r} has an invalid or repeated version {version!r}.")
            versions[version] = _use(version_entry.get("member"), f"Tag {tag!r} version {version}", members, used)
        current = entry.get("current")
        if current is not None and (isinstance(current, bool) or current not in versions):
            raise _invalid(f"Tag {tag!r} names a current version {current!r} that the backup does not hold.")
        tags.append(_Tag(tag, current, list(positives), list(negatives), versions))
    return tags


def _check_image(services: Services, image: _Image, data: bytes) -> None:
    if hashlib.sha256(data).hexdigest() != image.sha256:
        raise _invalid(f"Image {image.image_id!r}: its bytes do not match its sha256 (the backup is damaged).")
    try:
        decode_image(data, services.settings.max_image_pixels, VERIFY_SIZE, services.decode_budget)
    except DomainError as exc:
        raise _invalid(f"Image {image.image_id!r}: {exc.message}") from None


def _model(services: Services, tag: str, version: int, data: bytes) -> ModelRecord:
    try:
        records = unpack(data, services.spec, services.archive_limits)
    except DomainError as exc:
        raise _invalid(f"Tag {tag!r} version {version}: {exc.message}") from None
    if len(records) != 1 or records[0].tag != tag or records[0].version != version:
        raise _invalid(f"Tag {tag!r} version {version}: the archive holds another model.")
    return records[0]


def _apply(services: Services, file: BinaryIO, backup: _Backup, claim: RestoreClaim) -> None:
    """Store everything; on any failure remove what was added (as far as the backends let us),
    unless the lease was lost (LeaseLost)."""
    registry, store, max_tags = services.registry, services.store, services.settings.max_tags
    added: list[str] = []
    touched: list[str] = []
    file.seek(0)
    try:
        with tarfile.open(fileobj=file, mode="r:") as tar:
            when = 0.0
            for image in backup.images:  # oldest first
                claim.check()
                data = _member_bytes(tar, backup.members[image.member])
                registry.journal_restore("images", image.image_id)  # first: a crash after it is undone
                images.add_image(services, data, image.image_id, image.filename, holder=RESERVATION_HOLDER)
                added.append(image.image_id)
                # Images added in one second keep the backup's order (ids would decide it otherwise).
                when = max(float(calendar.timegm(time.strptime(image.created_at, _TIME))), when + 1e-4)
                registry.set_created_at(image.image_id, image.created_at, when)
            pointers: list[ModelPointer] = []
            epochs: dict[str, int] = {}
            for tag in backup.tags:
                claim.check()
                left = list(store.list(keys.model_prefix(tag.tag)))  # what a deleted tag left, or a load's
                if registry.tag_exists(tag.tag) or registry.model(tag.tag) is not None or registry.unsettled(left):
                    # Made, or being loaded, since the check (a write that began before the restore did):
                    # this step would remove its archives, and undoing the restore would delete it.
                    raise Conflict("not_empty", f"The tag '{tag.tag}' was made while the backup was restored; "
                                   "what was restored was removed again. Delete the tag, or restore into a new server.")
                registry.journal_restore("tags", tag.tag)
                touched.append(tag.tag)
                epochs[tag.tag] = registry.epoch(tag.tag)
                for key in left:
                    store.delete(key)
                if tag.versions:
                    registry.restore_versions(tag.tag, max(tag.versions))
                for version, member in sorted(tag.versions.items()):
                    record = _model(services, tag.tag, version, _member_bytes(tar, backup.members[member]))
                    key = keys.model_key(tag.tag, version)
                    store.put(key, pack([record], services.spec))
                    registry.settle_versions([key])  # not a dead training's of a tag once of this name
                    if version == tag.current:
                        pointers.append(ModelPointer(tag.tag, version, key, record.threshold, record.trained_at,
                                                     record.metrics))
                for sample_type, examples in (("positive", tag.positives), ("negative", tag.negatives)):
                    for image_id in examples:
                        registry.assign(image_id, tag.tag, sample_type, max_tags)
                registry.add_tag(tag.tag, max_tags)  # listed as it was, with no examples or model left too
            claim.check()
            # The journal goes before the last step: a crash between the two leaves a restore that the
            # next one refuses as not empty (removing nothing), never a finished one it would remove.
            registry.clear_restore_journal()
            if pointers:
                catalog.publish(services, pointers, epochs=epochs, rollback=True, max_tags=max_tags)
    except BaseException as exc:
        if claim.lost.is_set():
            raise LeaseLost from exc  # the journal stays: the next restore removes what this one added
        if _undo(services, added, touched, claim):
            with contextlib.suppress(Exception):  # else the next restore removes the rest
                registry.clear_restore_journal()
        if isinstance(exc, EpochMoved):
            raise Conflict("tag_deleted", "A tag was deleted while the backup was restored; what was restored "
                           "was removed again.") from None
        raise


def _undo(services: Services, added: list[str], touched: list[str], claim: RestoreClaim) -> bool:
    """Remove the tags and images a restore added; whether all of it is gone (a backend may be
    down: the error that stopped the restore is the one to report). Stops (LeaseLost) once the
    lease is lost: another restore may hold the server by then."""
    complete = True
    for tag in touched:
        claim.check()
        try:
            services.registry.delete_tag(tag)
            for key in list(services.store.list(keys.model_prefix(tag))):
                services.store.delete(key)
        except Exception:
            complete = False
    for image_id in added:
        claim.check()
        try:
            images.forget_image(services, image_id)
        except NotFound:  # journalled, but the crash came before it was added
            pass
        except Exception:
            complete = False
    return complete
