"""The Redis data model: images, per-tag examples, model pointers and the generation counter.

Keys, all under one prefix ``P``:

- ``P:image:<id>``            hash of image metadata
- ``P:images``                sorted set of image ids, scored by when they were added
- ``P:reserve:<id>``          short-lived claim on an id while its bytes are written
- ``P:tag:<tag>:positive``    set of image ids (likewise ``:negative``)
- ``P:tag:<tag>:version``     counter of model versions ever made for the tag
- ``P:tag:<tag>:epoch``       bumped when the tag is deleted; a training started before is discarded
- ``P:tag:<tag>:deleted_through``  the last version number handed out before the tag's last delete:
                              archives up to it belong to the deleted tag, even if a crash kept them
- ``P:tags``                  set of tags with examples or a model
- ``P:models``                hash tag -> JSON pointer to the current model version
- ``P:generation``            bumped on every model change; predict reloads heads when it moves
- ``P:sha:<sha256>``          the id of a stored image with that content (duplicates find it)
- ``P:copies:<sha256>``       set: the other images stored with that content (under ids of their own);
                               one of them takes over ``P:sha`` when its image is deleted
- ``P:lease:<name>``          a lease (``restore``: the one restore running; a tag's versions being changed)
- ``P:restore:images``        set: the image ids an unfinished restore was about to add (``:tags``: its tags)

The library (every stored image, scored by every current model) numbers images by *row*, in the
order they were stored; a row is never reused:

- ``P:library:ids``           list: the image id of each row (``P:library:names``: its file name)
- ``P:library:live``          bitmap: 1 for each row whose image is still stored
- ``P:library:pending``       sorted set of the rows not yet embedded into the library
- ``P:library:packs``         hash: object key of each embedding pack -> how many rows it holds
- ``P:scores:<tag>``          string: 1 + the score of each row, float32 little-endian (0: not scored)
- ``P:library:scored``        hash tag -> the version the tag's whole-library scores come from
"""

from __future__ import annotations

import calendar
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
import redis.lock

from shared.core.errors import Conflict, NotFound
from shared.data.library import LibraryKeys
from shared.data.library import text as _text

RESERVATION_SECONDS = 120

# KEYS: the image's hash, the images index; ARGV: the id, created_at, the index score.
_SET_CREATED_AT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'created_at', ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[1])
return 1
"""

# A lease held by one owner (a restore, a change of a tag's versions): renewed or released only by
# the token that took it.
_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: the tag set; ARGV: the tag, the most tags allowed (0: no limit). 0 when a new tag would pass it.
_ADD_TAG = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if tonumber(ARGV[2]) > 0 and redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
return redis.call('SADD', KEYS[1], ARGV[1]) + 1
"""

# KEYS: a reservation; ARGV: a token prefix. Removes the reservation if its token has the prefix.
_RELEASE_HELD_BY = """
local token = redis.call('GET', KEYS[1])
if token and string.sub(token, 1, #ARGV[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: models hash, tags set, generation counter, then one epoch key per checked tag, then the
# unsettled versions. ARGV: number of checked epochs, rollback (1 or 0), the most tags allowed (0:
# no limit), the expected epochs, then (tag, version, pointer JSON) triples.
# Returns -1 if an epoch moved, -2 if the new tags would pass the limit, else the tags whose
# pointer moved (never to an older version, unless rollback; never to the version it holds); every
# pointer's archive is then settled (a version of its tag), moved or not.
_PUBLISH = """
local n, any_version, max_tags = tonumber(ARGV[1]), ARGV[2] == '1', tonumber(ARGV[3])
for i = 1, n do
  if tonumber(redis.call('GET', KEYS[3 + i]) or '0') ~= tonumber(ARGV[3 + i]) then return -1 end
end
if max_tags > 0 then
  local new, seen = 0, {}
  for i = n + 4, #ARGV, 3 do
    if not seen[ARGV[i]] and redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then new = new + 1 end
    seen[ARGV[i]] = true
  end
  if new > 0 and redis.call('SCARD', KEYS[2]) + new > max_tags then return -2 end
