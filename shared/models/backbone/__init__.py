"""The image backbone, behind one small interface (``Backbone``): any runtime or model that gives
``Features`` for images can be configured without touching the callers.

    spec        Features, BackboneSpec, the Backbone protocol, the float32 contract
    preprocess  resize and centre-crop to the 224 x 224 input
    lite0       EfficientNet-Lite0 in torch (GPU workers; the reference)
    exported    its ONNX export, run by OpenVINO or ONNX Runtime on CPUs
    runtime     choosing and opening one of them
"""

from shared.core.settings import RUNTIMES
from shared.models.backbone.preprocess import INPUT_SIZE, preprocess, preprocess_batch
from shared.models.backbone.runtime import choose_runtime, open_backbone
from shared.models.backbone.spec import LITE0, PRECISION, Backbone, BackboneSpec, Features, PrecisionError

__all__ = [
    "INPUT_SIZE",
    "LITE0",
    "PRECISION",
    "RUNTIMES",
    "Backbone",
    "BackboneSpec",
    "Features",
    "PrecisionError",
    "choose_runtime",
    "open_backbone",
    "preprocess",
    "preprocess_batch",
]
