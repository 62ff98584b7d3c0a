"""Typed run configuration: nested dataclasses, loaded from YAML with dotted overrides.

One file describes a run. The DeepSpeed JSON is derived from it
(`frozen_scale.distributed.engine.ds_config`), never written by hand beside it.

    cfg = load_config("configs/tiny-cpu.yaml", ["train.lr=3e-4"])

Unknown keys and wrong types raise `ConfigError` naming the key and the nearest valid one. It is
one of the `UserError`s, which the command line says in one line with exit code 2.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from frozen_scale.secrets import looks_secret, redact


class UserError(Exception):
    """A mistake the user can fix: a bad config value, a missing file or folder, unusable input.
    Raised where the user's input is resolved; the `frozen-scale` command says it in one line
    (once, from rank 0) and exits 2, without a traceback."""


class ConfigError(UserError, ValueError):
    """A configuration mistake: an unknown key, a wrong type or value, a missing setting."""


class NotFoundError(UserError, FileNotFoundError):
    """A file, folder, URL or checkpoint the user named does not exist."""


class InputError(UserError, ValueError):
    """Input the user named exists but cannot be used: malformed, empty, or made for another
    model."""


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
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
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


@dataclass
class WorldConfig:
    """The built-in synthetic shapes world (used by the demo and tests)."""

    seed: int = 0
    num_train: int = 20000
    num_eval: int = 500
    samples_per_shard: int = 2000


@dataclass
class LMPretrainConfig:
    """Step 1 of the paper on the built-in world: pretrain a tiny causal LM on its text."""

    arch: Literal["gpt2", "llama", "gpt_neox", "opt"] = "gpt2"
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    steps: int = 800
    batch_size: int = 64
    lr: float = 1e-3
    seq_len: int = 48
    n_positions: int = 0
    """The LM's position table (learned positions: the longest prompt it can read); 0: max(64,
    2 * seq_len). The table's size is part of the LM's random initialisation, which decides the
    naming curriculum's phase change (docs/world.md)."""
    num_documents: int = 30000
    copy_fraction: float = 0.5
    """Fraction of documents that repeat their caption ('caption. caption.'), which teaches the
    LM to copy from context: the ability a prefix steers (docs/world.md)."""
    naming_fraction: float = 0.0
    """Fraction of documents that are naming episodes ('a red circle . this is a dax . ...'), the
    in-context naming the few-shot and binding evaluations probe; adds the paper's nonsense words
    to the vocabulary. 0 (the demo) leaves the corpus and vocabulary as they were."""
    naming_steps: int = 0
    """A curriculum: the first naming_steps steps draw naming documents only, the rest the mixed
    corpus. A 0.8M-parameter LM learns in-context naming this way (text-only 2-way classification
    1.0 after ~1000 such steps) but not from a mixed corpus alone (chance after 3000 steps at 70%)."""
    continue_steps: int = 0
    """After the `steps` of the one-cycle schedule, this many more steps on the mixed corpus under a
    new one-cycle schedule peaking at continue_lr: more mixed text (n-shot QA, copying) without
    changing the LR of the steps before, on which the naming curriculum's phase change depends."""
    continue_lr: float = 5e-4
    pack: Literal["none", "mixed", "all"] = "none"
    """Pack documents back to back into full seq_len rows (each after an end-of-text token, a
    document cut at a row's edge goes on in the next row), as real LMs are pretrained, so that every
    kind of text stands at every position: "all" every row, "mixed" the mixed corpus after the
    naming curriculum (its rows stay one naming document each, from position 0). "none": one
    document per row from position 0; a GPT-2 shaped LM then ties what it learned to those
    positions."""
    pack_steps: bool = False
    """Each step's rows packed into as few rows of `seq_len` as hold them, their documents kept apart
    (positions restart at 0, attention stays within each; `pretrain_lm.pack_rows`): the same loss and
    gradient as the padded batch up to float rounding, on fewer tokens (0.76x the step time on the
    world's mixed corpus, `bench/lm_packing.py`). Off by default: the demo's LM was measured unpacked;
    configs/reproduce-cpu.yaml sets it. Not to be confused with `pack`, which changes the text."""
    multi_scene_fraction: float = 0.0
    """Fraction of the captioning/QA documents that hold 2-3 scenes in a row, each its caption, a
    question and the answer: n-shot VQA written as text (none by default)."""
    multi_scene_scenes: int = 0
    """Scenes in each multi-scene document: 0 draws 2 or 3 (as before), 3 writes every one as 2-shot
    VQA in text (two solved scenes, then the third), 2 as 1-shot."""
    naming_shape_questions: float = 0.0
    """Fraction of the binding naming documents that ask only the first hop of binding, after the
    support: "... this is a dax . question : what shape is the dax ? answer : circle ." (none by
    default)."""
    naming_query_names: float = 0.0
    """In the naming curriculum (`naming_steps`), the fraction of the binding documents whose query
    writes each object's name after its shape ("a green square dax on the left and ..."): this value
    at the first step, falling linearly to 0 at the curriculum's end, the documents otherwise the
    same. 0 (the default): none. It brings the naming phase change forward (docs/world.md);
    configs/reproduce-cpu.yaml sets 1.0 with a 2000-step curriculum."""
    mixed_query_names: float = 0.0
    """In the mixed corpus (`naming_fraction`'s naming documents), the fraction of them whose binding
    query writes each object's name after its shape, for every step: the phase in which the LM learns
    to look up a scene's objects by a word of the question. 0 (the default): none."""
    lookup_steps: int = 0
    """A lookup phase before the naming curriculum: rows of `text.lookup_corpus` (the world's
    documents and name lookups, objects named by words drawn afresh and asked by them), for at most
    this many steps of the `steps`, ended at the first measurement (every 250 steps) at which
    held-out name lookups reach `lookup_level`; the naming curriculum starts there. 0 (the default):
    none. An LM that learned naming first never learns to look up by a name; one that learned the
    lookup first keeps it through naming (docs/world.md)."""
    lookup_level: float = 0.9
    """The held-out name-lookup accuracy that ends the lookup phase (chance 0.5)."""
    lookup_fraction: float = 0.0
    """After the lookup phase, the fraction of every batch's rows that are name lookups, drawn on a
    generator of their own (the other rows as without): keeps the lookup by names alive."""