end
local moved = {}
for i = n + 4, #ARGV, 3 do
  local tag, version = ARGV[i], tonumber(ARGV[i + 1])
  local current = redis.call('HGET', KEYS[1], tag)
  local old = current and cjson.decode(current)['version']
  if not old or old < version or (any_version and old ~= version) then
    redis.call('HSET', KEYS[1], tag, ARGV[i + 2])
    redis.call('SADD', KEYS[2], tag)
    table.insert(moved, tag)
  end
end
if #moved > 0 then redis.call('INCR', KEYS[3]) end
for i = n + 4, #ARGV, 3 do redis.call('ZREM', KEYS[#KEYS], cjson.decode(ARGV[i + 2])['key']) end
return moved
"""

# KEYS: the image's hash, its reservation, the unlinked set; ARGV: the reservation's lifetime in
# seconds, its token, the id. Returns 1 if the image exists, 2 if another add holds the id, else 0:
# the id is now reserved, and unlinked (files may be stored under it) until its commit.
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[1]) then return 2 end
redis.call('SADD', KEYS[3], ARGV[3])
return 0
"""

# KEYS: the image's hash, the images index, the reservation, the content's sha key, the library's
# ids, names, live bitmap and pending set, the unlinked set, the content's copies; ARGV: the key prefix, score and id for the index,
# whether to return an existing image of the same content instead (1 or 0), the file name, the
# reservation's token, then the hash's field-value pairs. Returns {0, existing id} for a duplicate
# (nothing stored), {-1, ''} if the reservation lapsed (the bytes may be gone: nothing committed),
# else {1, row}.
_COMMIT = """
if redis.call('GET', KEYS[3]) ~= ARGV[6] then return {-1, ''} end
local other = redis.call('GET', KEYS[4])
if ARGV[4] == '1' and other and redis.call('EXISTS', ARGV[1] .. ':image:' .. other) == 1 then
  redis.call('DEL', KEYS[3])
  return {0, other}
end
local row = redis.call('RPUSH', KEYS[5], ARGV[3]) - 1
redis.call('RPUSH', KEYS[6], ARGV[5])
redis.call('SETBIT', KEYS[7], row, 1)
redis.call('ZADD', KEYS[8], row, row)
redis.call('HSET', KEYS[1], 'row', row, unpack(ARGV, 7))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[9], ARGV[3])
if not other or redis.call('EXISTS', ARGV[1] .. ':image:' .. other) == 0 then
  redis.call('SET', KEYS[4], ARGV[3])
elseif other ~= ARGV[3] then
  redis.call('SADD', KEYS[10], ARGV[3])
end
return {1, row}
"""

# Which of some tags an image is an example of (ARGV: the key prefix, the image id, then the tags),
# as {tag, 'positive' or 'negative', ...}: replies for those tags alone (a pipeline of two membership
# checks a tag took 80-130 ms at 10,000 tags, mostly in Python). Called for ASSIGNMENT_TAGS tags
# at a time, so that Redis serves others between calls.
ASSIGNMENT_TAGS = 1000
_ASSIGNMENTS = """
local out = {}
for i = 3, #ARGV do
  local tag = ARGV[i]
  local base = ARGV[1] .. ':tag:' .. tag .. ':'
  if redis.call('SISMEMBER', base .. 'positive', ARGV[2]) == 1 then
    table.insert(out, tag); table.insert(out, 'positive')
  elseif redis.call('SISMEMBER', base .. 'negative', ARGV[2]) == 1 then
    table.insert(out, tag); table.insert(out, 'negative')
  end
end
return out
"""

# KEYS: an image's hash, the unlinked set; ARGV: its id. No longer unlinked if the image exists.
_FILES_STORED = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('SREM', KEYS[2], ARGV[1]) end
"""

# Give a row to an image stored before the library existed (KEYS: its hash, then the library's
# ids, names, live bitmap and pending set; ARGV: the id). Nothing for an image that has one.
_ADD_ROW = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'row') == 1 then return -1 end
local row = redis.call('RPUSH', KEYS[2], ARGV[1]) - 1
redis.call('RPUSH', KEYS[3], redis.call('HGET', KEYS[1], 'filename') or '')
redis.call('SETBIT', KEYS[4], row, 1)
redis.call('ZADD', KEYS[5], row, row)
redis.call('HSET', KEYS[1], 'row', row)
return row
"""

