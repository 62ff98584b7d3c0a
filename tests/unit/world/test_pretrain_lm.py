"""`frozen-scale pretrain-lm`: the naming curriculum draws naming documents first, then the
mixed corpus; the vocabulary has the naming words exactly when naming is on; bad settings are
refused before any work; packed pretraining fills every row and puts documents at every position."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from frozen_scale.world.config import LMPretrainConfig
from frozen_scale.world import text
from frozen_scale.world import pretrain_lm

ROOT = Path(__file__).resolve().parents[3]

TINY = dict(n_layer=1, n_embd=16, n_head=2, batch_size=8, num_documents=60, seq_len=72)


def _record_batches(monkeypatch) -> list[torch.Tensor]:
    import transformers

    seen: list[torch.Tensor] = []
    original = transformers.AutoModelForCausalLM.from_config

    def from_config(cfg, **kw):
        model = original(cfg, **kw)

        def hook(_module, _args, kwargs):
            if torch.is_grad_enabled():  # training steps, not the accuracy probes after them
                seen.append(kwargs["input_ids"].clone())

        model.register_forward_pre_hook(hook, with_kwargs=True)
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", from_config)
    return seen


def test_naming_curriculum_then_mixed_corpus(tmp_path, monkeypatch, caplog):
    seen = _record_batches(monkeypatch)
    pc = LMPretrainConfig(steps=6, naming_steps=3, naming_fraction=0.0, **TINY)
    with caplog.at_level("WARNING", logger="frozen_scale.pretrain_lm"):
        summary = pretrain_lm.pretrain(pc, str(tmp_path / "lm"), seed=0, progress=False)
    # 3 steps teach a 1-layer LM no naming: the curriculum's end and the summary both say so
    assert summary["text_classification_accuracy"] < pretrain_lm.NAMING_LEARNED
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("naming curriculum ended after 3 steps without in-context naming" in w for w in warnings)
    assert pretrain_lm.naming_warning(summary) in warnings
    tok = text.build_tokenizer(naming=True)
    this = tok.convert_tokens_to_ids("this")
    assert len(seen) == 6
    named = [bool((ids == this).any(dim=1).all()) for ids in seen]
    assert named[:3] == [True] * 3  # every document of the first steps names something
    assert not any(bool((ids == this).any()) for ids in seen[3:])  # naming_fraction 0 afterwards
    assert {"text_classification_accuracy", "text_binding_accuracy", "text_qa_2shot_accuracy",
            "text_lookup_accuracy", "text_lookup_2shot_accuracy",
            "text_classification_accuracy_after_naming_steps"} <= set(summary)
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(tmp_path / "lm"))
    assert text.knows_naming(saved)


def test_continue_steps_go_on_with_the_mixed_corpus_under_a_new_schedule(tmp_path, monkeypatch):
    """continue_steps: after the `steps` of the first one-cycle schedule (left as it was), more steps
    on the mixed corpus under a second one-cycle schedule peaking at continue_lr."""
    seen = _record_batches(monkeypatch)
    schedules = []
    one_cycle = torch.optim.lr_scheduler.OneCycleLR

    def recorded(opt, max_lr, total_steps, **kw):
        schedules.append((max_lr, total_steps, len(seen)))
        return one_cycle(opt, max_lr=max_lr, total_steps=total_steps, **kw)

    monkeypatch.setattr(torch.optim.lr_scheduler, "OneCycleLR", recorded)
    pc = LMPretrainConfig(steps=4, naming_steps=2, continue_steps=3, continue_lr=2e-4, naming_fraction=0.0,
                          n_positions=100, **TINY)
    pretrain_lm.pretrain(pc, str(tmp_path / "lm"), seed=0, progress=False)
    assert schedules == [(pc.lr, 4, 0), (2e-4, 3, 4)]
    this = text.build_tokenizer(naming=True).convert_tokens_to_ids("this")
    assert len(seen) == 7 and not any(bool((ids == this).any()) for ids in seen[2:])
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(str(tmp_path / "lm")).n_positions == 100


def test_without_naming_the_vocabulary_is_the_worlds(tmp_path):
    pc = LMPretrainConfig(steps=2, **TINY)
    summary = pretrain_lm.pretrain(pc, str(tmp_path / "lm"), seed=0, progress=False)
    from transformers import AutoTokenizer

    assert not text.knows_naming(AutoTokenizer.from_pretrained(str(tmp_path / "lm")))
    assert "text_binding_accuracy" not in summary


@pytest.mark.parametrize("bad, match", [({"naming_steps": 6}, "naming_steps"),
                                        ({"naming_fraction": 1.0}, "naming_fraction"),
                                        ({"continue_steps": -1}, "continue_steps"),
                                        ({"n_positions": 90}, "n_positions"),
                                        ({"multi_scene_fraction": 0.5, "multi_scene_scenes": 4}, "multi_scene_scenes"),
                                        ({"naming_steps": 3, "lookup_steps": 3}, "lookup_steps"),
                                        ({"lookup_fraction": 1.0}, "lookup_fraction"),
                                        ({"lookup_steps": 2, "lookup_level": 0.0}, "lookup_level")])
def test_bad_pretraining_settings_are_refused(tmp_path, bad, match):
    """Refused when the config is read (the section checks itself), before anything runs."""
    from frozen_scale.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=match):
        LMPretrainConfig(**{**dict(steps=6, **TINY), **bad})
    over = [f"lm_pretrain.{k}={v}" for k, v in {**dict(steps=6, **TINY), **bad}.items()]
    with pytest.raises(ConfigError, match=match):
        load_config(None, over)


def test_packed_rows_hold_every_document_once_at_many_positions():
    tok = text.build_tokenizer(naming=True)
    docs = text.corpus(0, 200, copy_fraction=0.5, naming_fraction=0.3, seq_len=72)
    rows = pretrain_lm.pack_corpus(docs, tok, 72, torch.Generator().manual_seed(0))
    assert rows.shape[1] == 72 and rows.shape[0] > 1
    assert not bool((rows == tok.pad_token_id).any())  # full rows: no padding
    stream = rows.flatten().tolist()
    starts = [i for i, t in enumerate(stream) if t == tok.bos_token_id]
    # every document whole once, in a shuffled order (the last one may be cut by the last row)
    pieces = [tok.decode(stream[a + 1:b]) for a, b in zip(starts, starts[1:])]
    assert len(pieces) >= len(docs) - 2
    assert not Counter(pieces) - Counter(docs)
    assert pieces != docs[: len(pieces)]
    # a document starts at many positions of a row, not only at 0
    assert len({s % 72 for s in starts}) > 30


def test_multi_scene_documents_are_nshot_qa_in_text():
    plain = text.corpus(0, 50, copy_fraction=0.5)
    assert text.corpus(0, 50, copy_fraction=0.5, multi_scene_fraction=0.0) == plain  # off: unchanged
    multi = text.corpus(0, 50, copy_fraction=0.5, multi_scene_fraction=1.0)
    for doc in multi:
        assert 2 <= doc.count("question :") == doc.count("answer :") <= 3
        assert "caption :" not in doc
    for scenes in (2, 3):  # fixed: every multi-scene document holds that many scenes, each with its question
        fixed = text.corpus(0, 200, copy_fraction=0.5, multi_scene_fraction=0.5, multi_scene_scenes=scenes)
        multi = [d for d in fixed if re.search(r"answer : \S+ \. (?!question|caption)", d)]  # a scene after an answer
        assert 50 < len(multi) < 150
        assert {d.count("question :") for d in multi} == {scenes}


@pytest.mark.parametrize("pack", ["all", "mixed"])
def test_packed_pretraining_trains_on_full_rows(tmp_path, monkeypatch, pack):
    seen = _record_batches(monkeypatch)
    pc = LMPretrainConfig(steps=4, naming_steps=2, pack=pack, multi_scene_fraction=0.5, **TINY)
    pretrain_lm.pretrain(pc, str(tmp_path / "lm"), seed=0, progress=False)
    tok = text.build_tokenizer(naming=True)
    assert len(seen) == 4
    for step, ids in enumerate(seen):
        full = pack == "all" or step >= 2  # "mixed": the naming curriculum keeps a document per row
        starts_at_zero = bool((ids[:, 0] == tok.bos_token_id).all())
        assert (ids.shape[1] == 72 and not bool((ids == tok.pad_token_id).any())) == full
        assert starts_at_zero or full


def test_bad_multi_scene_fraction_is_refused(tmp_path):
    with pytest.raises(ValueError, match="multi_scene_fraction"):
        pretrain_lm.pretrain(LMPretrainConfig(steps=2, multi_scene_fraction=1.5, **TINY), str(tmp_path / "lm"),
                             progress=False)


def test_shape_questions_ask_the_first_hop_of_binding():
    """naming_shape_questions: that share of the binding documents ask which shape a name was given
    to, answered by the support (no query scene); off, the naming corpus is unchanged."""
    import re

    assert text.naming_corpus(0, 60, 72, shape_questions=0.0) == text.naming_corpus(0, 60, 72)
    docs = text.naming_corpus(0, 400, 72, shape_questions=1.0)
    asked = [d for d in docs if "question :" in d]
    assert asked and all("what color is" not in d for d in asked)  # every binding document asks the shape
    for doc in asked:
        name, shape = re.search(r"what shape is the (\w+) \? answer : (\w+) \.$", doc).groups()
        named = re.findall(r"a \w+ (\w+) \. this is a (\w+) \.", doc)
        assert (shape, name) in named and all(n != name for s, n in named if s != shape)
    with pytest.raises(ValueError, match="naming_shape_questions"):
        pretrain_lm.pretrain(LMPretrainConfig(steps=2, naming_shape_questions=2.0, **TINY), "/nonexistent/lm",
                             progress=False)


def test_named_queries_are_the_same_episodes_with_the_query_objects_named():
    """named_query: each binding query writes every object's bound name after its shape; everything
    else, and every other document, is as without; the documents fit the rows they are cut to."""
    import re

    plain, named = text.naming_corpus(0, 300, 72), text.naming_corpus(0, 300, 72, named_query=True)
    changed = 0
    for p, n in zip(plain, named):
        if "question :" not in p:
            assert n == p  # classification documents are untouched
            continue
        changed += 1
        bound = {shape: name for shape, name in re.findall(r"a \w+ (\w+) \. this is a (\w+) \.", p)}
        query = re.search(r"(a \w+ \w+ on the left and a \w+ \w+ on the right) \.", p).group(1)
        written = re.sub(r"a (\w+) (\w+) on", lambda m: f"a {m[1]} {m[2]} {bound[m[2]]} on", query)
        assert n == p.replace(query, written) and n != p
    assert changed > 100
    tok = text.build_tokenizer(naming=True)
    for seq_len in (48, 96):
        assert all(len(tok(d)["input_ids"]) + 2 <= seq_len
                   for d in text.naming_corpus(0, 300, seq_len, named_query=True))


def test_naming_query_names_fall_to_none_over_the_curriculum(tmp_path, monkeypatch):
    """naming_query_names: the curriculum's rows are its naming documents, a falling share of them
    with the query objects named (all at step 0, none at its end); the mixed corpus after it has none."""
    seen = _record_batches(monkeypatch)
    cfg = dict(TINY, batch_size=64, num_documents=200)
    pc = LMPretrainConfig(steps=6, naming_steps=4, naming_fraction=0.0, naming_query_names=1.0, **cfg)
    pretrain_lm.pretrain(pc, str(tmp_path / "lm"), seed=0, progress=False)
    tok = text.build_tokenizer(naming=True)
    def words(rows):  # each row's tokens without padding
        return [tuple(t for t in row.tolist() if t != tok.pad_token_id) for row in rows]

    plain = words(pretrain_lm.encode_corpus(text.naming_corpus(0, 200, 72), tok, 72))
    named = words(pretrain_lm.encode_corpus(text.naming_corpus(0, 200, 72, named_query=True), tok, 72))
    named_binding = {n for p, n in zip(plain, named) if n != p}
    plain_binding = {p for p, n in zip(plain, named) if n != p}

    def share(ids):  # of the batch's binding rows, the share written with named queries
        rows = [r for r in words(ids) if r in named_binding or r in plain_binding]
        assert rows and all(r in set(plain) | named_binding for r in words(ids))
        return sum(r in named_binding for r in rows) / len(rows)

    shares = [share(ids) for ids in seen[:4]]
    assert shares[0] == 1.0 and shares[0] > shares[2] > 0.0 and shares[3] < 0.6
    assert not any(bool((ids == tok.convert_tokens_to_ids("this")).any()) for ids in seen[4:])
    with pytest.raises(ValueError, match="naming_query_names"):
        pretrain_lm.pretrain(LMPretrainConfig(steps=4, naming_query_names=0.5, **TINY), "/nonexistent/lm",
                             progress=False)  # no naming curriculum to write them in
    with pytest.raises(ValueError, match="naming_query_names"):
        pretrain_lm.pretrain(LMPretrainConfig(steps=4, naming_steps=2, naming_query_names=1.5, **TINY),
                             "/nonexistent/lm", progress=False)


def test_mixed_query_names_name_a_share_of_the_mixed_corpus_binding_queries():
    """mixed_query_names: that share of the mixed corpus's naming documents are written with their
    binding queries named; the corpus is otherwise the same document for document (0: unchanged)."""
    args = (0, 3000, 0.5, 0.3, 96, 0.8, 0.0, 3)
    plain = text.corpus(*args)
    assert text.corpus(*args, named_queries=0.0) == plain
    named = text.corpus(*args, named_queries=0.5)
    every = text.corpus(*args, named_queries=1.0)
    assert len(plain) == len(named) == len(every)
    binding = {i for i, d in enumerate(plain) if "this is a" in d and "question :" in d}
    assert len(binding) > 100
    for i, (p, n, e) in enumerate(zip(plain, named, every)):
        if i not in binding:
            assert p == n == e
    renamed = [i for i in binding if named[i] != plain[i]]
    assert all(every[i] != plain[i] for i in binding)  # all of them at 1.0
    assert all(named[i] == every[i] for i in renamed)  # the named ones are the same named documents
    assert 0.4 < len(renamed) / len(binding) < 0.6
    with pytest.raises(ValueError, match="mixed_query_names"):
        pretrain_lm.pretrain(LMPretrainConfig(steps=2, mixed_query_names=1.5, naming_fraction=0.3, **TINY),
                             "/nonexistent/lm", progress=False)
    with pytest.raises(ValueError, match="mixed_query_names"):  # no naming documents to name
        pretrain_lm.pretrain(LMPretrainConfig(steps=2, mixed_query_names=0.5, **TINY), "/nonexistent/lm",
                             progress=False)


def test_naming_warning_only_for_an_lm_that_should_name_and_does_not():
    assert pretrain_lm.naming_warning({"text_qa_accuracy": 0.9}) is None  # no naming documents
    assert pretrain_lm.naming_warning({"text_classification_accuracy": 1.0}) is None
    assert pretrain_lm.naming_warning({"text_classification_accuracy": pretrain_lm.NAMING_LEARNED}) is None
    warning = pretrain_lm.naming_warning({"text_classification_accuracy": 0.48})
    assert "did not learn in-context naming" in warning and "0.480" in warning and "naming_steps" in warning


def test_lookup_items_are_answered_only_by_finding_the_asked_object(monkeypatch):
    """text_lookup_accuracy asks two-object scenes only, about an attribute the two objects do not
    share: answering by the object's place in the caption (always the first, always the last) is
    right on part of the items only, so the measure tells a lookup from a positional rule."""
    from frozen_scale.world import scenes
    from frozen_scale.world import lm_text_eval

    asked = []
    monkeypatch.setattr(lm_text_eval, "first_word_accuracy", lambda m, t, prompts, answers: asked.append(
        (prompts, answers)) or 0.0)
    pretrain_lm.text_lookup_accuracy(None, None, seed=0, n=120)
    pretrain_lm.text_lookup_accuracy(None, None, seed=0, n=120, shots=2)
    (prompts, answers), (prompts2, answers2) = asked
    assert len(prompts) == 120 and answers == answers2  # the same items, with solved examples first
    assert all(p.count("question :") == 1 for p in prompts) and all(p.count("question :") == 3 for p in prompts2)
    first = last = 0
    for prompt, answer in zip(prompts, answers):
        caption = prompt[: prompt.index(" . question :")]
        left, right = caption.split(" on the left and ")
        assert right.endswith(" on the right")
        assert (answer in left.split()) != (answer in right.split())  # one object's attribute, not both
        first += answer in left.split()
        last += answer in right.split()
    assert 0.3 < first / 120 < 0.7 and first + last == 120
    scene = next(s for s in scenes.scenes(0, "eval", 50) if len(s.objects) == 1)
    assert scenes.lookup_questions(scene) == []


def test_name_lookups_write_names_instead_of_shapes_and_ask_each_object_by_its_name():
    import numpy as np

    from frozen_scale.world import episodes
    from frozen_scale.eval.names import NONSENSE_NAMES

    rng = np.random.default_rng(0)
    for i in range(20):
        ep = episodes.binding(rng, 1, NONSENSE_NAMES, index=i)
        doc = text.name_lookup_text(ep, rng)
        query, *asked = doc.split(" question : ")
        assert "this is" not in doc and len(asked) == 2
        for obj in ep.query.objects:
            name = ep.bound[obj.shape]
            assert f"{obj.color} {name}" in query and obj.shape not in query.split()
            assert f"what color is the {name} ? answer : {obj.color} ." in doc
    docs = text.lookup_corpus(0, 400)
    lookups = [d for d in docs if any(f"the {n} ?" in d for n in NONSENSE_NAMES)]
    assert 0.4 < len(lookups) / len(docs) < 0.6
    assert all(d in set(text.name_lookup_corpus(0, 400)) for d in lookups)
    assert not any(n in d.split() for d in docs if d not in lookups for n in NONSENSE_NAMES)  # the others: the world's


@pytest.mark.parametrize("levels, ends_at", [((0.5, 0.95), 4), ((0.5, 0.6, 0.7), 5)])
def test_lookup_phase_ends_at_the_measured_level_then_names_with_lookups_kept(tmp_path, monkeypatch, caplog,
                                                                                levels, ends_at):
    """lookup_steps: rows of the lookup corpus until held-out name lookups reach lookup_level (measured
    every LOOKUP_EVERY steps, at most lookup_steps: a warning then), then the naming curriculum and the
    mixed corpus, a lookup_fraction share of every later batch's rows name lookups."""
    seen = _record_batches(monkeypatch)
    measured = iter(levels)
    monkeypatch.setattr(pretrain_lm, "LOOKUP_EVERY", 2)
    monkeypatch.setattr(pretrain_lm, "text_name_lookup_accuracy", lambda *a, **k: next(measured, 0.5))
    cfg = dict(TINY, batch_size=32, num_documents=200)
    pc = LMPretrainConfig(steps=10, lookup_steps=5, naming_steps=3, lookup_fraction=0.4, **cfg)
    with caplog.at_level("WARNING", logger="frozen_scale.pretrain_lm"):
        summary = pretrain_lm.pretrain(pc, str(tmp_path / "lm"), seed=0, progress=False)
    tok = text.build_tokenizer(naming=True)

    def rows(docs):
        return {tuple(r) for r in pretrain_lm.encode_corpus(docs, tok, 72).tolist()}

    lookup_rows, kept_rows = rows(text.lookup_corpus(0, 200)), rows(text.name_lookup_corpus(1, 200))
    naming_rows = rows(text.naming_corpus(0, 200, 72))
    padded = [{tuple(r + [tok.pad_token_id] * (72 - len(r))) for r in ids.tolist()} for ids in seen]
    assert len(seen) == 10 and summary["lookup_phase_steps"] == ends_at
    assert all(b <= lookup_rows for b in padded[:ends_at])
    assert all(b <= naming_rows | kept_rows and b & naming_rows and b & kept_rows
               for b in padded[ends_at:ends_at + 3])
    assert all(b & kept_rows and not b <= kept_rows for b in padded[ends_at + 3:])
    warned = any("lookup phase ended after 5 steps without lookups by names" in r.getMessage() for r in caplog.records)
    assert warned == (ends_at == 5)
    assert {"text_name_lookup_accuracy", "text_name_lookup_after_lookup_phase"} <= set(summary)


