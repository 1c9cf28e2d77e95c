"""Train ``shared/models/backbone/grade_head.safetensors``: the self-supervised colour-grade head.

Run by hand (offline, CPU, about 10 minutes on two cores) from the repository root::

    .venv/bin/python tools/train_grade_head.py

Unlabelled examples: random crops of bench.quality's five *training* photos (never its evaluation
photos), each given a random grade whose parameters are the targets — gamma, contrast (an S-curve),
black point lift, white point gain, saturation, shadow / highlight / global tints in opponent
chroma (B−Y, R−Y), vignette — on top of nuisances that are not targets: the photo's own colours
rotated and scaled, blur, sensor noise, pixelation. Each parameter is left at 0 in a share of the
examples. The head (``grades.GradeHead``) learns to predict the standardised parameters from
``grades.grade_statistics`` (mean squared error, AdamW). Everything is seeded: a rerun gives the
same weights on the same machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.photos import TRAIN_SOURCES, random_crops, source  # noqa: E402
from shared.models.backbone import preprocess_batch  # noqa: E402
from shared.models.backbone.grades import (  # noqa: E402
    GRADE_PARAMETERS,
    LUMA_WEIGHTS,
    WEIGHTS,
    grade_head_module,
    grade_statistics,
)

CROPS_PER_PHOTO = 60
ROUNDS = 30  # random grades per crop: 9,000 examples
EPOCHS = 120  # held-out R^2 stopped improving near 100 in a longer run
LUMA = torch.tensor(LUMA_WEIGHTS).reshape(1, 3, 1, 1)


def split_luma(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y = (x * LUMA).sum(1, keepdim=True)
    return y, x[:, 2:3] - y, x[:, 0:1] - y


def join_luma(y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    blue, red = cb + y, cr + y
    green = (y - LUMA_WEIGHTS[0] * red - LUMA_WEIGHTS[2] * blue) / LUMA_WEIGHTS[1]
    return torch.cat([red, green, blue], 1)


class Draws:
    """Seeded random numbers, one per example, each nonzero with probability ``p``."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def uniform(self, n: int, low: float, high: float, p: float = 1.0) -> torch.Tensor:
        values = self.rng.uniform(low, high, n) * (self.rng.random(n) < p)
        return torch.from_numpy(values.astype(np.float32))


def nuisances(x: torch.Tensor, draws: Draws) -> torch.Tensor:
    """Changes that are not grades the head should report: other photo colours, blur, noise, pixels."""
    n = len(x)
    col = lambda v: v.reshape(n, 1, 1, 1)  # noqa: E731
    y, cb, cr = split_luma(x)
    angle, scale = draws.uniform(n, -0.6, 0.6, 0.7), torch.exp(draws.uniform(n, -0.4, 0.4))
    cos, sin = col(torch.cos(angle)), col(torch.sin(angle))
    x = join_luma(y, col(scale) * (cos * cb - sin * cr), col(scale) * (sin * cb + cos * cr)).clamp(0, 1)
    blur = draws.uniform(n, 0.5, 2.5, 0.2)
    for i in torch.nonzero(blur).flatten().tolist():
        radius = int(3 * float(blur[i])) + 1
        taps = torch.exp(-torch.arange(-radius, radius + 1.0) ** 2 / (2 * float(blur[i]) ** 2))
        taps = (taps / taps.sum()).reshape(1, 1, 1, -1).repeat(3, 1, 1, 1)
        image = F.conv2d(F.pad(x[i : i + 1], (radius, radius, 0, 0), mode="replicate"), taps, groups=3)
        x[i : i + 1] = F.conv2d(F.pad(image, (0, 0, radius, radius), mode="replicate"), taps.transpose(2, 3), groups=3)
    noise = draws.uniform(n, 0.02, 0.09, 0.2)
    x = x + col(noise) * torch.from_numpy(draws.rng.normal(size=(n, 1, *x.shape[2:])).astype(np.float32))
    block = draws.uniform(n, 4, 14, 0.1).int()
    for i in torch.nonzero(block).flatten().tolist():
        k = int(block[i])
        x[i : i + 1] = F.interpolate(F.avg_pool2d(x[i : i + 1], k, ceil_mode=True), scale_factor=k, mode="nearest")[
            ..., : x.shape[2], : x.shape[3]
        ]
    return x.clamp(0, 1)


