"""The world's probes: probe episodes are the evaluation's episodes with scenes written as text,
and a lexical prefix's readout spells what its slots' top words say."""

import pytest
import torch


def test_probe_episodes_match_the_evaluation_and_write_the_asked_scenes():
    from frozen_scale.data.prompts import Image, Text
    from frozen_scale.world import items as fw
    from frozen_scale.world import probes

    lang = fw.PAPER_NAMING
    shown = probes.episode_items("classification", 0, 3, 16, lang, "none")
    evaluation = fw.classification_items(0, 3, 2, 1, 16, lang)
    assert [it.segments for it in shown] == [it.segments for it in evaluation]
    assert [it.answers for it in shown] == [it.answers for it in evaluation]
    assert [probes.episode_items("binding", 0, 3, 16, lang, "none")[i].segments for i in range(3)] == \
        [it.segments for it in fw.binding_items(0, 3, 1, 16, lang)]
    for written, images in (("all", 0), ("support", 1), ("query", 2), ("none", 3)):
        for it in probes.episode_items("classification", 0, 3, 16, lang, written):
            assert len(it.images) == images == sum(isinstance(s, Image) for s in it.segments)
            texts = [s.text for s in it.segments if isinstance(s, Text)]
            assert sum(t.endswith(" .") and not t.startswith("this") for t in texts) == 3 - images
    with pytest.raises(ValueError, match="written"):
        probes.episode_items("binding", 0, 1, 16, lang, "some")


def test_lexical_readout_reads_each_slots_top_word():
    """The readout of a lexical prefix spells the scene's context exactly when the slots' top words
    are its words: a prefix pushed to write one scene's context ("a red circle .") for every image
    spells the context of just the scenes with that caption; a continuous prefix has no readout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from frozen_scale.config import ModelConfig, VisionConfig
    from frozen_scale.world import probes
    from frozen_scale.model.frozen_vlm import FrozenVLM
    from frozen_scale.world import scenes, text

    tok = text.build_tokenizer(naming=True)
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2, n_positions=64,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id))
    vision = VisionConfig(image_size=16, resnet_widths=[8, 16])
    model = FrozenVLM(ModelConfig(prefix_length=4, vision=vision, prefix_kind="lexical"), lm)
    single = [s for s in scenes.scenes(0, "eval", 40) if len(s.objects) == 1]
    written = text.context(single[0])
    from tests.support.core_fixtures import FixedVectors

    model.prefix.free = FixedVectors(lm.get_input_embeddings().weight[tok.convert_tokens_to_ids(written.split())] * 10)
    model.prefix.log_sharpness.data.fill_(6.0)  # cosine 1 against < 1: all weight on the nearest token
    out = probes.lexical_readout(model, tok, seed=0, n=40)
    expected = sum(text.context(s) == written for s in single) / len(single)
    assert 0 < expected < 1 and out["1_object"]["spells_context"] == pytest.approx(expected)
    assert out["1_object"]["n"] == len(single) and out["1_object"]["top_weight"] > 0.99
    assert out["2_object"]["spells_context"] == 0.0  # a one-object context is no two-object one
    assert out["1_object"]["examples"][0]["writes"] == written
    assert probes.lexical_readout(FrozenVLM(ModelConfig(prefix_length=4, vision=vision), lm), tok,
                                  seed=0, n=4) is None
