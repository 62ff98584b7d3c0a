"""DeepSpeed checkpoint files read with `torch.load(weights_only=True)`.

DeepSpeed's own torch checkpoint engine unpickles arbitrary objects. Ours loads with
weights_only=True and allows only the few plain types DeepSpeed writes into its state files.
"""

from __future__ import annotations

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine


def _safe_globals() -> list:
    allowed: list = []
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler, DynamicLossScaler

        allowed += [LossScaler, DynamicLossScaler]
    except ImportError:  # pragma: no cover
        pass
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum

        allowed.append(ZeroStageEnum)
    except ImportError:  # pragma: no cover
        pass
    try:
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed.append(fragment_address)
    except ImportError:  # pragma: no cover
        pass
    import collections

    allowed += [collections.OrderedDict, set]
    return allowed


class SafeTorchCheckpointEngine(TorchCheckpointEngine):
    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


def install(engine) -> None:
    """Replace the engine's checkpoint engine with the weights_only one."""
    current = getattr(engine, "checkpoint_engine", None)
    if current is None or type(current) is TorchCheckpointEngine:
        safe = SafeTorchCheckpointEngine.__new__(SafeTorchCheckpointEngine)
        safe.__dict__.update(current.__dict__ if current is not None else {})
        if current is None:
            SafeTorchCheckpointEngine.__init__(safe, None)
        engine.checkpoint_engine = safe
