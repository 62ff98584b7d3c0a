"""Training: the prefix-training loop over a DeepSpeed engine, committed checkpoints on any fsspec
URL, metrics (JSONL, TensorBoard) and FLOP counting, the learning-rate schedule, pretraining the
world's LM (the paper's step 1, `pretrain_lm`) and exporting a trained prefix (`export`)."""
