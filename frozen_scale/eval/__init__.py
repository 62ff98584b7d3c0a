"""Evaluation: the Frozen paper's protocols (captioning, zero/few-shot VQA, open-ended few-shot
classification, fast concept binding) on the built-in world or on webdataset eval shards.

    tasks.py          the task runner: items -> generation over ranks (or blind) -> scores
    cli.py            `frozen-scale eval`, the command line around the runner
    fewshot.py        the paper's few-shot prompt layouts
    fewshot_world.py  the tasks' items on the built-in world
    coco.py, vqa_data.py
                      eval shards and COCO / VQAv2 annotation files
    metrics.py        CIDEr, BLEU (pycocoevalcap), VQAv2 accuracy
    world.py          the demo's evaluation (through the runner) and the world's caption scores
    report.py         the demo's report.md and loss curve
    attention_map.py  the picture of where each generated token looked (`frozen-scale generate --attention`)
"""
