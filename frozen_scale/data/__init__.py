"""Training and evaluation inputs: shard lists (a data_prep manifest or a brace pattern, any fsspec
URL), the streaming webdataset loader with exact resume (`loader`), the token layout of
interleaved image/text prompts (`prompts`), images as the model sees them (`images`), and the blind
baseline's black image (`blind`)."""
