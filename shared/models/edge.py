"""Edge export: one ONNX file holding the backbone and a set of custom heads.

The graph takes (N, 3, 224, 224) images preprocessed as ``shared.models.backbone.preprocess``
does, and outputs ``scores`` (N, T) — the same probabilities the server returns — plus the
backbone's ``embedding``, ``style`` and ``logits``. The tags, thresholds and versions travel in
the file's metadata under ``tagsmith`` (JSON), so the file is all a device needs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shared.models.backbone import BackboneSpec
from shared.models.heads import HeadMatrix

METADATA_KEY = "tagsmith"


def _normalised(graph: onnx.GraphProto, name: str, width: int) -> str:
    """Nodes computing x / max(|x|, 1e-12) * sqrt(width) per row, as ``heads.normalise`` does."""
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(1e-12, dtype=np.float32), f"{name}_eps"),
            numpy_helper.from_array(np.array(math.sqrt(width), dtype=np.float32), f"{name}_scale"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("ReduceL2", [name], [f"{name}_norm"], axes=[1], keepdims=1),
            helper.make_node("Max", [f"{name}_norm", f"{name}_eps"], [f"{name}_safe"]),
            helper.make_node("Div", [name, f"{name}_safe"], [f"{name}_unit"]),
            helper.make_node("Mul", [f"{name}_unit", f"{name}_scale"], [f"{name}_normalised"]),
        ]
    )
    return f"{name}_normalised"


def build_edge_model(backbone_onnx: Path, matrix: HeadMatrix, spec: BackboneSpec) -> bytes:
    """The backbone graph with every head of ``matrix`` appended as one MatMul + Add + Sigmoid."""
    model = onnx.load(str(backbone_onnx))
    graph = model.graph
    semantic = _normalised(graph, "embedding", spec.embedding_size)
    style = _normalised(graph, "style", spec.style_size)
    graph.initializer.extend(
        [
            numpy_helper.from_array(matrix.columns.astype(np.float32), "head_weights"),
            numpy_helper.from_array(matrix.biases.astype(np.float32), "head_biases"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Concat", [semantic, style], ["features"], axis=1),
            helper.make_node("MatMul", ["features", "head_weights"], ["head_logits"]),
            helper.make_node("Add", ["head_logits", "head_biases"], ["head_sum"]),
            helper.make_node("Sigmoid", ["head_sum"], ["scores"]),
        ]
    )
    graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(matrix.tags)]))
    manifest = {
        "backbone": spec.id,
        "input": {"name": "images", "size": 224, "scale": "RGB / 127.5 - 1", "resize": "short side 256, centre crop"},
        "tags": [
            {"tag": tag, "threshold": float(matrix.thresholds[i]), "version": matrix.versions[i]}
            for i, tag in enumerate(matrix.tags)
        ],
    }
    helper.set_model_props(model, {METADATA_KEY: json.dumps(manifest)})
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def edge_manifest(model_bytes: bytes) -> dict[str, object]:
    """The tags, thresholds and versions stored in an exported file."""
    model = onnx.load_from_string(model_bytes)
    props = {p.key: p.value for p in model.metadata_props}
    return dict(json.loads(props[METADATA_KEY]))
