"""The built-in world's eval items: the few-shot episodes' layouts and names, the image episodes
as the LM's text episodes, n-shot VQA paired across shot counts, and the registered item source."""

from __future__ import annotations

import pytest

from frozen_scale.data.prompts import Image, Text
from frozen_scale.world import items as fw
from frozen_scale.world import scenes, text


def _words(item) -> list[str]:
    return [w for seg in item.segments if isinstance(seg, Text) for w in seg.text.split()]


@pytest.mark.parametrize("naming", [False, True])
def test_binding_episode_needs_the_binding(naming):
    tok = text.build_tokenizer(naming=naming)
    vocab = tok.get_vocab()
    language = fw.naming_language(tok)
    assert language == (fw.PAPER_NAMING if naming else fw.STANDIN_NAMING)
    for item in fw.binding_items(seed=0, n=30, shots=2, image_size=16, language=language):
        bound, asked = item.meta["bound"], item.meta["asked"]
        assert set(bound.values()) <= set(language.names) and all(n in vocab for n in bound.values())
        assert len(item.images) == 2 * 2 + 1 and sum(isinstance(s, Image) for s in item.segments) == 5
        assert item.segments[-1] == Text(f"question : what color is the {asked} ? answer :")
        supports = [s.text for s in item.segments[:-2] if isinstance(s, Text)]
        assert sorted(supports) == sorted([language.template.format(name=name) for name in bound.values()] * 2)
        assert all(w in vocab for w in _words(item)), _words(item)
    # the answer is the colour of the asked shape in the query image: check against a re-drawn scene
    item = fw.binding_items(seed=0, n=1, shots=1, image_size=32)[0]
    shape = {v: k for k, v in item.meta["bound"].items()}[item.meta["asked"]]
    query = item.images[-1]
    target = scenes.COLORS[item.answers[0]]
    pixels = list(query.get_flattened_data())
    assert target in pixels  # the answer colour is drawn in the query
    for support_image in item.images[:-1]:
        assert target not in list(support_image.get_flattened_data())  # and never in the support
    assert shape in scenes.SHAPES


def test_classification_episode_layout():
    items = fw.classification_items(seed=1, n=20, ways=3, shots=2, image_size=16)
    for item in items:
        names = set(item.meta["bound"].values())
        assert len(names) == 3 and item.answers[0] in names
        assert len(item.images) == 3 * 2 + 1
        assert item.segments[-1] == Text(fw.STANDIN_NAMING.query)
    assert len({it.answers[0] for it in items}) > 1  # names shuffled across episodes
    with pytest.raises(ValueError, match="ways"):
        fw.classification_items(seed=0, n=1, ways=4, shots=1, image_size=16)


@pytest.mark.parametrize("kind", ["classification", "binding"])
def test_image_episode_is_the_text_episode_with_scenes_as_images(kind):
    """The naming documents the LM pretrains on and the image episodes it is evaluated on are the
    same episodes: replace every image by its scene's caption and the prompt is the document."""
    import numpy as np

    from frozen_scale.eval.names import NONSENSE_NAMES
    from frozen_scale.world import episodes

    for i in range(20):
        rng = np.random.default_rng([0, 88, 1, i] if kind == "binding" else [0, 77, 2, 1, i])
        ep = (episodes.binding(rng, 1, NONSENSE_NAMES, "eval", i) if kind == "binding"
              else episodes.classification(rng, 2, 1, NONSENSE_NAMES, "eval", i))
        item = (fw.binding_items(0, i + 1, 1, 16, fw.PAPER_NAMING) if kind == "binding"
                else fw.classification_items(0, i + 1, 2, 1, 16, fw.PAPER_NAMING))[i]
        drawn = [scene for scene, _ in ep.support] + [ep.query]
        assert [im.tobytes() for im in item.images] == [scenes.render(s, 16).tobytes() for s in drawn]
        words, it = [], iter(drawn)
        for seg in item.segments:
            words.append(text.context(next(it)) if isinstance(seg, Image) else seg.text)
        assert " ".join(words) + f" {item.answers[0]} ." == text.episode_text(ep)