def random_grade(x: torch.Tensor, draws: Draws) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) in [0, 1] -> graded images, (N, len(GRADE_PARAMETERS)) parameters."""
    n = len(x)
    col = lambda v: v.reshape(n, 1, 1, 1)  # noqa: E731
    t = {
        "gamma": draws.uniform(n, -1.0, 1.0, 0.5),  # log of the exponent
        "contrast": draws.uniform(n, -0.8, 0.8, 0.5),  # log of the S-curve's steepness
        "lift": draws.uniform(n, 0.0, 0.3, 0.3),
        "gain": draws.uniform(n, 0.0, 0.3, 0.3),
        "sat": draws.uniform(n, -2.5, 0.7, 0.5),  # log of the chroma scale (-2.5: nearly grey)
    }
    for part in ("shadow", "light", "tint"):
        for axis in ("cb", "cr"):
            t[f"{part}_{axis}"] = draws.uniform(n, -0.15, 0.15, 0.35)
    t["vignette"] = draws.uniform(n, 0.2, 0.9, 0.4)
    x = x.clamp(1e-4, 1) ** col(torch.exp(t["gamma"]))
    k = col(torch.exp(t["contrast"]))
    low, high = torch.sigmoid(-2 * k), torch.sigmoid(2 * k)
    x = (torch.sigmoid(4 * k * (x - 0.5)) - low) / (high - low)
    x = col(t["lift"]) + (1 - col(t["lift"]) - col(t["gain"])) * x
    y, cb, cr = split_luma(x)
    light = y.clamp(0, 1)
    saturation = col(torch.exp(t["sat"]))
    cb = saturation * cb + col(t["shadow_cb"]) * (1 - light) + col(t["light_cb"]) * light + col(t["tint_cb"])
    cr = saturation * cr + col(t["shadow_cr"]) * (1 - light) + col(t["light_cr"]) * light + col(t["tint_cr"])
    x = join_luma(y, cb, cr).clamp(0, 1)
    u = torch.linspace(-1, 1, x.shape[-1])
    radius2 = (u[:, None] ** 2 + u[None, :] ** 2) / 2
    x = x * (1 - col(t["vignette"]) * radius2 ** 1.2 * 1.3).clamp(0.1, 1)
    return x, torch.stack([t[name] for name in GRADE_PARAMETERS], 1)


def examples(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics and parameters of ROUNDS random grades of every crop, each rounded to 8 bits."""
    rng = np.random.default_rng(seed)
    crops = [c for name in TRAIN_SOURCES for c in random_crops(source(name), CROPS_PER_PHOTO, rng)]
    base = torch.from_numpy((preprocess_batch(crops) + 1) / 2)
    draws = Draws(seed + 1)
    stats, targets = [], []
    with torch.inference_mode():
        for _ in range(ROUNDS):
            for i in range(0, len(base), 100):
                graded, parameters = random_grade(nuisances(base[i : i + 100].clone(), draws), draws)
                graded = (graded * 255).round() / 255 * 2 - 1  # 8-bit, then the backbone's input scale
                stats.append(grade_statistics(graded))
                targets.append(parameters)
    return torch.cat(stats), torch.cat(targets)


def train(stats: torch.Tensor, targets: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    head = grade_head_module()
    head.mean.copy_(stats.mean(0))
    head.scale.copy_(stats.std(0) + 1e-6)
    inputs = (stats - head.mean) / head.scale
    goal = (targets - targets.mean(0)) / (targets.std(0) + 1e-6)
    order = torch.randperm(len(inputs))
    held, fit = order[: len(order) // 10], order[len(order) // 10 :]
    optimiser = torch.optim.AdamW(head.net.parameters(), 3e-3, weight_decay=1e-3)
    for epoch in range(EPOCHS):
        for batch in fit[torch.randperm(len(fit))].split(256):
            loss = ((head.net(inputs[batch]) - goal[batch]) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if epoch % 20 == 19 or epoch == EPOCHS - 1:
            with torch.no_grad():
                r2 = 1 - ((head.net(inputs[held]) - goal[held]) ** 2).mean(0)
            print(epoch, " ".join(f"{name}={v:.2f}" for name, v in zip(GRADE_PARAMETERS, r2.tolist(), strict=True)))
    return head.eval()


def main() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    started = time.perf_counter()
    stats, targets = examples()
    print(f"{len(stats)} examples in {time.perf_counter() - started:.0f} s")
    head = train(stats, targets)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(WEIGHTS))
    print(f"wrote {WEIGHTS} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
