"""Validation of the names and numbers that come in paths: tags, image ids, example types,
versions and task ids. Each returns the value in its canonical form or raises ``InvalidInput``."""

from __future__ import annotations

import re
import unicodedata
import uuid

from shared.core.errors import InvalidInput, NotFound

_IMAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_TASK_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_VERSION = re.compile(r"[0-9]{1,18}")  # ASCII digits: str.isdigit() also takes '²' or '①', which int() refuses
SAMPLE_TYPES = ("positive", "negative")
MAX_TAG_BYTES = 255  # the longest file name most file systems allow
# Characters that show as nothing (Unicode's default-ignorable ones that are not format
# characters, which are refused as category C). The Hangul compatibility fillers exist for that
# alone. The others modify the character before them, as scripts need them (Japanese ideographic
# variants, Mongolian spellings, emoji shown as emoji: "ℹ️", keycaps: "1️⃣"); anywhere else they
# only make "cat" and "cat" + one of them two tags that look alike.
_FILLERS = frozenset("\u3164\uffa0")
_MODIFIERS = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\ufe00-\ufe0f"
                        "\U000e0100-\U000e01ef]")
_BLANK = frozenset(" \u2800")  # characters that render as empty space (U+2800: the blank Braille pattern)


def validate_tag(tag: str, max_length: int = 64, stored: bool = False) -> str:
    """Return the tag in NFC form, or raise InvalidInput saying what is wrong with it. ``stored``:
    a tag the server already holds, read as the release that took it checked it (without the
    later rule on characters that show as nothing)."""
    tag = unicodedata.normalize("NFC", tag)
    if not tag:
        raise InvalidInput("invalid_tag", "The tag is empty.")
    if not stored and _hides_characters(tag):
        raise InvalidInput("invalid_tag", "The tag holds characters that show as nothing (fillers, or "
                           "variation selectors and joiners after a plain letter) or only blank space.")
    if len(tag) > max_length:
        raise InvalidInput("invalid_tag", f"The tag is longer than {max_length} characters.")
    if (  # control, format, surrogate (a lone one has no UTF-8) and unassigned characters: category C
        tag != tag.strip()
        or tag.startswith(".")
        or any(c in "/\\" or (unicodedata.category(c)[0] in "CZ" and c != " ") for c in tag)
    ):
        raise InvalidInput(
            "invalid_tag",
            "A tag may hold letters, digits, spaces and punctuation, but no slashes, control "
            "characters or surrounding spaces, and may not start with a dot.",
        )
    if len(tag.encode()) > MAX_TAG_BYTES:  # it names a folder of the local store: models/<tag>/
        raise InvalidInput("invalid_tag", f"The tag is longer than {MAX_TAG_BYTES} bytes in UTF-8.")
    return tag


def _hides_characters(tag: str) -> bool:
    """Whether the tag shows nothing, holds a filler, or a modifier (``_MODIFIERS``) where no
    script puts one (``_modifies``)."""
    if any(c in _FILLERS for c in tag) or all(c in _BLANK or _MODIFIERS.match(c) for c in tag):
        return True
    return any(not _modifies(tag, found.start()) for found in _MODIFIERS.finditer(tag))


def _modifies(tag: str, at: int) -> bool:
    """Whether the modifier at ``at`` follows a character it belongs to: an emoji presentation
    selector a non-ASCII symbol or punctuation mark, ℹ or a keycap's base; a standardized variation selector
    a symbol or an ideograph; an ideographic variation selector an ideograph; a Mongolian free
    variation selector a Mongolian letter, Khmer's inherent vowels Khmer, Hangul's fillers Hangul
    jamo, the grapheme joiner a non-ASCII letter or mark. Never after nothing or another modifier."""
    if at == 0 or _MODIFIERS.match(tag[at - 1]):
        return False
    c, before = tag[at], tag[at - 1]
    kind, name = unicodedata.category(before), unicodedata.name(before, "")
    if c in "\ufe0e\ufe0f":
        keycap = before in "0123456789#*" and tag[at + 1 : at + 2] == "\u20e3"
        return keycap or (not before.isascii() and kind[0] in "SP") or before == "\u2139"
    if "\ufe00" <= c <= "\ufe0d":
        return kind[0] == "S" or name.startswith("CJK")
    if c >= "\U000e0100":
        return name.startswith("CJK")
    if "\u180b" <= c <= "\u180f":
        return name.startswith("MONGOLIAN")
    if c in "\u17b4\u17b5":
        return name.startswith("KHMER")
    if c in "\u115f\u1160":  # in a syllable spelled out in conjoining jamo
        return _jamo(name) or _jamo(unicodedata.name(tag[at + 1 : at + 2] or " ", ""))
    return not before.isascii() and kind[0] in "LM"  # the grapheme joiner


def _jamo(name: str) -> bool:
    return name.startswith(("HANGUL CHOSEONG", "HANGUL JUNGSEONG", "HANGUL JONGSEONG"))


def validate_image_id(image_id: str) -> str:
    """Return the image id, or raise InvalidInput if it is not 1-128 of [A-Za-z0-9_.-] starting alphanumeric."""
    if not _IMAGE_ID.fullmatch(image_id):
        raise InvalidInput(
            "invalid_image_id",
            "An image id is 1 to 128 characters of letters, digits, '_', '.' and '-', "
            "starting with a letter or digit.",
        )
    return image_id


def validate_sample_type(sample_type: str) -> str:
    if sample_type not in SAMPLE_TYPES:
        raise InvalidInput("invalid_type", "The type must be 'positive' or 'negative'.")
    return sample_type


def validate_version(version: str) -> int:
    """A model version: a whole number from 1."""
    if not _VERSION.fullmatch(version) or int(version) < 1:
        raise InvalidInput("invalid_version", "The version must be a whole number from 1.")
    return int(version)


def validate_task_id(task_id: str) -> str:
    """A task id as the queue makes them; anything else names no task (NotFound, as an unknown one)."""
    if not _TASK_ID.fullmatch(task_id):
        raise NotFound("unknown_task", f"No task with id '{task_id}'.")
    return task_id


MAX_FILENAME = 255


def clean_filename(name: str) -> str:
    """An uploaded file's name as kept: its last path component, without control characters or
    surrounding spaces, at most 255 characters ('' when nothing is left)."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1])
    kept = "".join(c for c in name if unicodedata.category(c)[0] != "C" and c not in _FILLERS)
    return kept.strip()[:MAX_FILENAME].strip()  # a cut may end at a space


def new_image_id() -> str:
    return uuid.uuid4().hex