@dataclass
class K8sVolume:
    """k8s: a volume mounted at the same path in the head and every worker pod; its mount counts as
    shared storage (a ReadWriteMany claim, or a host path that is a network filesystem on every node)."""

    mount: str = ""
    """Absolute path inside the pods."""
    claim: str = ""
    """Name of a PersistentVolumeClaim in the job's namespace."""
    host_path: str = ""
    """A folder of the node (hostPath volume); use one or the other, claim or host_path."""

    def __post_init__(self):
        if not self.mount.startswith("/") or bool(self.claim) == bool(self.host_path):
            raise ConfigError("launcher.k8s_volumes: each entry needs mount (an absolute path) and one of "
                              f"claim or host_path, got mount={self.mount!r} claim={self.claim!r} "
                              f"host_path={self.host_path!r}")


def _check_single_lines(section) -> None:
    """Launcher values end up in shell scripts and #SBATCH lines: a newline or another control
    character in one would start a new command or option there."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
        for item in items:
            if isinstance(item, str) and any(ord(c) < 32 or ord(c) == 127 for c in item):
                raise ConfigError(f"launcher.{f.name}: {item!r} holds a newline or another control character; "
                                  "each value must be one line")


@dataclass
class LauncherConfig:
    """Cluster submission settings, read by `launchers/` (`frozen-scale submit` / `plan`)."""

    kind: Literal["local", "slurm", "ray", "torchrun", "deepspeed", "k8s"] = "local"
    """Default launcher when `frozen-scale submit` gets no --launcher."""
    nodes: int = 1
    """Machines in the job."""
    gpus_per_node: int = 1
    """Training processes per machine (one per GPU; on CPU, processes per machine)."""
    tasks_per_node: int = 1
    """slurm: srun tasks per node, each running one torchrun. Keep 1 on a real cluster; >1 only
    emulates several nodes on one machine (tests)."""
    request_gpus: bool = True
    """slurm/ray/k8s: request gpus_per_node GPUs per node (false: CPU-only processes)."""
    cpus_per_task: int = 0
    """slurm: CPUs per srun task (0: not requested)."""
    mem: str = ""
    """slurm: memory per node, e.g. '400G' ('' : cluster default)."""
    partition: str = ""
    time: str = "24:00:00"
    """Wall-clock limit (slurm --time)."""
    account: str = ""
    qos: str = ""
    job_name: str = "frozen-scale"
    signal_seconds: int = 120
    """slurm: SIGUSR1 this many seconds before the time limit (save, exit 75, requeue)."""
    max_requeues: int = 20
    """Requeues (slurm) or restarts (ray) after preemption before giving up."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run on every node before training (module load, conda activate, exports)."""
    container: str = ""
    """slurm: container image for srun --container-image (pyxis/enroot); k8s: the pod image."""
    container_mounts: list[str] = field(default_factory=list)
    """slurm: src:dst mounts for srun --container-mounts."""
    sbatch_extra: list[str] = field(default_factory=list)
    """Extra `#SBATCH` options, e.g. '--exclusive', '--constraint=h100'."""
    runner: Literal["torchrun", "deepspeed"] = "torchrun"
    """Per-node process launcher used by slurm and host-list launches."""
    hosts: list[str] = field(default_factory=list)
    """torchrun/deepspeed host-list launch: one host per node (the first is the master)."""
    master_port: int = 0
    """The rendezvous port on the first node; 0 derives it from the job (Slurm: from the job id;
    a host-list launch: from its fresh run id), so two jobs sharing a node never meet."""
    rdzv_backend: Literal["c10d", "static"] = "c10d"
    """torchrun rendezvous: c10d on the first node (elastic, default) or static master addr/rank."""
    log_dir: str = ""
    """Per-job and per-rank logs; defaults to {train.run_dir}/logs."""
    python: str = "python"
    """Interpreter on the cluster nodes."""
    workdir: str = ""
    """Directory the job runs in on the nodes ('' : the directory `submit` runs in)."""
    ray_address: str = ""
    """ray: Jobs API address of the cluster, e.g. http://head:8265 ('' : $RAY_ADDRESS / local)."""
    ray_working_dir: str = ""
    """ray: folder uploaded as the job's working_dir ('' : none; the cluster has the code)."""
    ray_pip: list[str] = field(default_factory=list)
    """ray: extra pip packages for the job's runtime_env."""
    env: dict = field(default_factory=dict)
    """Environment variables set for every training process: settings, never secrets (they are
    written into scripts and manifests); a name that looks secret is refused, see env_from_host."""
    env_from_host: list[str] = field(default_factory=list)
    """Names of environment variables (credentials, tokens) the trainers take from the environment
    the job starts in, by name only, never written to a file or an argv: Slurm exports the submitting
    shell's environment; a host-list launch passes them to ssh with SendEnv (the server must
    AcceptEnv them); Ray trainers take them from their nodes' environment (set where `ray start`
    ran); on k8s they come from `k8s_secret`. Each is checked to be set where the job starts."""
    k8s_secret: str = ""
    """k8s: a Secret in the job's namespace whose keys become every pod's environment (envFrom);
    its RAY_AUTH_TOKEN key, when given, turns on Ray's token authentication for the cluster."""
    shared_mounts: list[str] = field(default_factory=list)
    """ray/k8s: absolute folders every node sees alike (NFS, a shared volume). A ray or k8s job
    needs `train.run_dir` under one of them, and `checkpoint.dir` too unless it is object storage
    (s3://, gs://): a folder of one pod or node is lost with it and unseen by the others."""
    k8s_namespace: str = "default"
    k8s_ray_version: str = "2.40.0"
    k8s_cpus_per_node: int = 8
    k8s_memory_per_node: str = "64Gi"
    k8s_volumes: list[K8sVolume] = field(default_factory=list)
    """k8s: volumes mounted in every pod, e.g. `[{mount: /mnt/shared, claim: shared-rwx}]`; their
    mounts count as shared_mounts."""

    def __post_init__(self):
        for name in ("nodes", "gpus_per_node", "tasks_per_node"):
            if getattr(self, name) < 1:
                raise ConfigError(f"launcher.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cpus_per_task", "signal_seconds", "max_requeues"):
            if getattr(self, name) < 0:
                raise ConfigError(f"launcher.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.master_port < 65536:
            raise ConfigError(f"launcher.master_port must be a TCP port, got {self.master_port}")
        if self.hosts and len(self.hosts) != self.nodes:
            raise ConfigError(
                f"launcher.hosts lists {len(self.hosts)} hosts but launcher.nodes is {self.nodes}"
            )
        for mount in self.shared_mounts:
            if not mount.startswith("/"):
                raise ConfigError(f"launcher.shared_mounts: '{mount}' is not an absolute path")
        for key in [*self.env, *self.env_from_host]:
            if not isinstance(key, str) or not key.replace("_", "a").isalnum():
                raise ConfigError(f"launcher.env: '{key}' is not a valid environment variable name")
        for key in self.env:
            if looks_secret(key):
                raise ConfigError(f"launcher.env.{key} looks like a secret, and launcher.env is written into job "
                                  f"scripts and manifests: pass it by name with launcher.env_from_host: [{key}] "
                                  "(or launcher.k8s_secret on Kubernetes)")
        _check_single_lines(self)


@dataclass
class FrozenConfig:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    lm_pretrain: LMPretrainConfig = field(default_factory=LMPretrainConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    """Cluster submission settings, read by `launchers/`."""
    debug: DebugConfig = field(default_factory=DebugConfig)
    """Test hooks (fault injection, sample-key logs); off by default."""

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or str(Path(self.train.run_dir) / "checkpoints")


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with checking


def _nearest(key: str, options) -> str:
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(sorted(options))}"


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=where + ".")
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{where} must be one of {choices}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__} ({value!r})")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r} ({type(value).__name__})")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a plain dict, checking keys and types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'{_nearest(key, names)}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from err


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def deep_merge(base: dict, over: dict) -> dict:
    """A copy of `base` with `over` laid on top: nested mappings merge key by key, anything else
    in `over` replaces what `base` holds."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def safe_yaml(text: str, where: str):
    """YAML without aliases: a few hundred bytes of nested aliases expand to billions of nodes
    (every later walk of the config would take minutes), and a run config has no use for them.
    The check reads the event stream, which stays as long as the text."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise ConfigError(f"{where}: line {mark.line + 1}: YAML aliases (*{event.anchor}) are not accepted "
                                  "in a config; write the value out")
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(err).split())}") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        value = safe_yaml(raw, f"override '{dotted}'") if raw != "" else ""
        node = data
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FrozenConfig:
    """Read YAML (or start from defaults), apply dotted overrides, build and validate."""
    data: dict = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise NotFoundError(f"config file not found: {path}") from None
        data = safe_yaml(text, str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    apply_overrides(data, list(overrides or []))
    return from_dict(FrozenConfig, data)


def dump_config(cfg: FrozenConfig) -> str:
    """The resolved config as YAML: `load_config` reads it back to an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def redacted_dict(cfg) -> dict:
    """The config as a dict for files and logs: secret-looking values and URL passwords masked."""
    return redact(to_dict(cfg))


def save_config(cfg: FrozenConfig, path: str | Path) -> None:
    """The resolved config as YAML, secret-looking values masked; an identical file is left as it
    is (a re-run changes nothing)."""
    path, text = Path(path), yaml.safe_dump(redacted_dict(cfg), sort_keys=False)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
