"""The only package that talks to DeepSpeed and torch.distributed set-up: process groups, the
DeepSpeed config derived from the run config, ZeRO-3 partitioned LM loading, collectives, the
trainable parameters' optimizer state read and written whole at any ZeRO stage, and safe
checkpoint loading."""
