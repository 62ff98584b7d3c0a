"""frozen_scale: visual prefixes for frozen language models, trained at cluster scale.

Packages, top to bottom (imports point down only; `lint-imports` checks it, contracts in
pyproject.toml):

    app          the `frozen-scale` command
    world        the built-in shapes world: its scenes, language and LM, the demo and the paper's
                 ablation (reproduce); above the library, registered with it
    eval         the paper's evaluation protocols, their task runner and metrics
                 (beside it, outside this package: data_prep and launchers)
    train        the training loop, checkpoints, metrics, export
    model, data, distributed
                 the Frozen model; streaming shards and prompts; DeepSpeed
    config, storage, constants
                 the run configuration; URL and filesystem helpers; exit codes and the shard
                 manifest format
"""

__version__ = "0.1.0"
