"""The sections of a run config that the library reads: model, data, train, deepspeed,
checkpoint, debug, eval. Each checks its own values in `__post_init__`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frozen_scale.config.errors import ConfigError


@dataclass
class VisionConfig:
    """The image side: an encoder trained from scratch, or a frozen pretrained backbone."""

    kind: Literal["resnet", "vit", "hf_frozen"] = "resnet"
    """resnet: normaliser-free ResNet (no batch statistics); vit: ViT; hf_frozen: pretrained HF
    vision model from `pretrained_path`, kept frozen, only the mapper trains."""
    image_size: int = 32
    """Input images are resized to image_size x image_size."""
    resnet_widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    """Channels of each ResNet stage; each stage after the first halves the resolution."""
    resnet_blocks: int = 1
    """Residual blocks per stage."""
    vit_patch_size: int = 4
    vit_dim: int = 128
    vit_depth: int = 4
    vit_heads: int = 4
    pretrained_path: str = ""
    """hf_frozen only: local folder or fsspec URL of a transformers vision model."""
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def __post_init__(self):
        if self.image_size < 8:
            raise ConfigError(f"model.vision.image_size must be >= 8, got {self.image_size}")
        if self.kind == "hf_frozen" and not self.pretrained_path:
            raise ConfigError("model.vision.kind=hf_frozen needs model.vision.pretrained_path")
        if self.kind == "vit" and self.image_size % self.vit_patch_size:
            raise ConfigError(
                f"model.vision.image_size ({self.image_size}) must be a multiple of "
                f"model.vision.vit_patch_size ({self.vit_patch_size})"
            )
        if self.kind == "vit" and self.vit_dim % self.vit_heads:
            raise ConfigError("model.vision.vit_dim must be divisible by model.vision.vit_heads")


@dataclass
class ModelConfig:
    """The Frozen model: vision encoder -> prefix of k vectors -> frozen causal LM."""

    lm_path: str = ""
    """Local folder or fsspec URL holding a transformers causal LM (save_pretrained layout)."""
    tokenizer_path: str = ""
    """Defaults to lm_path."""
    prefix_length: int = 2
    """k: number of prefix vectors per image (the paper used 2)."""
    prefix_kind: Literal["continuous", "lexical", "lexical_hard", "words"] = "continuous"
    """continuous (the paper's): each prefix vector is free, scaled to the LM's embedding norm.
    lexical: each is a softmax mixture of the LM's own token embeddings, weighted by its cosine
    similarity to them; lexical_hard: each is exactly its most similar token's embedding (a
    straight-through gradient): the image is written in the LM's vocabulary. words: each slot is
    exactly one token, or the LM's pad token, which is masked out: the image writes a sentence of
    up to prefix_length words (the gradient of the softmax mixture passes straight through),
    trained to be its caption's (prefix_target_weight). See frozen_scale/model/prefix.py."""
    prefix_target_weight: float = 10.0
    """prefix_kind=words: weight of the slot loss (each slot's cross-entropy against the caption's
    words, "a red circle ." then pad), added to the LM's caption loss: the supervision that makes
    the slots write the caption (the LM's loss alone does not; docs/world.md)."""
    vision: VisionConfig = field(default_factory=VisionConfig)
    train_lm: bool = False
    """Ablation only: finetune the LM together with the prefix (the paper's 'finetuned' row)."""
    activation_checkpointing: bool = False
    """Non-reentrant activation checkpointing through the frozen LM's blocks."""
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        if self.prefix_length < 1:
            raise ConfigError(f"model.prefix_length must be >= 1, got {self.prefix_length}")
        if self.prefix_target_weight < 0:
            raise ConfigError(f"model.prefix_target_weight must be >= 0, got {self.prefix_target_weight}")


