"""The application layer: the `frozen-scale` command and the end-to-end jobs built from the library.

    cli.py        `frozen-scale COMMAND`: dispatches to each package's entry point
                  (`python -m frozen_scale.app.cli` is the same entry; launchers run it on every rank)
    config_cmd.py `frozen-scale config`: every config key, or a file's resolved values
    generate.py   `frozen-scale generate`: caption an image or answer a prompt; --attention: where it looked

The demo, `reproduce` and `pretrain-lm` are the built-in world's (`frozen_scale.world`), which the
command line imports so that its config sections, prep source and eval items are registered.
Nothing below this package imports it (checked by import-linter, `make test`).
"""