def test_naming_documents_fit_and_leave_the_default_corpus_alone():
    from frozen_scale.world.pretrain_lm import encode_corpus

    plain = text.corpus(0, 200)
    with_naming = text.corpus(0, 200, naming_fraction=0.3)
    assert not any("this is a" in d for d in plain)
    named = [d for d in with_naming if "this is a" in d]
    assert 30 <= len(named) <= 90
    assert not any(w in d.split() for d in with_naming if d not in named for w in text.NAMING_WORDS)
    tok = text.build_tokenizer(naming=True)
    assert "dax" in tok.get_vocab() and "dax" not in text.build_tokenizer().get_vocab()
    rows = encode_corpus(named, tok, 48)
    assert (rows[:, -1] == tok.pad_token_id).all()  # nothing truncated: every document ends before 48
    assert tok.unk_token_id not in rows


def test_nshot_vqa_world_layout():
    item = fw.vqa_items(seed=0, split="eval", n=3, shots=2, image_size=16)[1]
    kinds = [type(s).__name__ for s in item.segments]
    assert kinds == ["Image", "Text", "Text"] * 2 + ["Image", "Text"]
    assert item.segments[-1] == Text(text.question_prompt(item.meta["question"]))
    assert item.segments[2].text.endswith(" .") and len(item.images) == 3


def test_nshot_vqa_items_are_paired_across_shot_counts():
    """Item i asks the same question of the same scene at 0 and 2 shots: only the solved examples
    differ, so the two columns compare like with like."""
    zero = fw.vqa_items(seed=0, split="eval", n=20, shots=0, image_size=16)
    two = fw.vqa_items(seed=0, split="eval", n=20, shots=2, image_size=16)
    assert [(i.meta["question"], i.answers) for i in zero] == [(i.meta["question"], i.answers) for i in two]
    assert [i.segments[-2:] for i in zero] == [i.segments[-2:] for i in two]
    assert len({i.meta["question"] for i in zero}) > 3


@pytest.mark.parametrize("task, shots", [("caption", 0), ("vqa", 0), ("vqa", 2), ("fewshot-cls", 1), ("binding", 1)])
def test_dev_and_test_items_are_disjoint(task, shots):
    """The test split's items share no key and no query image with the dev split's, and the dev
    split's items are the ones every earlier evaluation used."""
    tok = text.build_tokenizer(naming=True)
    kw = dict(seed=0, n=40, shots=shots, ways=2, image_size=16)
    dev = fw.WORLD_ITEMS.items(task, {}, tok, split=fw.DEV_SPLIT, **kw)
    test = fw.WORLD_ITEMS.items(task, {}, tok, split=fw.TEST_SPLIT, **kw)
    assert not {it.key for it in dev} & {it.key for it in test}
    assert not {it.images[-1].tobytes() for it in dev} & {it.images[-1].tobytes() for it in test} or task != "caption"
    same_prompts = sum(d.segments == t.segments and [i.tobytes() for i in d.images] == [i.tobytes() for i in t.images]
                       for d, t in zip(dev, test))
    assert same_prompts == 0
    if task in ("fewshot-cls", "binding"):  # the dev stream is unchanged: the same episodes as before the split
        old = (fw.classification_items(0, 40, 2, 1, 16, fw.PAPER_NAMING) if task == "fewshot-cls"
               else fw.binding_items(0, 40, 1, 16, fw.PAPER_NAMING))
        assert [it.segments for it in old] == [it.segments for it in dev]


def test_the_second_name_pool_is_in_the_vocabulary_but_asked_for_by_name():
    from frozen_scale.eval.names import NONSENSE_NAMES, NOVEL_NAMES

    naming = text.build_tokenizer(naming=True)
    assert fw.naming_language(naming, "novel") == fw.NOVEL_NAMING and fw.naming_language(naming) == fw.PAPER_NAMING
    assert not set(NOVEL_NAMES) & set(NONSENSE_NAMES)
    item = fw.WORLD_ITEMS.items("fewshot-cls", {}, naming, seed=0, split="test", n=1, shots=1, ways=2, image_size=16,
                                names="novel")[0]
    assert set(item.meta["bound"].values()) <= set(NOVEL_NAMES)
    with pytest.raises(ValueError, match="second name pool"):
        fw.naming_language(text.build_tokenizer(), "novel")
