"""Examples: making stored images positive or negative examples of a tag, or neither."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from redis.exceptions import LockError, RedisError

from shared.core.errors import InvalidInput, NotFound, Unavailable
from shared.core.names import fold_case, lookalike, skeleton, validate_new_tag
from shared.domain import catalog

if TYPE_CHECKING:
    from shared.domain.services import Services


def require_image(services: Services, image_id: str) -> None:
    if not services.registry.image_exists(image_id):
        raise NotFound("unknown_image", f"No image with id '{image_id}'.")


def check_new_tags(services: Services, tags: list[str]) -> None:
    """Refuse (InvalidInput) a name among ``tags`` that no tag has yet and that a new tag may not
    have (``validate_new_tag``), that differs from a tag there is only in case, or that looks like
    one (``lookalike``); a tag that exists is named as it was stored."""
    new = [tag for tag, exists in zip(tags, services.registry.tags_exist(tags), strict=True) if not exists]
    for tag in new:
        validate_new_tag(tag, services.settings.max_tag_length)
    if not new:
        return
    existing = services.registry.tags()
    by_shape: dict[str, list[str]] = {}  # lookalikes share a skeleton: each tag is compared within its own
    for other in existing:
        by_shape.setdefault(skeleton(other), []).append(other)
    existing_set = set(existing)
    by_case = {fold_case(other): other for other in existing}  # "Cat" beside "cat": a typo, almost always
    for tag in new:
        same = by_case.get(fold_case(tag))
        if same in existing_set:
            raise InvalidInput("invalid_tag", f"The tag '{tag}' differs from the tag '{same}', which exists, only in "
                               "case: use that one, or a name that differs in more than case.")
        if same is not None:
            raise InvalidInput("invalid_tag", f"The tags '{same}' and '{tag}' differ only in case: keep one of them.")
        by_case[fold_case(tag)] = tag
        shape = skeleton(tag)
        twin = lookalike(tag, by_shape.get(shape, []))
        if twin in existing_set:
            raise InvalidInput("invalid_tag", f"The tag '{tag}' looks like the tag '{twin}', which exists, in "
                               "letters of another script: use that one, or a name that looks different.")
        if twin is not None:  # several new tags at once (a state archive's)
            raise InvalidInput("invalid_tag", f"The tags '{twin}' and '{tag}' look alike in letters of different "
                               "scripts: keep one of them.")
        by_shape.setdefault(shape, []).append(tag)


ASSIGN_ATTEMPTS = 5  # a tag deleted between the check and the assignment, again and again


@contextlib.contextmanager
def creating_tags(services: Services, tags: list[str]) -> Iterator[bool]:
    """Check ``tags`` (``check_new_tags``) for the caller to create them: while one is new, the check
    and the caller's step run under the tag-creation lock, so that two requests creating lookalike
    tags at once cannot both pass the check (each had seen the other's tag missing). Yields whether
    they were checked as new: when all existed, the caller's step may not make one anew."""
    if all(services.registry.tags_exist(tags)):
        yield False
        return
    lock = services.registry.tag_creation()
    if not lock.acquire():
        raise Unavailable("busy", "The server is creating other tags; try again shortly.")
    try:
        check_new_tags(services, tags)
        yield True
    finally:
        # Held past its timeout (another may hold it now), or Redis unreachable: it lapses by itself,
        # and what the caller did under it stands.
        with contextlib.suppress(LockError, RedisError):
            lock.release()


def assign_checked(services: Services, image_id: str, tag: str, sample_type: str) -> None:
    """Assign the image to the tag under the rules for new tags (``creating_tags``). A tag that
    existed at the check is assigned only while it still exists: a delete landing in between had
    let the assignment make it anew past the rules (a lookalike of a tag made meanwhile); then it
    is checked again, as new."""
    for _ in range(ASSIGN_ATTEMPTS):
        with creating_tags(services, [tag]) as checked:
            if services.registry.assign(image_id, tag, sample_type, services.settings.max_tags, create=checked):
                return
    raise Unavailable("busy", f"The tag '{tag}' is being deleted and made again right now; try again shortly.")


def assign(services: Services, image_id: str, tag: str, sample_type: str) -> dict[str, Any]:
    """Make the image a positive or negative example of the tag; never both (the later call wins).
    A new tag beyond ``max_tags`` or with a name a new tag may not have is refused; so is an image
    that does not exist (checked first, and again inside the assignment's atomic step: a delete
    may land between the two)."""
    require_image(services, image_id)
    assign_checked(services, image_id, tag, sample_type)
    ((positives, negatives),) = services.registry.example_counts([tag])
    return {"image_id": image_id, "tag": tag, "type": sample_type, "positives": positives, "negatives": negatives}


def unassign(services: Services, image_id: str, tag: str) -> dict[str, Any]:
    """Make the image no example of the tag; ``removed`` says what it was (or None)."""
    require_image(services, image_id)
    catalog.require_tag(services, tag)
    removed = services.registry.unassign(image_id, tag)
    ((positives, negatives),) = services.registry.example_counts([tag])
    return {"image_id": image_id, "tag": tag, "removed": removed, "positives": positives, "negatives": negatives}
