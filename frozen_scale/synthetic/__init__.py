"""The built-in synthetic shapes world: scenes and their images, captions and questions (`world`),
its word-level language and LM pretraining corpus (`text`), naming episodes (`episodes`) and the
paper's nonsense names (`names`). Imports nothing above it: the world's shards are written by
data_prep (`data_prep.synthetic`), its evaluation items are `eval.fewshot_world`."""
