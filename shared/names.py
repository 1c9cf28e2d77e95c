"""Validation of the names users choose: tags and image ids."""

from __future__ import annotations

import re
import unicodedata
import uuid

from shared.errors import bad_request

_IMAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
SAMPLE_TYPES = ("positive", "negative")
MAX_TAG_BYTES = 255  # the longest file name most file systems allow


def validate_tag(tag: str, max_length: int = 64) -> str:
    """Return the tag in NFC form, or raise a 400 saying what is wrong with it."""
    tag = unicodedata.normalize("NFC", tag)
    if not tag:
        raise bad_request("invalid_tag", "The tag is empty.")
    if len(tag) > max_length:
        raise bad_request("invalid_tag", f"The tag is longer than {max_length} characters.")
    if len(tag.encode()) > MAX_TAG_BYTES:  # it names a folder of the local store: models/<tag>/
        raise bad_request("invalid_tag", f"The tag is longer than {MAX_TAG_BYTES} bytes in UTF-8.")
    if (
        tag != tag.strip()
        or tag.startswith(".")
        or any(c in "/\\" or (unicodedata.category(c)[0] in "CZ" and c != " ") for c in tag)
    ):
        raise bad_request(
            "invalid_tag",
            "A tag may hold letters, digits, spaces and punctuation, but no slashes, control "
            "characters or surrounding spaces, and may not start with a dot.",
        )
    return tag


def validate_image_id(image_id: str) -> str:
    """Return the image id, or raise a 400 if it is not 1-128 of [A-Za-z0-9_.-] starting alphanumeric."""
    if not _IMAGE_ID.fullmatch(image_id):
        raise bad_request(
            "invalid_image_id",
            "An image id is 1 to 128 characters of letters, digits, '_', '.' and '-', "
            "starting with a letter or digit.",
        )
    return image_id


def validate_sample_type(sample_type: str) -> str:
    if sample_type not in SAMPLE_TYPES:
        raise bad_request("invalid_type", "The type must be 'positive' or 'negative'.")
    return sample_type


def new_image_id() -> str:
    return uuid.uuid4().hex