# Assign an example (KEYS: the tag set, the tag's set of this type, its other set, the image's hash;
# ARGV: tag, image id, the most tags allowed or 0). A new tag beyond the limit assigns nothing and
# returns 0, an image that no longer exists -1: the checks and the assignment are one step, so
# concurrent new tags cannot go over the limit and a concurrent delete cannot leave an example behind.
_ASSIGN = """
if redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
if ARGV[4] == '0' and redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return -2 end
if tonumber(ARGV[3]) > 0 and redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0
   and redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""


# Delete an image (KEYS: its hash, the images index, the tag set, the library's live bitmap and
# pending set, its reservation, the unlinked set; ARGV: the key prefix, the image id, the
# reservation's lifetime and token) and remove it from every tag in one step, so no assignment made
# meanwhile survives it; its row goes dark, its content names a copy of it if one is left, its id
# is reserved and unlinked until its files are gone. Returns the tags it was an example of.
_DELETE_IMAGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local row = redis.call('HGET', KEYS[1], 'row')
if row then
  redis.call('SETBIT', KEYS[4], tonumber(row), 0)
  redis.call('ZREM', KEYS[5], row)
end
local sha = redis.call('HGET', KEYS[1], 'sha256')
if sha then
  local named, copies = ARGV[1] .. ':sha:' .. sha, ARGV[1] .. ':copies:' .. sha
  redis.call('SREM', copies, ARGV[2])
  if redis.call('GET', named) == ARGV[2] then
    redis.call('DEL', named)
    local copy = redis.call('SPOP', copies)
    while copy and redis.call('EXISTS', ARGV[1] .. ':image:' .. copy) == 0 do copy = redis.call('SPOP', copies) end
    if copy then redis.call('SET', named, copy) end
  end
end
local removed = {}
for _, tag in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local base = ARGV[1] .. ':tag:' .. tag .. ':'
  local was = redis.call('SREM', base .. 'positive', ARGV[2]) + redis.call('SREM', base .. 'negative', ARGV[2])
  if was > 0 then table.insert(removed, tag) end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('SET', KEYS[6], ARGV[4], 'EX', ARGV[3])
redis.call('SADD', KEYS[7], ARGV[2])
return removed
"""

