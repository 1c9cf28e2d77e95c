"""Validation of the names and numbers that come in paths: tags, image ids, example types,
versions and task ids. Each returns the value in its canonical form or raises ``InvalidInput``."""

from __future__ import annotations

import functools
import re
import unicodedata
import uuid
from collections.abc import Iterable
from pathlib import Path

from shared.core.errors import InvalidInput, NotFound

_IMAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_TASK_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_VERSION = re.compile(r"[0-9]{1,18}")  # ASCII digits: str.isdigit() also takes '²' or '①', which int() refuses
SAMPLE_TYPES = ("positive", "negative")
MAX_TAG_BYTES = 255  # the longest file name most file systems allow
MAX_MARKS = 4  # combining marks on one character of a new tag (Vietnamese puts two, Hebrew three)
# Characters that show as nothing (Unicode's default-ignorable ones that are not format
# characters, which are refused as category C). The Hangul compatibility fillers exist for that
# alone. The others modify the character before them, as scripts need them (Japanese ideographic
# variants, Mongolian spellings, emoji shown as emoji: "ℹ️", keycaps: "1️⃣"); anywhere else they
# only make "cat" and "cat" + one of them two tags that look alike.
_FILLERS = frozenset("\u3164\uffa0")
# File names lose these too: the conjoining Hangul fillers as well, which a name may be made of alone.
_FILENAME_BLANKS = _FILLERS | frozenset("\u115f\u1160")
_MODIFIERS = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\ufe00-\ufe0f"
                        "\U000e0100-\U000e01ef]")
_BLANK = frozenset(" \u2800")  # characters that render as empty space (U+2800: the blank Braille pattern)
# Characters whose compatibility form (NFKC) differs and that a new tag still keeps: emoji shown
# as emoji (with U+FE0F; the enclosed ideographs U+1F201-U+1F251 are emoji by default), Thai's and
# Lao's vowel AM (in everyday words: "น้ำ"), and the Hangul letters a keyboard types alone ("ㅋㅋ";
# NFKC makes them the conjoining jamo that build syllables). Any other character NFKC changes
# (fullwidth "ｃａｔ", "𝐜at", ligatures, superscripts, "ℹ" without U+FE0F) looks like its plain form.
_EMOJI_COMPAT = frozenset("\u203c\u2049\u2122\u2139\u24c2\u3297\u3299\U0001f201\U0001f202\U0001f21a\U0001f22f"
                          "\U0001f232\U0001f233\U0001f234\U0001f235\U0001f236\U0001f237\U0001f238\U0001f239"
                          "\U0001f23a\U0001f250\U0001f251")
_COMPAT_KEPT = frozenset("\u0e33\u0eb3") | frozenset(map(chr, range(0x3131, 0x318F)))
# The script of a letter is the first word of its Unicode name ("CYRILLIC SMALL LETTER ES"), but
# for these first words: Han's, kana's and Latin's letters named otherwise, and letters that belong
# to no one script (modifier letters as "ʻ" in "Hawaiʻi", the prolonged sound mark "ー").
# Unnamed letters (Tangut, in Python 3.11's tables) count as no script.
_SCRIPT_OF_WORD = {"CJK": "HAN", "IDEOGRAPHIC": "HAN", "HENTAIGANA": "HIRAGANA", "TURNED": "LATIN", "ROMAN": "LATIN"}
_NO_SCRIPT = frozenset({"", "MODIFIER", "KATAKANA-HIRAGANA", "MASU", "VEDIC", "VERTICAL", "INFORMATION", "CARON"})
# Scripts one word may mix: UTS #39's "highly restrictive" level (Japanese, Chinese, Korean with Latin).
_SCRIPT_SETS = (frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}), frozenset({"LATIN", "HAN", "BOPOMOFO"}),
                frozenset({"LATIN", "HAN", "HANGUL"}))


