"""The only package that talks to DeepSpeed and torch.distributed set-up: process groups, the
DeepSpeed config derived from the run config, ZeRO-3 partitioned LM loading, collectives, and
safe checkpoint loading."""
