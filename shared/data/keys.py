"""The object store's key formats, in one place.

    images/<image_id>                          the bytes as uploaded
    embeddings/<backbone_id>/<image_id>.npy    the image's cached feature vector for that backbone
    thumbnails/<image_id>/<size>.jpg           a thumbnail made once, at one of a few sizes
    models/<tag>/v<version>.tar                one state archive per trained (or loaded) version
    library/<backbone_id>/packs/<name>.npz     the embeddings of many library rows, written at once
    library/<backbone_id>/packs/<name>.similar.npz   the same rows' short vectors for /similar
"""

from __future__ import annotations

import re


def image_key(image_id: str) -> str:
    return f"images/{image_id}"


def embedding_key(backbone_id: str, image_id: str) -> str:
    return f"embeddings/{backbone_id}/{image_id}.npy"


def thumbnail_key(image_id: str, size: int) -> str:
    return f"thumbnails/{image_id}/{size}.jpg"


def thumbnail_prefix(image_id: str) -> str:
    return f"thumbnails/{image_id}/"


def model_key(tag: str, version: int) -> str:
    return f"models/{tag}/v{version}.tar"


def model_prefix(tag: str) -> str:
    """The prefix of every version archive of the tag."""
    return f"models/{tag}/"


def model_version(tag: str, key: str) -> int | None:
    """The version a key of ``model_prefix(tag)`` holds, or None for any other object there."""
    match = re.fullmatch(rf"models/{re.escape(tag)}/v(\d+)\.tar", key)
    return int(match.group(1)) if match else None


def model_of_key(key: str) -> tuple[str, int] | None:
    """The tag and version a ``model_key`` names, or None for any other key."""
    match = re.fullmatch(r"models/([^/]+)/v(\d+)\.tar", key)
    return (match.group(1), int(match.group(2))) if match else None


def pack_key(backbone_id: str, name: str) -> str:
    return f"library/{backbone_id}/packs/{name}.npz"


def similar_key(pack: str) -> str:
    """The short-vector companion of the pack stored at ``pack``."""
    return pack.removesuffix(".npz") + ".similar.npz"
