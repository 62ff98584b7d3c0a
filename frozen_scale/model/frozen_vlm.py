"""FrozenVLM: vision encoder -> k prefix vectors -> frozen causal LM.

Sequences are token ids in which each image occupies k slots holding IMAGE_TOKEN (see
frozen_scale.data.prompts); those slots receive the image's prefix vectors, everything else the
LM's own token embeddings. Images may be interleaved with text (few-shot prompts).

Inference from a trained export, in a few lines:

    model = FrozenVLM.from_pretrained("runs/demo/prefix")     # an export, or a run with its export/
    model.generate_text([img])                                 # a PIL image's caption
    model.generate_text([img], "<image> question : what color is the circle ? answer :")
    text, shares = model.generate_text([img], return_attention=True)   # model.attention.AttentionShares
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from frozen_scale.config import InputError, ModelConfig, NotFoundError, VisionConfig, from_dict
from frozen_scale.data import images as images_lib
from frozen_scale.data import prompts
from frozen_scale.data.prompts import IGNORE, IMAGE_TOKEN
from frozen_scale.model import attention
from frozen_scale.model import lm as lm_lib
from frozen_scale.model import lm_identity
from frozen_scale.model.prefix import LexicalPrefixMapper, PrefixMapper, WordPrefixMapper
from frozen_scale.model.vision import build_vision_encoder


def embedding_norm(lm: nn.Module) -> float:
    """Mean L2 norm of the LM's token-embedding rows (gathered first under ZeRO-3)."""
    weight = lm.get_input_embeddings().weight
    if weight.numel() == 0:  # partitioned: the caller passes the norm in instead
        raise ValueError("embedding weight is partitioned; compute the norm under GatheredParameters")
    return float(weight.detach().float().norm(dim=-1).mean())