# Delete a tag (KEYS: its positive and negative sets, the models hash, the tag set, its epoch, its
# deleted_through, its version counter, the generation, its library scores, the scored hash; ARGV:
# the tag) in one step, marking every version handed out so far as the deleted tag's.
_DELETE_TAG = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[9])
redis.call('HDEL', KEYS[10], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('INCR', KEYS[5])
redis.call('SET', KEYS[6], redis.call('GET', KEYS[7]) or 0)
redis.call('INCR', KEYS[8])
"""


def _too_many_tags(max_tags: int) -> Conflict:
    return Conflict("too_many_tags", f"There are already {max_tags} tags, the most allowed "
                    "(TAGSMITH_MAX_TAGS); delete one or reuse an existing tag.")


@dataclass(frozen=True)
class ModelPointer:
    """Where a tag's current model lives and what it was measured to do."""

    tag: str
    version: int
    key: str
    threshold: float
    trained_at: str
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelPointer:
        return cls(**json.loads(text))


class EpochMoved(RuntimeError):
    """The tag was deleted while its model was being made."""


class Registry:
    """All reads and writes of tagsmith's metadata in Redis."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client  # every call, the Lua scripts' too, goes through this client
        self.prefix = prefix
        self._publish = client.register_script(_PUBLISH)
        self._reserve = client.register_script(_RESERVE)
        self._commit = client.register_script(_COMMIT)
        self._files_stored = client.register_script(_FILES_STORED)
        self._add_row = client.register_script(_ADD_ROW)
        self.library_keys = LibraryKeys(prefix)
        self._assign = client.register_script(_ASSIGN)
        self._assignments = client.register_script(_ASSIGNMENTS)
        self._delete_image = client.register_script(_DELETE_IMAGE)
        self._delete_tag = client.register_script(_DELETE_TAG)
        self._set_created_at = client.register_script(_SET_CREATED_AT)
        self._renew_lease = client.register_script(_RENEW_LEASE)
        self._release_lease = client.register_script(_RELEASE_LEASE)
        self._release_held_by = client.register_script(_RELEASE_HELD_BY)
        self._add_tag = client.register_script(_ADD_TAG)

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # Images -----------------------------------------------------------------

    def reserve_image(self, image_id: str, holder: str = "") -> str:
        """Claim an unused id before its bytes are stored; Conflict if it exists or is being added.
        Returns the token ``release_image`` gives it back with: ``holder`` and a random part, so that
        ``release_images_held_by`` can find the reservations of a holder that died.

        One atomic round trip: no commit of the same id can slip between the two checks."""
        token = holder + uuid.uuid4().hex
        taken = self._reserve(keys=[self._k("image", image_id), self._k("reserve", image_id), self._k("unlinked")],
                              args=[RESERVATION_SECONDS, token, image_id], client=self.redis)
        if taken == 1:
            raise Conflict("image_exists", f"An image with id '{image_id}' already exists.")
        if taken == 2:
            raise Conflict("image_exists", f"An image with id '{image_id}' is being added or deleted right now.")
        return token

    def commit_image(self, image_id: str, token: str, meta: dict[str, str | int], filename: str = "",
                     dedupe: bool = False) -> str | None:
        """Make an image reserved with ``token`` visible, once its bytes are safely stored, with the
        next library row, waiting to be embedded (one atomic call). With ``dedupe``, an image already
        stored with the same content (``meta['sha256']``) wins instead: its id is returned and nothing
        is committed. Conflict if the reservation lapsed meanwhile: the id was free again, and what
        the add stored may have been removed (``remove_unlinked_files``)."""
        fields: list[str | int | float] = [self.prefix, time.time(), image_id, int(dedupe), filename, token]
        for name, value in {**meta, "filename": filename, "created_at": utc_now()}.items():
            fields += [name, value]
        lib = self.library_keys
        keys = [self._k("image", image_id), self._k("images"), self._k("reserve", image_id),
                self._k("sha", str(meta.get("sha256", ""))), lib.ids, lib.names, lib.live, lib.pending,
                self._k("unlinked"), self._k("copies", str(meta.get("sha256", "")))]
        done, value = self._commit(keys=keys, args=fields, client=self.redis)
        if done == -1:
            raise Conflict("changed_meanwhile", f"Storing the image took longer than its id stays reserved "
                           f"({RESERVATION_SECONDS} s), so it was not kept; add it again.")
        return None if done else _text(value)

    def image_with_content(self, sha256: str) -> str | None:
        """The id of a stored image with this content hash, if any."""
        image_id = self.redis.get(self._k("sha", sha256))
        return _text(image_id) if image_id and self.image_exists(_text(image_id)) else None

    def index_library(self) -> int:
        """Give a library row to every image stored before the library existed (once; they wait to
        be embedded). Returns how many were given one."""
        marker = self._k("library", "indexed")
        if self.redis.exists(marker):
            return 0
        self._index_images()
        lib, given = self.library_keys, 0
        for image_id in self.redis.zrange(self._k("images"), 0, -1):  # oldest first
            keys = [self._k("image", _text(image_id)), lib.ids, lib.names, lib.live, lib.pending]
            given += self._add_row(keys=keys, args=[_text(image_id)], client=self.redis) >= 0
        self.redis.set(marker, "1")
        return given

    def set_created_at(self, image_id: str, created_at: str, when: float) -> None:
        """Give a stored image the time it was first added (``utc_now``'s form), as a restore from a
        backup does, and its place among the images (``when``: seconds since the epoch, finer than
        ``created_at`` so that images added in one second keep their order); nothing if it was
        deleted meanwhile (one step: no hash of a deleted image is left behind)."""
        self._set_created_at(keys=[self._k("image", image_id), self._k("images")], args=[image_id, created_at, when],
                             client=self.redis)

    def release_image(self, image_id: str, token: str) -> None:
        """Give back the id's reservation, if ``token`` (from ``reserve_image`` or ``delete_image``)
        still holds it: one that lapsed meanwhile may be another add's now."""
        self._release_lease(keys=[self._k("reserve", image_id)], args=[token], client=self.redis)

    def release_images_held_by(self, image_ids: list[str], holder: str) -> None:
        """Give back the reservations of ``image_ids`` that ``holder`` made (``reserve_image``), as
        the one that holds its role now, after the one that made them died."""
        if not holder:
            raise ValueError("a holder is needed: every reservation's token starts with ''")
        for image_id in image_ids:
            self._release_held_by(keys=[self._k("reserve", image_id)], args=[holder], client=self.redis)

    def unlinked(self, most: int) -> list[str]:
        """Up to ``most`` ids whose files may be stored without an image to show for them: reserved
        for an add that has not committed (or never will: its process died), or deleted with their
        files not yet all removed."""
        found = self.redis.srandmember(self._k("unlinked"), most)
        return [_text(x) for x in found] if isinstance(found, list) else []

    def files_removed(self, image_id: str) -> None:
        """The id's files are gone: it is no longer ``unlinked``."""
        self.redis.srem(self._k("unlinked"), image_id)

    def files_stored(self, image_id: str) -> None:
        """The id is no longer ``unlinked`` if an image holds it now (one step: a delete landing
        between a check and the removal would have lost its mark)."""
        self._files_stored(keys=[self._k("image", image_id), self._k("unlinked")], args=[image_id], client=self.redis)

    def image_exists(self, image_id: str) -> bool:
        return bool(self.redis.exists(self._k("image", image_id)))

    def image(self, image_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(self._k("image", image_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    def _index_images(self) -> None:
        """Build ``P:images`` once from the image hashes, for data stored before the index existed."""
        marker = self._k("images", "indexed")
        if self.redis.exists(marker):
            return
        pattern, start = self._k("image", "*"), len(self._k("image", ""))
        for key in self.redis.scan_iter(match=pattern, count=1000):
            image_id = _text(key)[start:]
            created = self.redis.hget(key, "created_at")
            when = calendar.timegm(time.strptime(_text(created), "%Y-%m-%dT%H:%M:%SZ")) if created else 0.0
            self.redis.zadd(self._k("images"), {image_id: when}, nx=True)
        self.redis.set(marker, "1")

    def image_ids(self, offset: int = 0, limit: int | None = None) -> list[str]:
        """Stored image ids, newest first."""
        self._index_images()
        end = -1 if limit is None else offset + limit - 1
        return [_text(x) for x in self.redis.zrevrange(self._k("images"), offset, end)]

    def image_count(self) -> int:
        self._index_images()
        return int(self.redis.zcard(self._k("images")))

    def images(self, image_ids: list[str]) -> list[dict[str, str]]:
        """Metadata of several images at once (an empty dict for an unknown id)."""
        with self.redis.pipeline() as pipe:
            for image_id in image_ids:
                pipe.hgetall(self._k("image", image_id))
            rows = pipe.execute()
        return [{_text(k): _text(v) for k, v in row.items()} for row in rows]

    def assignments(self, image_id: str) -> dict[str, str]:
        """The tags the image is an example of, each with 'positive' or 'negative', sorted by tag."""
        tags, found = self.tags(), []
        for start in range(0, len(tags), ASSIGNMENT_TAGS):
            chunk = tags[start : start + ASSIGNMENT_TAGS]
            found += [_text(x) for x in self._assignments(args=[self.prefix, image_id, *chunk], client=self.redis)]
        return dict(zip(found[::2], found[1::2], strict=True))

    def delete_image(self, image_id: str, token: str) -> list[str] | None:
        """Forget the image and remove it from every tag (one atomic step: an assignment racing the
        delete either comes before it and is removed, or finds no image), and reserve its id with
        ``token`` until ``release_image``, so that no new image of that id stores bytes before the
        old ones are gone; returns the tags it was an example of, or None (nothing done) if there is
        no such image."""
        removed = self._delete_image(
            keys=[self._k("image", image_id), self._k("images"), self._k("tags"), self.library_keys.live,
                  self.library_keys.pending, self._k("reserve", image_id), self._k("unlinked")],
            args=[self.prefix, image_id, RESERVATION_SECONDS, token],
            client=self.redis,
        )
        return None if removed is None else sorted(_text(x) for x in removed)

    # Examples ---------------------------------------------------------------

    def assign(self, image_id: str, tag: str, sample_type: str, max_tags: int = 0, create: bool = True) -> bool:
        """Make the image a positive or negative example of the tag; never both. A new tag beyond
        ``max_tags`` (0: no limit) is refused (Conflict too_many_tags), an image that does not exist
        (or was deleted meanwhile) too (NotFound unknown_image), atomically. Without ``create``
        only a tag that exists is assigned: False (nothing done) when it does not."""
        other = "negative" if sample_type == "positive" else "positive"
        keys = [self._k("tags"), self._k("tag", tag, sample_type), self._k("tag", tag, other),
                self._k("image", image_id)]
        done = self._assign(keys=keys, args=[tag, image_id, max_tags, int(create)], client=self.redis)
        if done == -1:
            raise NotFound("unknown_image", f"No image with id '{image_id}'.")
        if done == -2:
            return False
        if not done:
            raise _too_many_tags(max_tags)
        return True

    def unassign(self, image_id: str, tag: str) -> str | None:
        """Make the image no example of the tag; returns what it was ('positive', 'negative' or None)."""
        with self.redis.pipeline() as pipe:
            pipe.srem(self._k("tag", tag, "positive"), image_id)
            pipe.srem(self._k("tag", tag, "negative"), image_id)
            was_positive, was_negative = pipe.execute()
        return "positive" if was_positive else "negative" if was_negative else None

    def example_counts(self, tags: list[str]) -> list[tuple[int, int]]:
        """(positives, negatives) of each tag."""
        with self.redis.pipeline() as pipe:
            for tag in tags:
                pipe.scard(self._k("tag", tag, "positive"))
                pipe.scard(self._k("tag", tag, "negative"))
            counts = pipe.execute()
        return [(int(counts[2 * i]), int(counts[2 * i + 1])) for i in range(len(tags))]

    def examples(self, tag: str) -> tuple[list[str], list[str]]:
        """The tag's positive and negative image ids, sorted."""
        with self.redis.pipeline() as pipe:
            pipe.smembers(self._k("tag", tag, "positive"))
            pipe.smembers(self._k("tag", tag, "negative"))
            pos, neg = pipe.execute()
        return sorted(_text(x) for x in pos), sorted(_text(x) for x in neg)

    def tag_exists(self, tag: str) -> bool:
        return bool(self.redis.sismember(self._k("tags"), tag))

    def tags_exist(self, tags: list[str]) -> list[bool]:
        """``tag_exists`` of each, in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for tag in tags:
                pipe.sismember(self._k("tags"), tag)
            return [bool(found) for found in pipe.execute()]

    def tag_creation(self, wait_s: float = 10.0) -> redis.lock.Lock:
        """The lock held, by every process, while new tags are checked against the others and
        created (``shared/domain/labels.py`` ``creating_tags``); ``acquire`` gives up after ``wait_s``."""
        lock: redis.lock.Lock = self.redis.lock(self._k("lock", "tag-creation"), timeout=30, blocking_timeout=wait_s)
        return lock

    def check_room_for(self, tags: list[str], max_tags: int) -> None:
        """Refuse (Conflict too_many_tags) when adding ``tags`` would make more than ``max_tags`` tags."""
        new = {tag for tag in tags if not self.tag_exists(tag)}
        if new and self.redis.scard(self._k("tags")) + len(new) > max_tags:
            raise _too_many_tags(max_tags)

    def tags(self) -> list[str]:
        return sorted(_text(x) for x in self.redis.smembers(self._k("tags")))

    def add_tag(self, tag: str, max_tags: int = 0) -> None:
        """List the tag, with no examples or model yet (a backup's tag whose examples were all
        unlabelled; the caller has checked its name). A new tag beyond ``max_tags`` (0: no limit) is
        refused (Conflict too_many_tags), atomically."""
        if not self._add_tag(keys=[self._k("tags")], args=[tag, max_tags], client=self.redis):
            raise _too_many_tags(max_tags)

    # Models -----------------------------------------------------------------

    def model(self, tag: str) -> ModelPointer | None:
        raw = self.redis.hget(self._k("models"), tag)
        return ModelPointer.from_json(raw) if raw else None

    def models_of(self, tags: list[str]) -> dict[str, ModelPointer]:
        """The current model of each of ``tags`` that has one."""
        if not tags:
            return {}
        raw = self.redis.hmget(self._k("models"), tags)
        return {tag: ModelPointer.from_json(value) for tag, value in zip(tags, raw, strict=True) if value}

    def counts(self) -> tuple[int, int]:
        """(current models, stored images), in one round trip."""
        with self.redis.pipeline() as pipe:
            pipe.hlen(self._k("models"))
            pipe.zcard(self._k("images"))
            models, images = pipe.execute()
        return int(models), int(images)

    def models(self) -> dict[str, ModelPointer]:
        return {tag: ModelPointer.from_json(raw) for tag, raw in self.models_as_stored().items()}

    def models_as_stored(self) -> dict[str, str]:
        """Tag -> its pointer's JSON as stored, sorted by tag: what changed shows without parsing it."""
        raw = self.redis.hgetall(self._k("models"))
        return {_text(k): _text(v) for k, v in sorted(raw.items())}

    def generation(self) -> int:
        return int(self.redis.get(self._k("generation")) or 0)

    def epoch(self, tag: str) -> int:
        return int(self.redis.get(self._k("tag", tag, "epoch")) or 0)

    def journal_version(self, key: str) -> None:
        """Name a version archive about to be stored, until its publication settles it (``publish``):
        one that a crash between the two leaves is removed later (``unsettled_since``)."""
        self.redis.zadd(self._k("unsettled"), {key: time.time()})

    def settle_versions(self, keys: list[str]) -> None:
        if keys:
            self.redis.zrem(self._k("unsettled"), *keys)

    def unsettled(self, keys: list[str]) -> set[str]:
        """Those of ``keys`` stored and not yet published (or never: their process died)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zscore(self._k("unsettled"), key)
            scores = pipe.execute()
        return {key for key, score in zip(keys, scores, strict=True) if score is not None}

    def unsettled_since(self, seconds: float) -> list[str]:
        """Version archives journalled more than ``seconds`` ago and never settled, oldest first."""
        return [_text(k) for k in self.redis.zrangebyscore(self._k("unsettled"), "-inf", time.time() - seconds)]

    def next_version(self, tag: str) -> int:
        """A version number never handed out before for this tag, even across deletes."""
        return int(self.redis.incr(self._k("tag", tag, "version")))

    def publish(
        self,
        pointers: list[ModelPointer],
        epochs: dict[str, int] | None = None,
        rollback: bool = False,
        max_tags: int = 0,
    ) -> list[str]:
        """Move every pointer at once and bump the generation; all or nothing. Returns the tags moved.
        Every pointer's archive is settled in the same step (``journal_version``), moved or not.

        A pointer never moves back to an older version (when two trainings of one tag finish
        out of order, the newer version stays current) unless ``rollback`` asks for exactly
        that. With ``epochs``, refuse (EpochMoved) if any of those tags was deleted since; with
        ``max_tags``, refuse (Conflict too_many_tags) if the new tags would make more than that,
        in the same atomic step, so concurrent loads cannot pass the limit together.
        """
        epochs = epochs or {}
        keys = [self._k("models"), self._k("tags"), self._k("generation")]
        keys += [self._k("tag", tag, "epoch") for tag in epochs]
        keys.append(self._k("unsettled"))  # their archives are versions of their tags now, current or not
        args: list[str | int] = [len(epochs), int(rollback), max_tags, *epochs.values()]
        for p in pointers:
            args += [p.tag, p.version, p.to_json()]
        moved = self._publish(keys=keys, args=args, client=self.redis)
        if moved == -1:
            raise EpochMoved(",".join(epochs))
        if moved == -2:
            raise _too_many_tags(max_tags)
        return [_text(x) for x in moved]

    def restore_versions(self, tag: str, last_version: int) -> None:
        """Make the tag's version counter end at ``last_version`` and forget an earlier delete's
        mark (``deleted_through``), for a restore from a backup into a server without the tag: its
        versions keep their numbers and new trainings continue after them. The caller removes any
        archives the deleted tag left first."""
        with self.redis.pipeline() as pipe:
            pipe.set(self._k("tag", tag, "version"), last_version)
            pipe.delete(self._k("tag", tag, "deleted_through"))
            pipe.execute()

    def deleted_through(self, tag: str) -> int:
        """The last version number of the tag before its last delete (0 if never deleted): those
        versions are gone even where a crash or a store failure kept their archives."""
        return int(self.redis.get(self._k("tag", tag, "deleted_through")) or 0)

    def delete_tag(self, tag: str) -> None:
        """Forget the tag's examples, model and versions, in one step; images stay, version numbers
        are never reused."""
        keys = [self._k("tag", tag, "positive"), self._k("tag", tag, "negative"), self._k("models"), self._k("tags"),
                self._k("tag", tag, "epoch"), self._k("tag", tag, "deleted_through"), self._k("tag", tag, "version"),
                self._k("generation"), self.library_keys.scores(tag), self.library_keys.scored]
        self._delete_tag(keys=keys, args=[tag], client=self.redis)

    # Leases ------------------------------------------------------------------

    def claim_lease(self, name: str, token: str, seconds: int) -> bool:
        """Take the lease ``name`` for ``seconds``; False if another holder has it."""
        return bool(self.redis.set(self._k("lease", name), token, nx=True, ex=seconds))

    def renew_lease(self, name: str, token: str, seconds: int) -> bool:
        """Extend the lease ``token`` holds to ``seconds`` from now; False if it is no longer held."""
        return bool(self._renew_lease(keys=[self._k("lease", name)], args=[token, seconds], client=self.redis))

    def lease_key(self, name: str) -> str:
        """The key of the lease ``name``: it exists while someone holds the lease."""
        return self._k("lease", name)

    def release_lease(self, name: str, token: str) -> None:
        """Give the lease back, if ``token`` still holds it."""
        self._release_lease(keys=[self._k("lease", name)], args=[token], client=self.redis)

    def journal_restore(self, kind: str, name: str) -> None:
        """Record an image id (``kind`` "images") or tag ("tags") a restore is about to add, before
        it adds it: what a restore cut short by a crash added can then be removed by the next one."""
        self.redis.sadd(self._k("restore", kind), name)

    def restore_journal(self) -> tuple[list[str], list[str]]:
        """The image ids and tags an unfinished restore recorded (both empty when none is)."""
        images, tags = (sorted(_text(x) for x in self.redis.smembers(self._k("restore", kind)))
                        for kind in ("images", "tags"))
        return images, tags

    def unjournal(self, kind: str, name: str) -> None:
        """An image or tag deleted: not an unfinished restore's to remove, whoever makes it again."""
        self.redis.srem(self._k("restore", kind), name)

    def clear_restore_journal(self) -> None:
        self.redis.delete(self._k("restore", "images"), self._k("restore", "tags"))


def utc_now() -> str:
    """The current time as ISO 8601 UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
