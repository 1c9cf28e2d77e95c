"""The library's Redis data: image rows, images waiting to be embedded, embedding packs, and each
tag's score column over every row (key layout in ``shared/data/registry.py``'s docstring).

A score column is one Redis string of float32, 4 bytes per image per tag; a row holds 1 + its score,
so the zero bytes Redis fills a gap with read as "not scored". Columns are written only while the
version that made them is the tag's current one (one Lua step), so a slow rescore never overwrites
a newer version's scores and a deleted tag gets none back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import redis

# KEYS: the models hash, the tag's score column, the scored hash; ARGV: the tag, the version the
# scores come from, whether they cover the whole library (1 or 0), then (byte offset, bytes) pairs.
# Returns 0 when that version is no longer the tag's current one (nothing written), else 1.
_WRITE_SCORES = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or cjson.decode(current)['version'] ~= tonumber(ARGV[2]) then return 0 end
for i = 4, #ARGV, 2 do redis.call('SETRANGE', KEYS[2], tonumber(ARGV[i]), ARGV[i + 1]) end
if ARGV[3] == '1' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[2]) end
return 1
"""

SCORE_BYTES = 4


@dataclass(frozen=True)
class LibraryKeys:
    prefix: str

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def ids(self) -> str:
        return self._k("library", "ids")

    @property
    def names(self) -> str:
        return self._k("library", "names")

    @property
    def live(self) -> str:
        return self._k("library", "live")

    @property
    def pending(self) -> str:
        return self._k("library", "pending")

    @property
    def failed(self) -> str:
        return self._k("library", "failed")

    @property
    def packs(self) -> str:
        return self._k("library", "packs")

    @property
    def scored(self) -> str:
        return self._k("library", "scored")

    @property
    def unscored(self) -> str:
        return self._k("library", "unscored")

    @property
    def models(self) -> str:
        return self._k("models")

    def scores(self, tag: str) -> str:
        return self._k("scores", tag)


def runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted distinct rows as (first, end) ranges of consecutive rows."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(rows)]))
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, ends, strict=True)]


def encode_scores(scores: np.ndarray) -> bytes:
    return (np.asarray(scores, dtype=np.float64) + 1.0).astype("<f4").tobytes()


def decode_scores(data: bytes | None, rows: int) -> np.ndarray:
    """A score column as (rows,) float32 scores, NaN where a row has none."""
    column = np.zeros(rows, dtype=np.float32)
    if data:
        stored = np.frombuffer(data[: rows * SCORE_BYTES], dtype="<f4")
        column[: len(stored)] = stored
    column[column == 0] = np.nan
    return column - np.float32(1.0)