def validate_tag(tag: str, max_length: int | None = None) -> str:
    """Return the tag in NFC form, or raise InvalidInput saying what is wrong with it: the rules
    every tag name meets, whoever names it (a request, a stored model, an archive or a backup).
    ``max_length`` (characters) bounds the tags a backup makes; a tag named in a request, an archive
    or the store is bounded by ``MAX_TAG_BYTES`` only, so lowering the setting never strands a tag
    that exists. A new tag's name meets more (``validate_new_tag``)."""
    tag = unicodedata.normalize("NFC", tag)
    if not tag:
        raise InvalidInput("invalid_tag", "The tag is empty.")
    if max_length is not None and len(tag) > max_length:
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


def validate_new_tag(tag: str, max_length: int = 64) -> str:
    """``validate_tag``, and what a tag that does not exist yet may not look like: longer than
    ``max_length``, characters that show as nothing, and lookalikes of other names. Rules added in
    later releases, so they apply where a tag is made (assigning an example, a state archive's new
    tag), not where one is named that a server already holds or a backup carries: those stay
    readable as the release that took them."""
    tag = validate_tag(tag, max_length)
    if _hides_characters(tag):
        raise InvalidInput("invalid_tag", "The tag holds characters that show as nothing (fillers, "
                           "variation selectors and joiners after a plain letter, or combining marks with "
                           "no letter before them) or only blank space.")
    if _stacks_marks(tag):
        raise InvalidInput("invalid_tag", f"The tag stacks combining marks (the same one twice in a row, or more than "
                           f"{MAX_MARKS} on one character): they draw over each other, so tags differing in them look "
                           "the same.")
    _refuse_lookalikes(tag)
    return tag


def fold_case(tag: str) -> str:
    """A tag name with case ignored, as every comparison of tag names ignores it (a new tag's twin,
    finding tags by part of their name) and as the web page ignores it (JavaScript's
    ``toLowerCase``): lower case only, not ``casefold``, which would make "Masse" the tag "Maße"."""
    return tag.lower()


def _stacks_marks(tag: str) -> bool:
    """Whether, in NFD, a combining mark follows itself ("ก้้" beside "ก้", "café́" beside "café") or more
    than ``MAX_MARKS`` follow one character: what UTS #39 (section 5.4) suggests refusing (Tibetan's
    subjoined letters, marks by category but letters in use, are not counted)."""
    run, before = 0, ""
    for c in unicodedata.normalize("NFD", tag):
        if unicodedata.category(c) not in ("Mn", "Me"):
            run, before = 0, c
            continue
        run += not "\u0f90" <= c <= "\u0fbc"  # Tibetan's subjoined letters stack as letters ("བྷྲཱུཾ")
        if c == before or run > MAX_MARKS:
            return True
        before = c
    return False


def _refuse_lookalikes(tag: str) -> None:
    """Raise InvalidInput if the tag is written to look like another: in compatibility characters
    (not in NFKC, but for ``_kept_compatible``), or with a word whose letters come from scripts
    that no language writes together (Cyrillic "с" in "сat"). A word all in another script
    (Cyrillic "сор") looks like another only beside it ("cop"): ``lookalike``."""
    plain = _plain_form(tag)
    if plain != tag:
        raise InvalidInput("invalid_tag", "The tag holds compatibility characters (fullwidth, styled or "
                           f"superscript letters, ligatures) that look like plain ones; use '{plain}'.")
    for word, scripts in _words(tag):
        if len(scripts) > 1 and not any(scripts <= allowed for allowed in _SCRIPT_SETS):
            names = " and ".join(sorted(script.title() for script in scripts))
            raise InvalidInput("invalid_tag", f"The word '{word}' mixes {names} letters, as a lookalike of "
                               "another word would; write each word in one script (Latin may go with Chinese, "
                               "Japanese or Korean).")


def lookalike(tag: str, others: Iterable[str]) -> str | None:
    """The first of ``others`` that looks like ``tag`` in letters of other scripts ("сор" in
    Cyrillic and "cop", Greek "ΑΙ" and "AI"): the same UTS #39 skeleton, other scripts. Within the
    same scripts, names of one skeleton are words of their own ("modem" and "modern", Turkish "kır"
    and "kir", "AI" and "Al")."""
    shape, scripts = skeleton(tag), _scripts_of(tag)
    return next((other for other in others
                 if other != tag and skeleton(other) == shape and _scripts_of(other) != scripts), None)