@dataclass
class DataConfig:
    """Streaming webdataset input."""

    train_shards: str = ""
    """Folder/URL with a data_prep manifest.json, a folder of .tar shards without one (img2dataset's
    output), or a brace pattern like s3://b/{00000..00009}.tar."""
    num_workers: int = 1
    """DataLoader workers per rank."""
    shuffle_buffer: int = 256
    """Samples held in the shuffle buffer (0 disables sample shuffling)."""
    max_text_len: int = 32
    """Caption tokens kept (after the prompt), including the end-of-text token."""
    prompt: str = ""
    """Text placed after the image prefix and before the caption; masked from the loss."""
    resample: bool = False
    """Endless stream: shards are drawn with replacement (no epochs)."""
    images_per_sequence: int = 1
    """Training sequences hold between 1 and this many image-caption pairs of the batch, interleaved
    ("[image] prompt caption . [image] prompt caption ..."), the loss on every caption: the prefix
    then learns to work after other images and text, as few-shot prompts use it. 1 (the default, and
    the paper's training) keeps one pair per sequence."""
    text_before_image: int = 0
    """Up to this many other captions of the batch, written as text ("a red circle ."), go before a
    sequence's first image (a random count per sequence, no loss on them): the image then sits at
    later positions than 1..k. 0 (the default) starts every sequence with its image."""
    position_shift: int = 0
    """Each training sequence's position ids start at a random 0..this (drawn from its samples'
    keys) instead of 0: the prefix learns to work at the later positions few-shot prompts put
    images at, without other text before it. Meant for an LM that reads text at every position
    (one pretrained on packed rows, `lm_pretrain.pack`); 0 (the default) starts every row at 0."""
    image_key: str = "png;jpg;jpeg;webp"
    caption_key: str = "txt"
    max_member_bytes: int = 64 * 1024 * 1024
    """A shard member larger than this is skipped unread (counted as a corrupt sample). Shards are
    read as plain tars: a compressed shard is a shard error, never inflated."""
    allow_absolute_shards: bool = False
    """Trust a manifest whose shard names are full URLs or absolute paths (by default a manifest
    names its shards relative to its own folder, and any other name is refused)."""
    max_consecutive_failures: int = 100
    """After this many shards in a row that cannot be read, or samples in a row that cannot be
    used, every rank stops with one line naming the last cause (exit 2) instead of spinning."""

    def __post_init__(self):
        if self.max_member_bytes < 1024 or self.max_consecutive_failures < 1:
            raise ConfigError("data.max_member_bytes must be >= 1024 and data.max_consecutive_failures >= 1")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        if self.max_text_len < 2:
            raise ConfigError("data.max_text_len must be >= 2")
        if self.images_per_sequence < 1:
            raise ConfigError("data.images_per_sequence must be >= 1")
        if self.text_before_image < 0:
            raise ConfigError("data.text_before_image must be >= 0")
        if self.position_shift < 0:
            raise ConfigError("data.position_shift must be >= 0")


@dataclass
class WandbConfig:
    """Weights & Biases logging, optional (`pip install 'frozen-scale[wandb]'`), rank 0 only. The
    JSONL log (and TensorBoard, `train.tensorboard`) are written either way."""

    project: str = ""
    """W&B project to log to; '' (the default) leaves W&B off."""
    name: str = ""
    """The W&B run's name; '' lets W&B choose one."""