class Library:
    """Reads and writes of the library's Redis data."""

    def __init__(self, client: redis.Redis, keys: LibraryKeys) -> None:
        self.redis = client
        self.keys = keys
        self._write_scores = client.register_script(_WRITE_SCORES)

    def rows(self, start: int = 0) -> tuple[list[str], list[str]]:
        """The image id and file name of every row from ``start`` on."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(self.keys.ids, start, -1)
            pipe.lrange(self.keys.names, start, -1)
            ids, names = pipe.execute()
        count = min(len(ids), len(names))  # both grow in one step; equal unless read mid-way
        return [text(x) for x in ids[:count]], [text(x) for x in names[:count]]

    def live(self, rows: int) -> np.ndarray:
        """(rows,) bool: which rows' images are still stored."""
        data = bytes(self.redis.get(self.keys.live) or b"")  # type: ignore[arg-type]
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:rows].astype(bool)
        return np.concatenate((bits, np.zeros(rows - len(bits), dtype=bool)))

    def pending(self, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` rows waiting to be embedded, oldest first, with their image ids."""
        rows = [int(text(x)) for x in self.redis.zrange(self.keys.pending, 0, limit - 1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.lindex(self.keys.ids, row)
            ids = pipe.execute()
        return [(row, text(image_id)) for row, image_id in zip(rows, ids, strict=True) if image_id is not None]

    def pending_count(self) -> int:
        return int(self.redis.zcard(self.keys.pending))

    def failed_rows(self) -> list[int]:
        """Rows whose images could not be embedded (deleted ones included)."""
        return sorted(int(text(x)) for x in self.redis.smembers(self.keys.failed))

    def add_pack(self, key: str | None, size: int, done: list[int], failed: tuple[int, ...] | list[int] = (),
                 unscored_since: float | None = None) -> None:
        """Record a written pack (if any) and take the rows ``done`` off the waiting list, noting
        those of them that ``failed`` to embed, in one step; with ``unscored_since`` (a time), the
        pack is listed as not scored yet until ``mark_scored``."""
        with self.redis.pipeline(transaction=True) as pipe:
            if key is not None:
                pipe.hset(self.keys.packs, key, size)
                if unscored_since is not None:
                    pipe.zadd(self.keys.unscored, {key: unscored_since})
            if failed:
                pipe.sadd(self.keys.failed, *failed)
            if done:
                pipe.zrem(self.keys.pending, *done)
            pipe.execute()

    def mark_scored(self, packs: list[str]) -> None:
        """The packs' rows were scored with every current model."""
        if packs:
            self.redis.zrem(self.keys.unscored, *packs)

    def unscored(self, before: float = float("inf")) -> list[str]:
        """Packs recorded before ``before`` whose rows were not scored yet (a job failed or died
        between recording and scoring them)."""
        return [text(k) for k in self.redis.zrangebyscore(self.keys.unscored, "-inf", before)]

    def packs(self) -> dict[str, int]:
        """Every pack's object key and size, in key order."""
        return {text(k): int(v) for k, v in sorted(self.redis.hgetall(self.keys.packs).items())}

    def replace_packs(self, old: list[str], new: str | None, size: int) -> None:
        """Swap merged packs for the pack ``new`` (None: they held only deleted rows), in one step."""
        with self.redis.pipeline(transaction=True) as pipe:
            if new is not None:
                pipe.hset(self.keys.packs, new, size)
            pipe.hdel(self.keys.packs, *old)
            pipe.execute()

    def read_scores(self, tags: list[str], rows: int) -> list[np.ndarray]:
        with self.redis.pipeline(transaction=False) as pipe:
            for tag in tags:
                pipe.get(self.keys.scores(tag))
            raw = pipe.execute()
        return [decode_scores(data, rows) for data in raw]

    def write_scores(self, tag: str, version: int, rows: np.ndarray, scores: np.ndarray, whole: bool) -> bool:
        """Write ``scores`` of the sorted ``rows`` for ``version`` of the tag (``whole``: it covers
        the library, which records the version as the one the tag's scores come from). False, and
        nothing written, when that version is no longer current."""
        encoded = encode_scores(scores)
        args: list[str | int | bytes] = [tag, version, int(whole)]
        offset = 0
        for first, end in runs(rows):
            args += [first * SCORE_BYTES, encoded[offset * SCORE_BYTES : (offset + end - first) * SCORE_BYTES]]
            offset += end - first
        keys = [self.keys.models, self.keys.scores(tag), self.keys.scored]
        return bool(self._write_scores(keys=keys, args=args, client=self.redis))

    def scored(self) -> dict[str, int]:
        """Tag -> the version its whole-library scores come from."""
        return {text(k): int(v) for k, v in self.redis.hgetall(self.keys.scored).items()}

    def memory(self, tags: list[str]) -> int:
        """Bytes Redis holds for the library: rows, bitmap, waiting list, packs and score columns."""
        keys = [self.keys.ids, self.keys.names, self.keys.live, self.keys.pending, self.keys.packs, self.keys.failed,
                self.keys.scored, self.keys.unscored, *(self.keys.scores(t) for t in tags)]
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)
            return sum(int(x or 0) for x in pipe.execute())


def text(value: object) -> str:
    """A Redis reply as text (replies are bytes unless the client decodes them)."""
    return value.decode() if isinstance(value, bytes) else str(value)
