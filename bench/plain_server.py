"""The plain server a user would write around the same model: the speed benchmarks' baseline.

Starlette and uvicorn, one compiled OpenVINO model (the backbone ONNX file tagsmith serves,
float32 precision hint, read back), and per request: read the multipart upload, decode it with
Pillow in draft mode, resize the short side to 256, centre crop 224, run the forward pass in a
thread (one at a time: concurrent calls of a compiled model fail with 'Infer Request is
busy'), answer the top 5 ImageNet labels as JSON (the shape of Immich's machine-learning
service's classification answer). Nothing else: no batching, no limits, no styles.

    python -m bench.plain_server --port 8100 [--model FILE]
"""

from __future__ import annotations

import argparse
import io
import threading
from pathlib import Path

import numpy as np
import openvino as ov
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared.core.settings import Settings
from shared.models.backbone.exported import export_onnx
from shared.models.base_keywords import keyword_table


def load(path: Path) -> ov.CompiledModel:
    model = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    precision = model.get_property("INFERENCE_PRECISION_HINT").to_string()
    if precision != "f32":
        raise SystemExit(f"OpenVINO compiled the model in {precision}, not f32")
    return model


def pixels(data: bytes) -> np.ndarray:
    opened = Image.open(io.BytesIO(data))
    opened.draft("RGB", (256, 256))  # JPEGs: the smallest DCT scale still at least 256 x 256
    image = opened.convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((max(224, round(image.width * scale)), max(224, round(image.height * scale))),
                         Image.Resampling.BICUBIC)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    return (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]


def app(model_path: Path) -> Starlette:
    model = load(model_path)
    labels = keyword_table().labels
    one_at_a_time = threading.Lock()  # a compiled model's own request serves one caller at a time

    def classify(data: bytes) -> list[dict[str, object]]:
        batch = pixels(data)
        with one_at_a_time:
            logits = model(batch)[2][0]  # outputs: embedding, style, logits
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        return [{"label": labels[i], "score": round(float(probabilities[i]), 4)}
                for i in np.argsort(-probabilities)[:5]]

    async def predict(request: Request) -> JSONResponse:
        async with request.form() as form:
            upload = form["data"]
            data = await upload.read()  # type: ignore[union-attr]
        return JSONResponse({"classification": await run_in_threadpool(classify, data)})

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--model", type=Path, help="the ONNX file (default: tagsmith's export, built if missing)")
    args = parser.parse_args()
    uvicorn.run(app(args.model or export_onnx(Settings().model_cache_dir)), host="127.0.0.1", port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
