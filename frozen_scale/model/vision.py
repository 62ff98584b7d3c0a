"""Vision encoders: images -> one feature vector per image.

- ResNetEncoder: a ResNet whose normalisation uses no batch statistics (GroupNorm), so every
  rank computes the same function whatever its micro-batch (the paper used NF-ResNet-50).
- ViTEncoder: a plain pre-norm Vision Transformer, mean-pooled.
- FrozenHFEncoder: a pretrained transformers vision model loaded from a path, kept frozen
  (LiMBeR / LLaVA stage-1 style); only the prefix mapper after it trains.
"""

from __future__ import annotations

import torch
from torch import nn

from frozen_scale.config import VisionConfig


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, max(1, channels // 8)), channels)


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            _group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, stride, 1),
            _group_norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, 1, 1),
        )
        self.skip = nn.Identity() if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride)

    def forward(self, x):
        return self.skip(x) + self.body(x)


class ResNetEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        widths = cfg.resnet_widths
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, 1, 1)]
        c = widths[0]
        for i, w in enumerate(widths):
            for b in range(cfg.resnet_blocks):
                layers.append(ResidualBlock(c, w, stride=2 if (b == 0 and i > 0) else 1))
                c = w
        layers += [_group_norm(c), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        grid = cfg.image_size // (2 ** (len(widths) - 1))
        # Flatten a small spatial grid (keeps "where" information that global pooling loses).
        self.pool = nn.AdaptiveAvgPool2d(min(grid, 2))
        self.out_dim = c * min(grid, 2) ** 2

    def forward(self, pixel_values):
        return self.pool(self.body(pixel_values)).flatten(1)


class ViTEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        n = (cfg.image_size // cfg.vit_patch_size) ** 2
        self.patch = nn.Conv2d(3, cfg.vit_dim, cfg.vit_patch_size, cfg.vit_patch_size)
        self.pos = nn.Parameter(torch.randn(1, n, cfg.vit_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.vit_dim, cfg.vit_heads, 4 * cfg.vit_dim, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.vit_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.vit_dim)
        self.out_dim = cfg.vit_dim

    def forward(self, pixel_values):
        x = self.patch(pixel_values).flatten(2).transpose(1, 2) + self.pos
        return self.norm(self.blocks(x)).mean(1)


class FrozenHFEncoder(nn.Module):
    """A pretrained transformers vision backbone, frozen and in eval mode."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        from frozen_scale.model.lm import local_copy

        path = local_copy(cfg.pretrained_path)
        model = AutoModel.from_pretrained(path)
        if hasattr(model, "vision_model"):  # CLIP/SigLIP-style dual encoders
            model = model.vision_model
        self.backbone = model.eval().requires_grad_(False)
        hf_cfg = getattr(model, "config", None) or AutoConfig.from_pretrained(path)
        hf_cfg = getattr(hf_cfg, "vision_config", hf_cfg)
        self.out_dim = getattr(hf_cfg, "hidden_size", None) or hf_cfg.hidden_sizes[-1]

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, pixel_values):
        out = self.backbone(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state.mean(1)
        return pooled.flatten(1)


def build_vision_encoder(cfg: VisionConfig) -> nn.Module:
    if cfg.kind == "resnet":
        return ResNetEncoder(cfg)
    if cfg.kind == "vit":
        return ViTEncoder(cfg)
    return FrozenHFEncoder(cfg)
