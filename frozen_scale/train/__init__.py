"""Training: the prefix-training loop over a DeepSpeed engine (`trainer`), the checkpoint
manager that owns every stateful part, commits checkpoints on any fsspec URL and resumes them on
any number of ranks (`checkpoint`), the test hooks of the `debug` config section (`debug`),
metrics (JSONL, TensorBoard, optional W&B) and FLOP counting, the learning-rate schedule,
pretraining the world's LM (the paper's step 1, `pretrain_lm`) and exporting a trained prefix
(`export`)."""