def build_prefix_mapper(cfg: ModelConfig, lm: nn.Module, in_dim: int, hidden: int, norm: float) -> nn.Module:
    """The mapper `model.prefix_kind` names: free vectors, or vectors snapped to the LM's tokens."""
    if cfg.prefix_kind == "words":
        pad = getattr(lm.config, "pad_token_id", None)
        if pad is None:
            raise InputError("model.prefix_kind=words needs an LM whose config names a pad_token_id: the "
                             "token a slot writes to write nothing")
        special = [getattr(lm.config, name, None) for name in ("bos_token_id", "eos_token_id")]
        return WordPrefixMapper(in_dim, cfg.prefix_length, hidden, lm.get_input_embeddings().num_embeddings,
                                pad, norm, blocked_ids=special)
    if cfg.prefix_kind in ("lexical", "lexical_hard"):
        special = (getattr(lm.config, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id"))
        return LexicalPrefixMapper(in_dim, cfg.prefix_length, hidden, lm.get_input_embeddings().num_embeddings,
                                   norm, blocked_ids=list(special), hard=cfg.prefix_kind == "lexical_hard")
    return PrefixMapper(in_dim, cfg.prefix_length, hidden, norm)


class FrozenVLM(nn.Module):
    def __init__(self, cfg: ModelConfig, lm: nn.Module, lm_embedding_norm: float | None = None):
        super().__init__()
        self.cfg = cfg
        self.lm = lm
        if not cfg.train_lm:
            lm_lib.freeze(lm)
        self._checkpointed_layers = 0
        if cfg.activation_checkpointing:
            self._checkpointed_layers = lm_lib.enable_activation_checkpointing(lm)
        self.vision = build_vision_encoder(cfg.vision)
        hidden = lm.get_input_embeddings().embedding_dim
        norm = lm_embedding_norm if lm_embedding_norm is not None else embedding_norm(lm)
        self.prefix = build_prefix_mapper(cfg, lm, self.vision.out_dim, hidden, norm)
        self.k = cfg.prefix_length
        self._takes_position_ids = "position_ids" in inspect.signature(lm.forward).parameters
        self.tokenizer = None
        """The export's tokenizer (set by `from_pretrained`): `generate_text`'s default."""
        self.caption_prompt = ""
        """The text after the image in training's captions (data.prompt; set by `from_pretrained`)."""

    # -- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if not self.cfg.train_lm:
            self.lm.eval()  # the frozen LM never runs dropout
            if self._checkpointed_layers:
                lm_lib.enable_activation_checkpointing(self.lm)
        return self

    def parameter_counts(self) -> dict[str, int]:
        def numel(p):
            return getattr(p, "ds_numel", p.numel())

        lm_ids = {id(p) for p in self.lm.parameters()}
        trainable = sum(numel(p) for p in self.parameters() if p.requires_grad)
        frozen = sum(numel(p) for p in self.parameters() if not p.requires_grad)
        lm_total = sum(numel(p) for p in self.lm.parameters())
        lm_trainable = sum(numel(p) for p in self.parameters() if p.requires_grad and id(p) in lm_ids)
        return {"trainable": trainable, "frozen": frozen, "lm": lm_total, "lm_trainable": lm_trainable}

    # -- embedding ---------------------------------------------------------------------------
    def image_prefix(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, k, d]"""
        return self.prefix(self.vision(pixel_values), self.lm.get_input_embeddings())

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with image slots filled by prefix vectors, in image order."""
        return self.embed_images(input_ids, pixel_values)[0]

    def embed_images(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                     attention_mask: torch.Tensor | None = None):
        """(embeddings, attention mask, slot logits): `embed`'s embeddings; the attention mask with
        the slots a word prefix left blank masked out (given back as is otherwise, None if None);
        a word prefix's logits over the vocabulary [N_images, k, V] (None for other prefixes)."""
        slots = input_ids == IMAGE_TOKEN
        tokens = self.lm.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        n_slots = int(slots.sum())
        if n_slots == 0:
            return tokens, attention_mask, None
        if pixel_values is None:
            raise ValueError("input_ids hold image slots but no pixel_values were given")
        images = pixel_values.flatten(0, 1) if pixel_values.dim() == 5 else pixel_values
        if n_slots != images.shape[0] * self.k:
            raise ValueError(
                f"{n_slots} image slots in input_ids but {images.shape[0]} images x k={self.k}"
            )
        features = self.vision(images.to(tokens.dtype))
        embeddings = self.lm.get_input_embeddings()
        logits = None
        if isinstance(self.prefix, WordPrefixMapper):
            prefix, written, logits = self.prefix.write(features, embeddings)
            if attention_mask is not None:
                blank = torch.zeros_like(slots)
                blank[slots] = written.reshape(-1) == self.prefix.blank_id
                attention_mask = attention_mask.masked_fill(blank, 0)
        else:
            prefix = self.prefix(features, embeddings)
        prefix = prefix.to(tokens.dtype)
        return tokens.masked_scatter(slots.unsqueeze(-1), prefix.reshape(-1, prefix.shape[-1])), attention_mask, logits

    # -- training ----------------------------------------------------------------------------
    def forward(self, pixel_values, input_ids, attention_mask, labels=None, position_shift=None,
                prefix_targets=None, **_):
        """Mean over samples of each sample's mean next-token loss on its target tokens (a word
        prefix: plus model.prefix_target_weight x its slots' mean cross-entropy against
        `prefix_targets` [N_images, k], when given).
        position_shift: [B] first position id of each row (data.position_shift; default 0)."""
        embeds, attention_mask, slot_logits = self.embed_images(input_ids, pixel_values, attention_mask)
        extra = {}
        if self._takes_position_ids:  # left-padded rows start at position 0 too
            extra["position_ids"] = prompts.position_ids(attention_mask)
            if position_shift is not None:
                extra["position_ids"] = extra["position_ids"] + position_shift.to(input_ids.device).view(-1, 1)
        elif position_shift is not None:
            raise ValueError("data.position_shift needs an LM whose forward takes position_ids")
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False, **extra)
        if labels is None:
            return out.logits
        logits = out.logits[:, :-1].float()
        target = labels[:, 1:]
        token_loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="none"
        ).view(target.shape)
        counts = (target != IGNORE).sum(1)
        per_sample = token_loss.sum(1) / counts.clamp(min=1)
        valid = counts > 0
        loss = per_sample[valid].mean() if bool(valid.any()) else per_sample.sum() * 0.0
        if slot_logits is not None and prefix_targets is not None and self.cfg.prefix_target_weight > 0:
            slot_loss = F.cross_entropy(slot_logits.float().flatten(0, 1), prefix_targets.to(input_ids.device).flatten())
            loss = loss + self.cfg.prefix_target_weight * slot_loss
        return loss

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, pixel_values, input_ids, attention_mask, max_new_tokens: int = 16,
                 num_beams: int = 1, eos_token_id=None, pad_token_id=None, **kwargs) -> torch.Tensor:
        """Greedy (num_beams=1) or beam search through the LM's own `generate`; inputs are
        left-padded. Returns only the new token ids [B, T]."""
        embeds, attention_mask, _ = self.embed_images(input_ids, pixel_values, attention_mask)
        return self.lm.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
            num_beams=num_beams, do_sample=False, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            **kwargs,
        )

    def pixel_values(self, images) -> torch.Tensor | None:
        """PIL images -> [N, 3, S, S], resized and normalised as training's shards are."""
        v = self.cfg.vision
        return images_lib.pixel_values(images, v.image_size, v.mean, v.std)

    def generate_from_segments(self, tokenizer, sequences: list[list], images: list[list], *,
                               max_new_tokens: int = 24, num_beams: int = 1) -> list[str]:
        """Continuations of a batch of prompts (segment lists, frozen_scale.data.prompts), each
        with its PIL images in slot order: the one generation path of evaluation and
        `generate_text`."""
        _, new, _ = self._generate_ids(tokenizer, sequences, images, max_new_tokens, num_beams)
        return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]

    def _generate_ids(self, tokenizer, sequences, images, max_new_tokens, num_beams):
        encoded = [prompts.encode(segments, tokenizer, self.k) for segments in sequences]
        batch = prompts.pad_batch(encoded, tokenizer.pad_token_id, left=True)
        device = next(self.prefix.parameters()).device
        pixels = self.pixel_values([img for imgs in images for img in imgs])
        new = self.generate(None if pixels is None else pixels.to(device), batch["input_ids"].to(device),
                            batch["attention_mask"].to(device), max_new_tokens=max_new_tokens,
                            num_beams=num_beams, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
        return encoded, new, pixels

    def generate_text(self, images=(), prompt: str | None = None, *, max_new_tokens: int = 24,
                      num_beams: int = 1, return_attention: bool = False, tokenizer=None):
        """The model's continuation of `prompt`, one `<image>` per image (PIL) where it goes;
        without a prompt, the caption of the one image (training's caption prompt). Greedy, or
        beam search with num_beams > 1. With return_attention, (text, AttentionShares): the
        share of attention each generated token puts on each image's slots vs the text."""
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("no tokenizer: load the model with FrozenVLM.from_pretrained, or pass tokenizer=")
        images = list(images)
        if prompt is None:
            if len(images) != 1:
                raise InputError(f"without a prompt the model captions one image, got {len(images)}: write "
                                 f"a prompt with one {prompts.IMAGE_PLACEHOLDER} per image")
            prompt = prompts.caption_prompt(self.caption_prompt)
        segments = prompts.parse_prompt(prompt)
        slots = sum(isinstance(s, prompts.Image) for s in segments)
        if slots != len(images):
            raise InputError(f"the prompt has {slots} {prompts.IMAGE_PLACEHOLDER} but {len(images)} "
                             f"image{'s' if len(images) != 1 else ''} were given")
        if max_new_tokens < 1 or num_beams < 1:
            raise InputError("max_new_tokens and num_beams must be >= 1")
        encoded, new, pixels = self._generate_ids(tokenizer, [segments], [images], max_new_tokens, num_beams)
        text = tokenizer.batch_decode(new, skip_special_tokens=True)[0].strip()
        if not return_attention:
            return text
        new_ids = new[0].tolist()
        if tokenizer.eos_token_id in new_ids:
            new_ids = new_ids[: new_ids.index(tokenizer.eos_token_id) + 1]
        return text, attention.measure(self, tokenizer, encoded[0].input_ids, new_ids, pixels)

    # -- export ------------------------------------------------------------------------------
    def trainable_state_dict(self, include_lm: bool = False) -> dict[str, torch.Tensor]:
        """The trained weights (vision + prefix; the LM too when it was finetuned); under
        ZeRO-3, call inside GatheredParameters. Tied weights are stored once."""
        out, seen = {}, set()
        for k, v in self.state_dict().items():
            if k.startswith("lm.") and not include_lm:
                continue
            if v.data_ptr() in seen and v.numel() > 0:
                continue
            seen.add(v.data_ptr())
            out[k] = v.detach().cpu().clone().contiguous()
        return out

    @classmethod
    def from_pretrained(cls, export_dir: str, lm_path: str | None = None, dtype=torch.float32,
                        check_lm: bool = True) -> "FrozenVLM":
        """Load an export (`frozen-scale export`), or the export/ of a training run folder, next
        to its LM on one machine, no DeepSpeed; its tokenizer and caption prompt come along.
        `lm_path` (folder, URL or Hub id) overrides the recorded one; the LM must match the
        export's record (its cheap identity) unless `check_lm=False`."""
        from safetensors.torch import load_file

        export = _export_folder(export_dir)
        meta = json.loads((export / "frozen_vlm.json").read_text())
        model_cfg = from_dict(ModelConfig, meta["model"])
        model_cfg.vision = from_dict(VisionConfig, meta["model"]["vision"])
        _check_prefix_file(export / "prefix.safetensors", meta.get("prefix_sha256"))  # before the LM loads
        path = lm_path or meta["lm"]["path"]
        local = lm_lib.local_copy(path)
        if check_lm:
            _check_lm(path, local, meta["lm"])
        lm = lm_lib.load_lm(local, dtype=dtype, attn_implementation=model_cfg.attn_implementation)
        model = cls(model_cfg, lm, lm_embedding_norm=1.0)
        state = load_file(str(export / "prefix.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.startswith("lm.")]
        if any(k.startswith("lm.") for k in state) and hasattr(model.lm, "tie_weights"):
            model.lm.tie_weights()
        if missing or unexpected:
            raise InputError(f"export does not fit the model: missing {missing}, unexpected {unexpected}")
        tokenizer_dir = export / "tokenizer"
        model.tokenizer = lm_lib.load_tokenizer(str(tokenizer_dir) if tokenizer_dir.is_dir()
                                                else model_cfg.tokenizer_path or local)
        model.caption_prompt = meta.get("data", {}).get("prompt", "")
        return model.eval()


def _export_folder(path: str) -> Path:
    """The local export folder of `path`: an export, or a training run folder holding export/."""
    local = Path(lm_lib.local_copy(path))
    for folder in (local, local / "export"):
        if (folder / "frozen_vlm.json").exists():
            return folder
    if (local / "config.yaml").exists():
        raise NotFoundError(f"the training run {path} has no export yet: make it with `frozen-scale export "
                                f"{path}` (`frozen-scale generate` and `eval` make it themselves)")
    raise NotFoundError(f"{path} is neither an export folder (frozen_vlm.json) nor a training run folder")


def _check_lm(path: str, local: str, recorded: dict) -> None:
    """Refuse an LM other than the one an export was trained against (by its cheap identity;
    exports that predate it recorded only the full sha256, which is then computed once)."""
    if recorded.get("identity"):
        differs = lm_identity.identity_mismatch(recorded["identity"], lm_identity.lm_identity(local))
    elif recorded.get("sha256"):
        differs = ["its sha256 differs"] if lm_lib.content_hash(local) != recorded["sha256"] else []
    else:
        differs = []
    if differs:
        raise InputError(
            f"the LM at {path} is not the one this export was trained against ({recorded.get('path')}): "
            + "; ".join(differs) + ". Pass the right LM (lm_path=...), or check_lm=False to load anyway"
        )


def _check_prefix_file(path: Path, expected: str | None) -> None:
    """An export's prefix weights must be the bytes the export wrote (their sha256 is recorded in
    frozen_vlm.json; exports made before it was recorded are not checked)."""
    if expected is None:
        return
    import hashlib

    from frozen_scale.config import InputError

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise InputError(f"{path} is damaged: its sha256 differs from the one recorded in frozen_vlm.json")
