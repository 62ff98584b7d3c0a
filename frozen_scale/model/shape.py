"""The shape of a causal LM from its HF config alone: no weights are read.

`lm_shape(path)` reads `config.json` (a local folder, any fsspec URL or a Hub id), builds the model on
PyTorch's meta device to count parameters, and lists the checkpoint's weight files (sizes only)
when they are there. The memory plan (`frozen-scale plan`) and the trainer's DeepSpeed settings
(ZeRO-3's gathered window, see frozen_scale.distributed.zero3) both read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin")


@dataclass
class LMShape:
    """What the plan and the ZeRO-3 settings need from a causal LM; counts from a meta-device build."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    gated_mlp: bool
    rms_norm: bool
    total_params: int
    largest_layer_params: int
    """Largest single module's own parameters (DeepSpeed's 'largest layer')."""
    block_params: int
    """Parameters of one decoder block."""
    largest_shard_bytes: int = 0
    """Size of the checkpoint's largest weight file; 0 when the folder holds no weights."""
    shard_count: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def read_hf_config(path: str):
    """The LM's transformers config from a local folder, `<url>/config.json`, or a Hub id's
    config.json alone through the Hub cache (HF_HUB_OFFLINE honoured)."""
    from transformers import AutoConfig

    from frozen_scale.model.lm_source import parse_source

    local = Path(path)
    if local.exists():
        return AutoConfig.from_pretrained(str(local))
    source = parse_source(path)
    if source.kind == "hub":
        return AutoConfig.from_pretrained(source.location, revision=source.revision)
    import fsspec

    with fsspec.open(path.rstrip("/") + "/config.json", "r") as handle:
        data = json.load(handle)
    model_type = data.pop("model_type")
    return AutoConfig.for_model(model_type, **data)


def _hub_entries(repo: str, revision: str | None) -> list[dict]:
    """A Hub model's files with sizes: the cached snapshot if there is one, else the Hub's file
    list (no weight is downloaded); [] when neither answers (offline and not cached)."""
    import huggingface_hub

    try:
        folder = Path(huggingface_hub.snapshot_download(repo, revision=revision, local_files_only=True))
        return [{"name": str(f), "size": f.stat().st_size, "type": "file"} for f in folder.iterdir() if f.is_file()]
    except Exception:  # noqa: BLE001 - not cached: ask the Hub
        pass
    try:
        info = huggingface_hub.HfApi().model_info(repo, revision=revision, files_metadata=True)
        return [{"name": f.rfilename, "size": f.size or 0, "type": "file"} for f in info.siblings]
    except Exception:  # noqa: BLE001 - offline or unknown: the plan goes without shard sizes
        return []


def weight_file_sizes(path: str) -> list[int]:
    """Byte sizes of the weight files beside the config (safetensors preferred); [] if none."""
    import fsspec

    from frozen_scale.model.lm_source import parse_source

    try:
        source = parse_source(path)
        if source.kind == "hub":
            entries = _hub_entries(source.location, source.revision)
        else:
            fs, root = fsspec.core.url_to_fs(path)
            entries = fs.ls(root, detail=True)
    except (FileNotFoundError, OSError, ValueError):
        return []
    for suffix in WEIGHT_FILE_SUFFIXES:
        sizes = [int(e["size"]) for e in entries
                 if e.get("type") == "file" and e["name"].endswith(suffix)]
        if sizes:
            return sizes
    return []


def lm_shape(path: str) -> LMShape:
    """Read an LM's HF config (local folder or fsspec URL; weights not needed) and count params."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = read_hf_config(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    blocks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    block = max(blocks, key=lambda m: sum(p.numel() for p in m.parameters()))[0] if blocks else model
    hidden = hf.hidden_size
    heads = hf.num_attention_heads
    kv_heads = getattr(hf, "num_key_value_heads", None) or heads
    intermediate = getattr(hf, "intermediate_size", None) or getattr(hf, "n_inner", None) or 4 * hidden
    names = {type(m).__name__.lower() for m in block.modules()}
    shards = weight_file_sizes(path)
    return LMShape(
        model_type=hf.model_type,
        hidden=hidden,
        layers=hf.num_hidden_layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        vocab=hf.vocab_size,
        gated_mlp=any(hasattr(m, "gate_proj") for m in block.modules()),
        rms_norm=any("rmsnorm" in n for n in names),
        total_params=total,
        largest_layer_params=largest,
        block_params=sum(p.numel() for p in block.parameters()),
        largest_shard_bytes=max(shards, default=0),
        shard_count=len(shards),
    )