def _scripts_of(text: str) -> frozenset[str]:
    return frozenset(filter(None, map(_script, text)))


@functools.lru_cache(maxsize=20_000)  # the tags of a server, checked against each new one
def skeleton(tag: str) -> str:
    """What the tag looks like (UTS #39): each character replaced by the prototype it is confusable
    with, in NFD."""
    prototypes = _prototypes()
    return unicodedata.normalize("NFD", "".join(prototypes.get(c, c) for c in unicodedata.normalize("NFD", tag)))


@functools.cache
def _prototypes() -> dict[str, str]:
    """Unicode's confusable characters (``confusables.txt`` beside this module): each to its prototype."""
    table = {}
    for line in (Path(__file__).parent / "confusables.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            source, prototype = line.split(";")
            table[chr(int(source, 16))] = "".join(chr(int(code, 16)) for code in prototype.split())
    return table


def _plain_form(tag: str) -> str:
    """The tag in NFKC, but for the characters ``_kept_compatible`` keeps as they are."""
    parts, start = [], 0
    for at, c in enumerate(tag):
        if _kept_compatible(tag, at):
            parts += [unicodedata.normalize("NFKC", tag[start:at]), c]
            start = at + 1
    return "".join(parts) + unicodedata.normalize("NFKC", tag[start:])


def _kept_compatible(tag: str, at: int) -> bool:
    c = tag[at]
    if c in _EMOJI_COMPAT:
        return tag[at + 1 : at + 2] == "\ufe0f" or c >= "\U0001f201"
    return c in _COMPAT_KEPT


def _words(tag: str) -> list[tuple[str, frozenset[str]]]:
    """The tag's words (runs of letters, marks and digits: spaces, punctuation and symbols part
    them), each with the scripts of its letters (``_script``)."""
    found, word = [], ""
    for c in tag + " ":
        if unicodedata.category(c)[0] in "LMN":
            word += c
        elif word:
            found.append((word, frozenset(filter(None, map(_script, word)))))
            word = ""
    return found


def _script(c: str) -> str:
    """A letter's script, from its Unicode name (see ``_SCRIPT_OF_WORD``); '' for anything else."""
    if unicodedata.category(c)[0] != "L":
        return ""
    first = unicodedata.name(c, "").split(" ", 1)[0]
    return "" if first in _NO_SCRIPT else _SCRIPT_OF_WORD.get(first, first)


def _hides_characters(tag: str) -> bool:
    """Whether the tag shows nothing, holds a filler, a blank Braille pattern among other than
    Braille (it shows as a space: "z\u2800z" beside "z z"), or a modifier (``_MODIFIERS``) where no
    script puts one (``_modifies``)."""
    if any(c in _FILLERS for c in tag) or all(c in _BLANK or _MODIFIERS.match(c) for c in tag):
        return True
    if _mark_on_nothing(tag):
        return True
    if "\u2800" in tag and not all("\u2800" <= c <= "\u28ff" or c == " " for c in tag):
        return True
    return any(not _modifies(tag, found.start()) for found in _MODIFIERS.finditer(tag))


def _mark_on_nothing(tag: str) -> bool:
    """Whether a combining mark starts the tag or a word (a lone "◌́" shows as a dotted circle or as
    nothing, and " ́" as a space)."""
    return any(unicodedata.category(c)[0] == "M" and (at == 0 or tag[at - 1] in _BLANK)
               for at, c in enumerate(tag))


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
    surrounding spaces, in NFC, at most 255 characters ('' when nothing is left). Cleaning a
    cleaned name changes nothing (a backup's names are checked so): a character removed between a
    letter and its accent had left them uncomposed, and every later backup unrestorable."""
    cleaned = _clean_once(name)
    for _ in range(3):  # a cut or a removal can leave what the next pass changes; one pass settles it
        again = _clean_once(cleaned)
        if again == cleaned:
            break
        cleaned = again
    return cleaned


def _clean_once(name: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(c for c in name if unicodedata.category(c)[0] != "C" and c not in _FILENAME_BLANKS)
    return unicodedata.normalize("NFC", kept).strip()[:MAX_FILENAME].strip()  # a cut may end at a space


def new_image_id() -> str:
    return uuid.uuid4().hex
