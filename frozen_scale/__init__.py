"""frozen_scale: visual prefixes for frozen language models, trained at cluster scale.

Packages, top to bottom (imports point down only; `lint-imports` checks it, contracts in
pyproject.toml):

    app          the `frozen-scale` command, the demo, the paper's ablation (reproduce)
    eval         the paper's evaluation protocols, their task runner and metrics
                 (beside it, outside this package: data_prep and launchers)
    train        the training loop, checkpoints, metrics, LM pretraining, export
    model, data, distributed, synthetic
                 the Frozen model; streaming shards and prompts; DeepSpeed; the built-in world
    config, storage, constants
                 the run configuration; URL and filesystem helpers; exit codes and the shard
                 manifest format
"""

__version__ = "0.1.0"
