"""The application layer: the `frozen-scale` command and the end-to-end jobs built from the library.

    cli.py        `frozen-scale COMMAND`: dispatches to each package's entry point
                  (`python -m frozen_scale.app.cli` is the same entry; launchers run it on every rank)
    demo.py       `frozen-scale demo`: world -> shards -> LM pretraining -> prefix training -> eval -> report
    reproduce.py  `frozen-scale reproduce`: the paper's ablation on the built-in world
    generate.py   `frozen-scale generate`: caption an image or answer a prompt; --attention: where it looked

Nothing below this package imports it (checked by import-linter, `make test`).
"""
