"""Model FLOPs utilisation.

FLOPs per token: 4 * N_LM for the frozen LM (forward 2N + activation backward 2N, no weight
gradients) or 6 * N_LM when the LM trains, plus 6 * N for the trainable prefix mapper; plus the
vision encoder's measured FLOPs per image x 3 (forward + backward) when it trains, x 1 when it
is frozen. MFU = achieved FLOP/s / peak. Peak: train.peak_tflops when set; on a GPU 989 TFLOP/s
(bf16 dense H100/H200 datasheet); on a CPU the fp32 matmul throughput measured at start-up.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def measured_cpu_peak_tflops(n: int = 1024, seconds: float = 0.5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e12


def vision_flops_per_image(model, image_size: int) -> int:
    ref = next(model.vision.parameters())
    x = torch.zeros(1, 3, image_size, image_size, dtype=ref.dtype, device=ref.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.vision(x)
    return int(counter.get_total_flops())


class FlopsCounter:
    def __init__(self, model, counts: dict, cfg):
        n_lm = counts["lm"]
        n_prefix = sum(getattr(p, "ds_numel", p.numel()) for p in model.prefix.parameters())
        self.per_token = (6 if cfg.model.train_lm else 4) * n_lm + 6 * n_prefix
        vision_trains = any(p.requires_grad for p in model.vision.parameters())
        self.per_image = vision_flops_per_image(model, cfg.model.vision.image_size) * (3 if vision_trains else 1)
        if cfg.train.peak_tflops > 0:
            self.peak = cfg.train.peak_tflops * 1e12
        elif torch.cuda.is_available():
            self.peak = 989e12
        else:
            self.peak = measured_cpu_peak_tflops() * 1e12

    def mfu(self, tokens: float, images: float, seconds: float, world_size: int) -> float:
        achieved = (self.per_token * tokens + self.per_image * images) / max(seconds, 1e-9)
        return achieved / (self.peak * world_size)