def test_pack_rows_lays_every_sequence_once_with_its_own_positions_and_the_same_targets():
    gen = torch.Generator().manual_seed(0)
    pad = 0
    lengths = torch.randint(1, 25, (40,), generator=gen)
    ids = torch.zeros((40, 24), dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        ids[i, :n] = torch.randint(1, 50, (n,), generator=gen)
    packed, pos, labels = pretrain_lm.pack_rows(ids, pad, 24)
    assert packed.shape[1] <= 24 and packed.shape[0] < 40 and packed.shape == pos.shape == labels.shape
    assert int((packed != pad).sum()) == int(lengths.sum())
    assert int((labels != -100).sum()) == int((lengths - 1).sum())  # every row's predictions, none across rows
    segments = []
    for b in range(packed.shape[0]):
        starts = [t for t in range(packed.shape[1]) if pos[b, t] == 0] + [packed.shape[1]]
        for s, e in zip(starts, starts[1:]):
            assert pos[b, s:e].tolist() == list(range(e - s)) and labels[b, s] == -100
            if packed[b, s] != pad:
                segments.append(tuple(packed[b, s:e].tolist()))
                assert labels[b, s + 1:e].tolist() == list(segments[-1][1:])
    assert sorted(segments) == sorted(tuple(row[:n].tolist()) for row, n in zip(ids, lengths.tolist()))
    with pytest.raises(ValueError, match="does not fit"):
        pretrain_lm.pack_rows(ids, pad, 10)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_packed_step_has_the_padded_batchs_loss_and_gradients(arch, attn):
    from transformers import AutoModelForCausalLM

    tok = text.build_tokenizer(naming=True)
    rows = pretrain_lm.encode_corpus(text.corpus(0, 24, multi_scene_fraction=0.5, seq_len=96), tok, 96)
    pad = tok.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(pretrain_lm.tiny_lm_config(
        arch, len(tok), 2, 32, 2, 144, tok.bos_token_id, tok.eos_token_id, pad), attn_implementation=attn).train()
    cut = rows[:, : int((rows != pad).sum(1).max())]
    loss = model(input_ids=cut, attention_mask=(cut != pad).long(), labels=cut.masked_fill(cut == pad, -100)).loss
    grads = torch.autograd.grad(loss, list(model.parameters()))
    packed, pos, labels = pretrain_lm.pack_rows(rows, pad, 96)
    assert packed.numel() < cut.numel()
    packed_loss = model(input_ids=packed, position_ids=pos, labels=labels, use_cache=False).loss
    packed_grads = torch.autograd.grad(packed_loss, list(model.parameters()))
    assert abs(loss.item() - packed_loss.item()) < 1e-5
    assert max(float((a - b).abs().max()) for a, b in zip(grads, packed_grads)) < 1e-5


def test_pack_steps_trains_on_packed_rows(tmp_path, monkeypatch):
    seen = _record_batches(monkeypatch)
    pc = LMPretrainConfig(steps=4, naming_steps=2, pack_steps=True, multi_scene_fraction=0.5, **TINY)
    summary = pretrain_lm.pretrain(pc, str(tmp_path / "lm"), seed=0, progress=False)
    assert len(seen) == 4 and all(ids.shape[0] <= pc.batch_size and ids.shape[1] <= pc.seq_len for ids in seen)
    assert sum(ids.shape[0] for ids in seen) < 4 * pc.batch_size  # some rows shared: documents packed
    assert summary["final_loss"] > 0 and (tmp_path / "lm" / "model.safetensors").exists()


def test_corpora_built_in_two_processes_are_the_ones_built_one_by_one():
    """build_corpora in two forked processes: every corpus the same documents as built in this
    process, the naming corpus's two writings as drawn one at a time; one batched tokenizer call
    encodes each document as it alone does (bos + ids + eos, cut, padded)."""
    pc = LMPretrainConfig(steps=10, lookup_steps=2, naming_steps=3, naming_fraction=0.3, naming_query_names=1.0,
                          lookup_fraction=0.2, multi_scene_fraction=0.8, **dict(TINY, num_documents=150))
    forked, serial = pretrain_lm.build_corpora(pc, 5, workers=2), pretrain_lm.build_corpora(pc, 5, workers=1)
    assert forked == serial and all(v is not None for v in forked.values())
    assert forked["naming"] == (text.naming_corpus(5, 150, 72), text.naming_corpus(5, 150, 72, named_query=True))
    assert forked["naming"][0] != forked["naming"][1]
    assert forked["kept_lookups"] == text.name_lookup_corpus(6, 150)
    assert pretrain_lm.build_corpora(LMPretrainConfig(**TINY), 5)["naming"] is None
    tok = text.build_tokenizer(naming=True)
    docs = forked["mixed"] + forked["lookup"]
    rows = pretrain_lm.encode_corpus(docs, tok, 24)  # short rows: some documents are cut
    for doc, row in zip(docs, rows.tolist()):
        ids = ([tok.bos_token_id] + tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:24]
        assert row == ids + [tok.pad_token_id] * (24 - len(ids))
    assert (rows[:, -1] != tok.pad_token_id).any() and (rows[:, -1] == tok.pad_token_id).any()


def test_the_second_name_pool_occurs_in_no_pretraining_corpus():
    """Every corpus the reproduce LM draws from (mixed, naming in both writings, lookups, kept
    lookups), built with its config: the second pool's words never occur, the paper's names do."""
    from frozen_scale.eval.names import NONSENSE_NAMES, NOVEL_NAMES
    from frozen_scale.world.reproduce import load_reproduce_config

    cfg = load_reproduce_config(str(ROOT / "configs" / "tiny-cpu.yaml"), str(ROOT / "configs" / "reproduce-cpu.yaml"),
                                ["lm_pretrain.num_documents=3000"])
    built = pretrain_lm.build_corpora(cfg.lm_pretrain, 0, workers=1)
    docs = [d for corpus in built.values() if corpus for part in ([corpus] if isinstance(corpus[0], str) else corpus)
            for d in part]
    words = {w for d in docs for w in d.split()}
    assert len(docs) > 3000 and not words & set(NOVEL_NAMES) and set(NONSENSE_NAMES) <= words
    assert set(NOVEL_NAMES) <= set(text.build_tokenizer(naming=True).get_vocab())
