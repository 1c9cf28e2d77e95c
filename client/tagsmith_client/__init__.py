"""Python client of the tagsmith HTTP API; needs only httpx (no torch).

    from tagsmith_client import Client

    with Client("http://127.0.0.1:5000") as tagsmith:
        image_id = tagsmith.add_image("cat.jpg")["image_id"]
        tagsmith.assign_image("positive", "cat", image_id)
        tagsmith.wait(tagsmith.train("cat")["task_id"])
        print(tagsmith.predict("photo.jpg")["custom"])
"""

from tagsmith_client.client import DEFAULT_URL, Client, ImageSource, default_url
from tagsmith_client.errors import TagsmithError, TaskFailed
from tagsmith_client.types import (
    AddedImage,
    Assignment,
    BatchResult,
    CustomScore,
    Prediction,
    Task,
    TaskStatus,
)

__all__ = [
    "DEFAULT_URL",
    "default_url",
    "AddedImage",
    "Assignment",
    "BatchResult",
    "Client",
    "CustomScore",
    "ImageSource",
    "Prediction",
    "TagsmithError",
    "Task",
    "TaskFailed",
    "TaskStatus",
]