@dataclass
class TrainConfig:
    """The optimisation loop."""

    run_dir: str = "runs/default"
    steps: int = 100
    """Optimizer steps."""
    micro_batch_size: int = 16
    """Samples per rank per forward pass."""
    grad_accum: int = 1
    lr: float = 1e-3
    lm_lr: float = 0.0
    """With model.train_lm: the LM's parameters' peak lr, the prefix keeping `lr` (two parameter
    groups under one schedule). 0: the LM trains at `lr` too."""
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    """Cosine schedule floor as a fraction of lr."""
    grad_clip: float = 1.0
    """Max global grad norm (0 disables)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    log_every: int = 10
    seed: int = 0
    resume: str = ""
    """'' starts fresh; 'auto' resumes from the newest committed checkpoint; or a checkpoint path."""
    max_nonfinite_steps: int = 5
    """Consecutive non-finite losses tolerated (each is skipped) before the run stops."""
    peak_tflops: float = 0.0
    """Device peak TFLOP/s for MFU (0: 989 on a GPU, unknown on CPU)."""
    tensorboard: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases (off unless `train.wandb.project` is set)."""
    progress: bool = True
    collective_timeout_s: int = 600
    """How long a collective waits for the other ranks before failing: a hung or lost rank ends the
    job within it, with the error naming the collective. The first collective after the LM is
    fetched waits for the slowest node's download: raise it where fetching the LM takes longer."""

    def __post_init__(self):
        if self.collective_timeout_s < 30:
            raise ConfigError(f"train.collective_timeout_s must be >= 30, got {self.collective_timeout_s}")
        for name in ("steps", "micro_batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.lm_lr < 0:
            raise ConfigError(f"train.lr must be > 0 and train.lm_lr >= 0, got {self.lr} and {self.lm_lr}")
        if len(self.betas) != 2:
            raise ConfigError("train.betas must hold two numbers")


@dataclass
class DeepSpeedSection:
    """ZeRO settings; the DeepSpeed JSON is derived from these plus `train`."""

    stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    extra: dict = field(default_factory=dict)
    """Passed through into the DeepSpeed JSON (deep-merged last)."""

    def __post_init__(self):
        if self.stage not in (0, 1, 2, 3):
            raise ConfigError(f"deepspeed.stage must be 0, 1, 2 or 3, got {self.stage}")
        if self.offload_params and self.stage != 3:
            raise ConfigError("deepspeed.offload_params needs deepspeed.stage=3")


@dataclass
class CheckpointConfig:
    """Where and how often to save."""

    dir: str = ""
    """Local folder or fsspec URL; defaults to {train.run_dir}/checkpoints."""
    every: int = 0
    """Save every N optimizer steps (0: only at the end)."""
    keep_last: int = 2
    """Committed checkpoints kept, newest by commit order (the one a run started from is kept too)."""
    allow_fresh_start: bool = False
    """With train.resume='': start at step 0 in a folder that already holds committed checkpoints
    (a new lineage beside them). Without it such a start is refused."""
    lease_seconds: float = 60.0
    """How long a job's lease on the checkpoint folder lasts unless renewed (every third of it):
    a second live job is refused; a killed job's folder is free again after at most this long."""

    def __post_init__(self):
        if self.keep_last < 1:
            raise ConfigError("checkpoint.keep_last must be >= 1")
        if self.lease_seconds <= 0:
            raise ConfigError(f"checkpoint.lease_seconds must be > 0, got {self.lease_seconds}")


DEBUG_FAULTS = ("hold_after", "pause_after", "crash_before_commit")


@dataclass
class DebugConfig:
    """Test hooks, all off by default; the resume tests turn them on (frozen_scale.train.debug)."""

    fault: str = ""
    """Fault injection, '<name>@<step>': `hold_after@N` stops after optimizer step N and sleeps
    until killed (a kill at a known place); `pause_after@N` waits after step N until this rank
    receives a stop signal (at most 60 s; it writes {run_dir}/paused_rank{R} while it waits: a
    signal at a known place); `crash_before_commit@N` exits (code 13) after every file of step N's
    checkpoint is written, before its commit marker. '' : none."""
    fault_rank: int = -1
    """The rank the fault is injected on (-1: every rank); a hung rank is one rank that holds."""
    log_sample_keys: bool = False
    """Write each rank's sample keys in training order to {run_dir}/sample_keys_rank{R}.txt; a
    resumed run first cuts the file back to what its checkpoint had consumed."""

    def __post_init__(self):
        if self.fault:
            name, _, step = self.fault.partition("@")
            if name not in DEBUG_FAULTS or not step.isdigit():
                raise ConfigError(f"debug.fault must look like <name>@<step> with name one of "
                                  f"{', '.join(DEBUG_FAULTS)}, got {self.fault!r}")

    def fault_at(self, name: str, step: int) -> bool:
        """Whether fault `name` is set for `step`."""
        return self.fault == f"{name}@{step}"


@dataclass
class EvalConfig:
    """Evaluation after training."""

    num_samples: int = 500
    max_new_tokens: int = 12
    num_beams: int = 1
    batch_size: int = 64
