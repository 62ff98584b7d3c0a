"""The built-in shapes world: a small visual world with its own language, on which the whole
method runs on a CPU in minutes (docs/world.md). It sits above the library and adds to it:

    scenes.py       scenes and their images, captions and questions (a pure function of seed, split, index)
    text.py         the world's word-level language and the LM's pretraining corpora
    episodes.py     few-shot naming episodes (classification, fast concept binding)
    config.py       its run-config sections: `world` (which scenes), `lm_pretrain` (its LM)
    pretrain_lm.py  `frozen-scale pretrain-lm`: step 1 of the paper, a tiny LM learns the text
    lm_text_eval.py the LM's text-only measurements (QA, lookups, naming)
    shards.py       the scenes as webdataset shards through data_prep (`frozen-scale prep synthetic`)
    items.py        the paper's tasks as eval items on held-out scenes
    evaluation.py   the demo's evaluation: captions and zero-shot VQA next to the blind baseline
    probes.py       what the frozen prefix carries (`reproduce`'s probes)
    demo.py         `frozen-scale demo`; report.py its report
    reproduce.py    `frozen-scale reproduce`: the paper's ablation; reproduce_report.py its tables

Importing the package registers what the library reads from it by role, never by name
(`registry.py`): the two config sections (`config.register_section`), the generated data_prep
source (`data_prep.generated`) and the eval item source (`eval.items`). The library never imports
it (an import-linter contract in pyproject.toml).
"""

from frozen_scale.world.registry import register

register()
