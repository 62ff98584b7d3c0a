"""Evaluation: the Frozen paper's protocols (captioning, zero/few-shot VQA, open-ended few-shot
classification, fast concept binding) on webdataset eval shards or on the items of a registered
item source (the built-in world's, `frozen_scale.world.items`).

    tasks.py          the task runner: items -> generation over ranks (or blind) -> scores
    cli.py            `frozen-scale eval`, the command line around the runner
    fewshot.py        the paper's few-shot prompt layouts
    items.py          Item, and the registry of item sources that make items on the fly
    names.py          the paper's nonsense words, bound to an episode's categories
    coco.py, vqa_data.py
                      eval shards and COCO / VQAv2 annotation files
    metrics.py        CIDEr, BLEU (pycocoevalcap), VQAv2 accuracy
    attention_map.py  the picture of where each generated token looked (`frozen-scale generate --attention`)
"""
