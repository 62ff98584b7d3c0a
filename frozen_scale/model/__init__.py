"""The Frozen model in plain PyTorch: vision encoders, the prefix mapper into the LM's embedding
space, loading the frozen Hugging Face causal LM, `FrozenVLM` putting them together, and the
attention shares of a generation (`attention`). No distributed code (that is
`frozen_scale.distributed`)."""
