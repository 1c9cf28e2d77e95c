"""The JSON shapes the API answers with: ``components/schemas`` of the OpenAPI document.

A route's docstring names its success body's shape (``response: {schema: Prediction}``) or
writes one inline (it may ``$ref`` these). Objects stay open (a new field breaks no client), but
every field listed is typed, and maps keyed by tag say what each value holds
(``additionalProperties``). ``tests/test_openapi.py`` checks real answers against them, and the
schemathesis test (``tests/test_fuzz.py``) checks every answer it provokes.
"""

from __future__ import annotations

from typing import Any


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], properties: dict[str, Any], description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "required": required, "properties": properties}
    if description:
        schema["description"] = description
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _map(values: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "additionalProperties": values}


STR: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer"}
COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
BOOL: dict[str, Any] = {"type": "boolean"}
PROBABILITY: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1}
VERSION: dict[str, Any] = {"type": "integer", "minimum": 1}
TIME: dict[str, Any] = {"type": "string", "description": "UTC, ISO 8601."}
SAMPLE_TYPE: dict[str, Any] = {"type": "string", "enum": ["positive", "negative"]}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj(["error", "message"], {
        "error": {"type": "string", "description": "A stable code, e.g. `unknown_tag`."},
        "message": {"type": "string", "description": "What went wrong, for a person."},
    }, "Every error answer; some carry more fields."),
    # --- images -------------------------------------------------------------------------
    "Image": _obj(["image_id", "filename", "format", "width", "height"], {
        "image_id": STR,
        "filename": {"type": "string", "description": "As uploaded ('' when sent without one)."},
        "format": {"type": "string", "description": "e.g. JPEG, PNG, WEBP."},
        "width": COUNT, "height": COUNT,
        "bytes": {"type": "integer", "minimum": 0, "description": "Size as uploaded."},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "created_at": TIME,
    }, "A stored image."),
    "AddedImage": _obj(["image_id", "filename", "format", "width", "height", "duplicate"], {
        "image_id": STR, "filename": STR, "format": STR, "width": COUNT, "height": COUNT,
        "duplicate": {"type": "boolean", "description": "True: these bytes were stored already, as this image."},
    }),
    "FileFailure": _obj(["filename", "image_id", "status", "error", "message"], {
        "filename": STR, "image_id": _nullable(STR),
        "status": {"type": "integer", "description": "The status this file alone would have got."},
        "error": STR, "message": STR,
    }, "One file of a batch that was not stored."),
    "AddedBatch": _obj(["added", "failed", "images"], {
        "added": COUNT, "failed": COUNT,
        "images": {"type": "array", "items": {"anyOf": [ref("AddedImage"), ref("FileFailure")]},
                   "description": "One entry per file, in the order sent."},
    }),
    "ImageDetails": {"allOf": [ref("Image"), _obj(["tags"], {
        "tags": _map(SAMPLE_TYPE, "Each tag the image is an example of, and how."),
    })]},
    "ImageDeleted": _obj(["image_id", "deleted", "removed_from"], {
        "image_id": STR, "deleted": BOOL, "removed_from": {"type": "array", "items": STR},
    }),
    "Assignment": _obj(["image_id", "tag", "type", "positives", "negatives"], {
        "image_id": STR, "tag": STR, "type": SAMPLE_TYPE, "positives": COUNT, "negatives": COUNT,
    }),
    "Unassignment": _obj(["image_id", "tag", "removed", "positives", "negatives"], {
        "image_id": STR, "tag": STR, "removed": _nullable(SAMPLE_TYPE), "positives": COUNT, "negatives": COUNT,
    }),
    # --- the library --------------------------------------------------------------------
    "LibraryImage": {"allOf": [ref("Image"), {"type": "object", "properties": {
        "score": {**_nullable(PROBABILITY), "description": "With `tag`: its score (null until scored)."},
        "match": {**_nullable(BOOL), "description": "With `tag`: score at or above its threshold."},
        "label": {**_nullable(SAMPLE_TYPE), "description": "With `tag`: the image's label for it."},
    }}]},
    "ImagePage": _obj(["total", "offset", "limit", "images", "next", "tags"], {
        "total": {"type": "integer", "minimum": 0, "description": "How many match, over every page."},
        "offset": COUNT, "limit": COUNT,
        "next": {**_nullable(STR), "description": "The next page's `cursor`; null on the last page."},
        "tags": _map(_obj(["version", "threshold", "scores_from"], {
            "version": VERSION, "threshold": PROBABILITY, "scores_from": _nullable(VERSION),
        }), "Per tag used: its current version and the version its library scores come from."),
        "images": {"type": "array", "items": ref("LibraryImage")},
    }),
    "SimilarImages": _obj(["image_id", "similar"], {
        "image_id": STR,
        "similar": {"type": "array", "items": {"allOf": [ref("Image"), _obj(["similarity"], {
            "similarity": {"type": "number", "minimum": -1, "maximum": 1},
        })]}},
    }),
    "LibrarySummary": _obj(["images", "embedded", "pending", "packs", "tags"], {
        "images": COUNT, "embedded": COUNT, "pending": COUNT, "packs": COUNT,
        "tags": _map(_obj(["version", "scores_from", "up_to_date"], {
            "version": VERSION, "scores_from": _nullable(VERSION), "up_to_date": BOOL,
        }), "Per tag with a model."),
    }),
    # --- tags, models and training ------------------------------------------------------
    "Metrics": {
        "type": "object",
        "description": "Cross-validated metrics of a model version, and how it was trained; the "
        "fields depend on the training (none of the scores when there were too few examples).",
        "properties": {
            **{name: _nullable({"type": "number"}) for name in ("roc_auc", "f1", "precision", "recall", "accuracy")},
            **{name: COUNT for name in ("positives", "negatives", "presumed_negatives", "folds")},
        },
    },
    "Model": _obj(["version", "threshold", "trained_at", "metrics"], {
        "version": VERSION, "threshold": PROBABILITY, "trained_at": TIME, "metrics": ref("Metrics"),
        "caution": {**_nullable(STR), "description": "Said when the version was trained on too few examples "
                    "to cross-validate, or on fewer than 5 of a kind; null otherwise."},
    }, "A model version."),
    "TagSummary": _obj(["tag", "positives", "negatives", "model"], {
        "tag": STR, "positives": COUNT, "negatives": COUNT,
        "model": {**_nullable(ref("Model")), "description": "The current model; null until one is trained."},
    }),
    "TagList": _obj(["tags", "next"], {
        "tags": {"type": "array", "items": ref("TagSummary")},
        "next": {**_nullable(STR), "description": "Pass as `after` for the next page; null on the last."},
    }),
    "TagDetails": _obj(["tag", "positives", "negatives", "model"], {
        "tag": STR,
        "positives": {"type": "array", "items": STR, "description": "Image ids, sorted."},
        "negatives": {"type": "array", "items": STR, "description": "Image ids, sorted."},
        "model": _nullable(ref("Model")),
    }),
    "VersionList": _obj(["tag", "current", "versions"], {
        "tag": STR, "current": _nullable(VERSION),
        "versions": {"type": "array", "items": {"allOf": [ref("Model"), _obj(["current"], {"current": BOOL})]}},
    }),
    "Rollback": _obj(["tag", "version", "previous", "threshold"], {
        "tag": STR, "version": VERSION, "previous": _nullable(VERSION), "threshold": PROBABILITY,
    }),
    "TaskQueued": _obj(["task_id", "tag", "status", "already_queued"], {
        "task_id": STR, "tag": STR, "status": {"type": "string", "enum": ["queued"]}, "already_queued": BOOL,
    }),
    "TrainingResult": _obj(["tag", "version", "threshold", "metrics"], {
        "tag": STR, "version": VERSION, "threshold": PROBABILITY, "form": STR, "metrics": ref("Metrics"),
        "trained_at": TIME,
        "published": {"type": "boolean", "description": "False when a newer version was published meanwhile."},
    }, "The version a finished training made."),
    "Task": _obj(["task_id", "tag", "status", "progress", "stage"], {
        "task_id": STR, "tag": _nullable(STR),
        "status": {"type": "string", "enum": ["queued", "started", "finished", "failed"]},
        "progress": PROBABILITY,
        "stage": {"type": "string", "description": "queued, embedding, training, saving, done or failed."},
        "attempts": COUNT,
        "enqueued_at": _nullable(TIME), "started_at": _nullable(TIME), "ended_at": _nullable(TIME),
        "result": {**ref("TrainingResult"), "description": "Once finished."},
        "error": {"type": "string", "description": "Once failed: why."},
    }, "A training task."),
    "TagDeleted": _obj(["tag", "deleted"], {"tag": STR, "deleted": BOOL}),
    # --- predictions --------------------------------------------------------------------
    "CustomScore": _obj(["score", "match", "threshold", "version"], {
        "score": PROBABILITY, "match": {"type": "boolean", "description": "score >= threshold."},
        "threshold": PROBABILITY, "version": VERSION,
    }, "One custom tag's verdict, by its current model."),
    "CustomScores": _map(ref("CustomScore"), "Every custom tag with a model (or, when asked, those that match), best "
                         "score first."),
    "Keyword": _obj(["name", "score", "kind"], {
        "name": STR, "score": PROBABILITY,
        "kind": {"type": "string", "enum": ["label", "parent"],
                 "description": "A label of the base model, or a broader word that groups labels."},
    }),
    "Style": _obj(["name", "score"], {"name": STR, "score": PROBABILITY}),
    "Prediction": _obj(["keywords", "styles", "style_scores", "custom"], {
        "keywords": {"type": "array", "items": ref("Keyword"), "description": "Base keywords, best first."},
        "styles": {"type": "array", "items": ref("Style"), "description": "Base styles scoring 0.5 or more, best first."},
        "style_scores": _map(PROBABILITY, "Every base style's score."),
        "custom": ref("CustomScores"),
    }),
    "CustomPrediction": _obj(["custom"], {"custom": ref("CustomScores")}),
    "StoredPrediction": _obj(["image_id", "custom"], {"image_id": STR, "custom": ref("CustomScores")}),
    "TagPrediction": {"allOf": [ref("CustomScore"), _obj(["tag"], {"tag": STR, "image_id": STR})]},
    "Suggestions": _obj(["tag", "version", "threshold", "candidates", "uncertain", "likely_positive"], {
        "tag": STR, "version": VERSION, "threshold": PROBABILITY, "candidates": COUNT,
        **{name: {"type": "array", "items": _obj(["image_id", "score", "match"], {
            "image_id": STR, "score": PROBABILITY, "match": BOOL,
        })} for name in ("uncertain", "likely_positive")},
    }),
    # --- state --------------------------------------------------------------------------
    "StateLoaded": _obj(["loaded"], {"loaded": {"type": "array", "items": _obj(["tag", "version", "threshold", "published"], {
        "tag": STR, "version": VERSION, "threshold": PROBABILITY,
        "published": {"type": "boolean", "description": "False when a newer version (a training that ended "
                      "meanwhile) was published first: this one is stored, one rollback away."},
    })}}),
    "Restored": _obj(["images", "tags"], {
        "images": COUNT,
        "tags": {"type": "array", "items": _obj(["tag", "positives", "negatives", "versions", "current"], {
            "tag": STR, "positives": COUNT, "negatives": COUNT,
            "versions": {"type": "array", "items": VERSION}, "current": _nullable(VERSION),
        })},
    }),
    # --- operations ---------------------------------------------------------------------
    "Health": _obj(["status"], {"status": {"type": "string", "enum": ["ok"]}}),
    "Ready": _obj(["status", "checks"], {
        "status": {"type": "string", "enum": ["ready"]},
        "checks": _obj(["redis", "store"], {"redis": STR, "store": STR}),
    }),
    "OpenApiDocument": _obj(["openapi", "info", "paths"], {
        "openapi": STR, "info": {"type": "object"}, "paths": {"type": "object"}, "components": {"type": "object"},
    }, "An OpenAPI 3.1 document (this one)."),
}
