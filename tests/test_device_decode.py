"""The GPU worker's device decoding (``shared.models.backbone.device_decode``), run with torch's CPU
decoder: the same code as on CUDA but for the decoder's library (libjpeg-turbo, not nvJPEG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.io
from PIL import Image

from bench.device_decode import MIN_COSINE, MIN_COSINE_FULL_DECODE, cosines, parity, within_tolerance
from shared.core.errors import InvalidInput
from shared.data.keys import image_key
from shared.data.store import LocalStore
from shared.domain.embeddings import embed_images
from shared.models.backbone import device_decode, preprocess
from shared.models.backbone.device_decode import DeviceDecoder, Jpeg, crop_input, decode_jpegs, probe, upright
from shared.models.backbone.lite0 import EfficientNetLite0
from shared.models.decoding import UPRIGHT, decode_image
from tests.support.photos import encode, photo

LIMIT = 50_000_000


def cpu_path(data: bytes) -> np.ndarray:
    return preprocess(decode_image(data, LIMIT).image)


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, quality=90, exif=exif.tobytes())


def test_upright_transposes_as_pillow_does() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    for orientation, transpose in UPRIGHT.items():
        expected = np.asarray(image.transpose(transpose))
        assert np.array_equal(upright(tensor, orientation).permute(1, 2, 0).numpy(), expected), orientation
    assert upright(tensor, 1) is tensor


@pytest.mark.parametrize("size", [(1155, 866), (300, 900), (200, 150), (4000, 3000), (256, 256), (1000, 224)])
def test_crop_has_the_geometry_of_preprocess(size: tuple[int, int]) -> None:
    """The same pixels in, the same crop out, up to the rounding of Pillow's two 8-bit passes."""
    image = photo("coffee").resize(size)
    out = crop_input(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None])[0].numpy()
    levels = np.abs(out - preprocess(image)) * 127.5
    assert out.shape == (3, 224, 224)
    assert levels.max() <= 6.01 and levels.mean() < 0.25, (levels.max(), levels.mean())  # a pixel off: tens


