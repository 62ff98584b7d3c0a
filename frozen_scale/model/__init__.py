"""The Frozen model in plain PyTorch: vision encoders, the prefix mapper into the LM's embedding
space, loading the frozen Hugging Face causal LM, and `FrozenVLM` putting them together. No
distributed code (that is `frozen_scale.distributed`)."""