def test_probe_takes_only_what_the_device_decodes() -> None:
    image = photo("astronaut")
    jpeg = probe(encode(image, quality=90), LIMIT)
    assert jpeg is not None and jpeg.orientation == 1 and jpeg.pixels == 512 * 512
    assert probe(encode(image, progressive=True), LIMIT) is not None
    assert probe(encode(image.convert("L")), LIMIT) is not None
    rotated = probe(with_orientation(image, 6), LIMIT)
    assert rotated is not None and rotated.orientation == 6
    data = encode(image, quality=90)
    for refused in (encode(image, "PNG"), encode(image.convert("CMYK")), data[: len(data) // 2], b"", b"\xff\xd8"):
        assert probe(refused, LIMIT) is None
    assert probe(data, 512 * 512 - 1) is None  # over the pixel limit: the CPU path refuses it


def test_a_file_the_decoder_refuses_fails_alone() -> None:
    good = [probe(encode(photo(name), quality=90), LIMIT) for name in ("coffee", "chelsea")]
    assert good[0] and good[1]
    bad = Jpeg(b"\xff\xd8" + bytes(100) + b"\xff\xd9", 1, 100)
    batch, failed = decode_jpegs([good[0], bad, good[1]], torch.device("cpu"))
    alone, _ = decode_jpegs([good[0], good[1]], torch.device("cpu"))
    assert failed == [1]
    assert torch.equal(batch[[0, 2]], alone) and not batch[1].any()


def test_decoding_is_bounded_by_the_device_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    jpegs = [probe(encode(photo("coffee"), quality=90), LIMIT) for _ in range(3)]
    everything, _ = decode_jpegs(jpegs, torch.device("cpu"))  # type: ignore[arg-type]
    monkeypatch.setattr(device_decode, "DEVICE_BUDGET_PIXELS", 1)  # one image per decoder call
    calls: list[int] = []
    original = torchvision.io.decode_jpeg  # device_decode imports it when it decodes

    def counting(data: list[torch.Tensor], **options: object) -> list[torch.Tensor]:
        calls.append(len(data))
        return original(data, **options)  # type: ignore[no-any-return]

    monkeypatch.setattr(torchvision.io, "decode_jpeg", counting)
    one_by_one, _ = decode_jpegs(jpegs, torch.device("cpu"))  # type: ignore[arg-type]
    assert calls == [1, 1, 1] and torch.equal(one_by_one, everything)


@pytest.fixture(scope="module")
def torch_cpu() -> EfficientNetLite0:
    return EfficientNetLite0("cpu")


backbone_test = pytest.mark.integration  # loads the backbone


@backbone_test
def test_parity_with_the_cpu_path_on_real_photos(torch_cpu: EfficientNetLite0) -> None:
    """Crops of every evaluation photo, some graded: features and trained heads' scores within the
    tolerance that ``bench.device_decode`` checks on a GPU."""
    device = DeviceDecoder.for_backbone(torch_cpu, LIMIT, ("cpu",))
    assert device is not None
    figures = parity(torch_cpu, device)
    print(figures)
    assert within_tolerance(figures), figures


@backbone_test
def test_worker_path_falls_back_per_image(
    torch_cpu: EfficientNetLite0, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of JPEGs, a PNG, a CMYK JPEG, EXIF-rotated JPEGs and one the decoder refuses goes
    through ``embed_images`` in one piece; what the device does not take matches the CPU path
    exactly, the rest within the tolerance."""
    image = photo("chelsea")
    refused = encode(photo("rocket"), quality=90)
    files = {
        "jpeg": encode(photo("coffee"), quality=90),
        "png": encode(image, "PNG"),
        "cmyk": encode(image.convert("CMYK"), quality=90),
        "rotated-6": with_orientation(image, 6),
        "rotated-3": with_orientation(photo("astronaut"), 3),
        "progressive-grey": encode(image.convert("L"), progressive=True),
        "refused": refused,
    }
    original = device_decode.decode_jpegs

    def refusing(jpegs: list[Jpeg], device: torch.device) -> tuple[torch.Tensor, list[int]]:
        out, failed = original(jpegs, device)
        return out, sorted({*failed, *(k for k, jpeg in enumerate(jpegs) if jpeg.data == refused)})

    monkeypatch.setattr(device_decode, "decode_jpegs", refusing)
    store = LocalStore(tmp_path)
    for name, data in files.items():
        store.put(image_key(name), data)
    ids = list(files)
    device = DeviceDecoder.for_backbone(torch_cpu, LIMIT, ("cpu",))
    new, kept = embed_images(store, torch_cpu, ids, cpu_path, batch_size=4, on_device=device)
    assert kept == list(range(len(ids)))
    cpu = torch_cpu.embed_pixels(np.stack([cpu_path(data) for data in files.values()])).vectors
    full = [preprocess(decode_image(data, LIMIT, draft_size=None).image) for data in files.values()]
    full_decode = torch_cpu.embed_pixels(np.stack(full)).vectors
    for k, name in enumerate(ids):
        if name in ("png", "cmyk", "refused"):  # the CPU path's own pixels, in a batch of others
            assert np.abs(new[k] - cpu[k]).max() < 1e-4, name
        else:  # upright: as close to Pillow's full decode as any photo
            assert cosines(new[k : k + 1], full_decode[k : k + 1])[0] >= MIN_COSINE_FULL_DECODE, name
            assert cosines(new[k : k + 1], cpu[k : k + 1])[0] >= MIN_COSINE["embeddings"], name


@backbone_test
def test_corrupt_files_fail_as_on_the_cpu_path(torch_cpu: EfficientNetLite0, tmp_path: Path) -> None:
    data = encode(photo("coffee"), quality=90)
    store = LocalStore(tmp_path)
    store.put(image_key("truncated"), data[: len(data) // 2])
    device = DeviceDecoder.for_backbone(torch_cpu, LIMIT, ("cpu",))
    with pytest.raises(InvalidInput):
        embed_images(store, torch_cpu, ["truncated"], cpu_path, on_device=device)
    with pytest.raises(InvalidInput):
        embed_images(store, torch_cpu, ["truncated"], cpu_path)


def test_no_device_decoder_without_cuda_or_a_tensor_hook() -> None:
    class Plain:
        device = torch.device("cuda")

    assert DeviceDecoder.for_backbone(Plain(), LIMIT) is None
    assert DeviceDecoder.for_backbone(object(), LIMIT) is None
