"""FrozenVLM without DeepSpeed: encoders, the frozen HF backbone mode, interleaving, loss masking,
activation checkpointing."""

from __future__ import annotations

import pytest
import torch

from frozen_scale.config import ModelConfig, VisionConfig
from frozen_scale.data import prompts
from frozen_scale.model.frozen_vlm import FrozenVLM
from frozen_scale.model.lm import load_lm, load_tokenizer
from tests.support.core_fixtures import FixedVectors


def build(tiny_lm_dir, **model_kw) -> FrozenVLM:
    torch.manual_seed(0)
    vision = model_kw.pop("vision", VisionConfig(image_size=16, resnet_widths=[8, 16]))
    model_kw.setdefault("prefix_length", 2)
    cfg = ModelConfig(lm_path=str(tiny_lm_dir), vision=vision, **model_kw)
    return FrozenVLM(cfg, load_lm(str(tiny_lm_dir)))


def batch_for(tok, k, texts, n_images=1, image_size=16):
    enc = []
    for t in texts:
        segs = []
        for _ in range(n_images):
            segs += [prompts.Image(), prompts.Text("caption :")]
        enc.append(prompts.encode(segs + [prompts.Text(t, target=True)], tok, k))
    b = prompts.pad_batch(enc, tok.pad_token_id)
    b["pixel_values"] = torch.randn(len(texts), n_images, 3, image_size, image_size)
    return b


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_encoders_train_and_lm_gets_no_gradient(kind, tiny_lm_dir):
    vision = VisionConfig(kind=kind, image_size=16, resnet_widths=[8, 16], vit_patch_size=4, vit_dim=32,
                          vit_depth=2, vit_heads=2)
    model = build(tiny_lm_dir, vision=vision).train()
    tok = load_tokenizer(str(tiny_lm_dir))
    b = batch_for(tok, 2, ["a big red circle", "a small blue square"])
    loss = model(b["pixel_values"], b["input_ids"], b["attention_mask"], b["labels"])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.lm.parameters())
    assert all(p.grad is not None for p in model.vision.parameters())
    assert not model.lm.training and model.vision.training


def test_frozen_pretrained_backbone_mode_trains_only_the_mapper(tmp_path, tiny_lm_dir):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(str(tmp_path / "vit"))
    model = build(tiny_lm_dir, vision=VisionConfig(kind="hf_frozen", image_size=16,
                                                   pretrained_path=str(tmp_path / "vit"))).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("prefix.") for n in trainable)
    assert not model.vision.backbone.training
    tok = load_tokenizer(str(tiny_lm_dir))
    b = batch_for(tok, 2, ["a big red circle"])
    model(b["pixel_values"], b["input_ids"], b["attention_mask"], b["labels"]).backward()
    assert all(p.grad is None for p in model.vision.parameters())


def test_loss_covers_target_tokens_only(tiny_lm_dir):
    model = build(tiny_lm_dir).eval()
    tok = load_tokenizer(str(tiny_lm_dir))
    b = batch_for(tok, 2, ["a big red circle"])
    logits = model(b["pixel_values"], b["input_ids"], b["attention_mask"])
    targets = b["labels"][0, 1:]
    mask = targets != prompts.IGNORE
    expected = torch.nn.functional.cross_entropy(logits[0, :-1][mask], targets[mask])
    got = model(b["pixel_values"], b["input_ids"], b["attention_mask"], b["labels"])
    assert torch.allclose(got, expected, atol=1e-6)
    n_target = len(tok("a big red circle", add_special_tokens=False)["input_ids"]) + 1  # + eos
    assert int(mask.sum()) == n_target


def test_interleaved_images_fill_their_own_slots_and_generate(tiny_lm_dir):
    model = build(tiny_lm_dir).eval()
    tok = load_tokenizer(str(tiny_lm_dir))
    b = batch_for(tok, 2, ["a big red circle"], n_images=2)
    embeds = model.embed(b["input_ids"], b["pixel_values"])
    prefix = model.image_prefix(b["pixel_values"][0])
    slots = (b["input_ids"][0] == prompts.IMAGE_TOKEN).nonzero().flatten().tolist()
    assert len(slots) == 4
    assert torch.allclose(embeds[0, slots[:2]], prefix[0]) and torch.allclose(embeds[0, slots[2:]], prefix[1])
    with pytest.raises(ValueError, match="image slots"):
        model.embed(b["input_ids"], b["pixel_values"][:, :1])
    out = model.generate(b["pixel_values"], b["input_ids"], b["attention_mask"], max_new_tokens=3,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    beams = model.generate(b["pixel_values"], b["input_ids"], b["attention_mask"], max_new_tokens=3, num_beams=2,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 3 and beams.shape[0] == 1


def test_activation_checkpointing_same_loss_and_grads_lm_stays_eval(tiny_lm_dir):
    tok = load_tokenizer(str(tiny_lm_dir))
    b = batch_for(tok, 2, ["a big red circle", "a small green square"])
    results = []
    for ckpt in (False, True):
        model = build(tiny_lm_dir, activation_checkpointing=ckpt).train()
        calls = []
        layer = model.lm.transformer.h[0].attn  # inside the checkpointed forward
        layer.register_forward_hook(lambda *_: calls.append(1))
        loss = model(b["pixel_values"], b["input_ids"], b["attention_mask"], b["labels"])
        loss.backward()
        assert len(calls) == (2 if ckpt else 1)  # checkpointed layers run again in backward
        results.append((loss.detach(), [p.grad.clone() for p in model.prefix.parameters()]))
        dropouts = [m for m in model.lm.modules() if isinstance(m, torch.nn.Dropout)]
        assert all(not m.training for m in dropouts)
        if ckpt:
            assert model._checkpointed_layers == 2
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    for g0, g1 in zip(results[0][1], results[1][1]):
        assert torch.allclose(g0, g1, atol=1e-6)


def test_loader_collate_matches_the_generic_layout(tiny_lm_dir, tiny_shards):
    from frozen_scale.data.loader import CaptionStream
    from frozen_scale.data.shards import list_shards

    tok = load_tokenizer(str(tiny_lm_dir))
    ds = CaptionStream(list_shards(str(tiny_shards)), tok, k=2, image_size=16, batch_size=2, seed=0, rank=0,
                       world_size=1, prompt="caption :", max_text_len=5)
    items = [(torch.zeros(3, 16, 16), "a big red circle on the left", "k1"), (torch.zeros(3, 16, 16), "a small cat", "k2")]
    fast = ds.collate(items)
    generic = prompts.pad_batch([prompts.encode([prompts.Image(), prompts.Text("caption :"),
                                                 prompts.Text(" " + cap, target=True)], tok, 2, max_target_tokens=5)
                                 for _, cap, _ in items], tok.pad_token_id)
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(fast[key], generic[key]), key


def test_forward_logits_do_not_depend_on_left_padding(tiny_lm_dir):
    model = build(tiny_lm_dir).eval()
    tok = load_tokenizer(str(tiny_lm_dir))
    enc = [prompts.encode([prompts.Image(), prompts.Text("caption : a big red circle on the left")], tok, 2),
           prompts.encode([prompts.Image(), prompts.Text("caption :")], tok, 2)]
    both = prompts.pad_batch(enc, tok.pad_token_id, left=True)
    alone = prompts.pad_batch(enc[1:], tok.pad_token_id, left=True)
    pix = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = model(pix, both["input_ids"], both["attention_mask"])[1, -1]
        b = model(pix[1:], alone["input_ids"], alone["attention_mask"])[0, -1]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _interleaved_stream(tok, shards, **kw):
    from frozen_scale.data.loader import CaptionStream
    from frozen_scale.data.shards import list_shards

    return CaptionStream(list_shards(str(shards)), tok, k=2, image_size=16, batch_size=6, seed=0, rank=0,
                         world_size=1, prompt="caption :", max_text_len=8, **kw)


def test_interleaved_collation_puts_each_image_where_its_caption_follows(tiny_lm_dir, tiny_shards):
    tok = load_tokenizer(str(tiny_lm_dir))
    ds = _interleaved_stream(tok, tiny_shards, images_per_sequence=3)
    caps = ["a big red circle", "a small cat", "a red circle", "a blue square", "a cat", "a big blue square"]
    items = [(torch.full((3, 16, 16), float(i)), cap, f"k{i}") for i, cap in enumerate(caps)]
    batch = ds.collate(items)
    assert batch is not None and batch["pixel_values"].shape[0] == 6 and batch["input_ids"].shape[0] < 6
    order = [int(v) for v in batch["pixel_values"][:, 0, 0, 0]]
    assert sorted(order) == list(range(6)) and batch["keys"] == [f"k{i}" for i in order]
    images = iter(order)
    prompt_ids = tok("caption :", add_special_tokens=False)["input_ids"]
    period = tok(" .", add_special_tokens=False)["input_ids"]
    for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                 batch["attention_mask"].tolist()):
        n = sum(mask)
        ids, labels = ids[:n], labels[:n]
        assert ids[0] == tok.bos_token_id and labels[0] == prompts.IGNORE
        starts = [j for j in range(1, n) if ids[j] == prompts.IMAGE_TOKEN and ids[j - 1] != prompts.IMAGE_TOKEN]
        assert starts and starts[0] == 1  # no text before the first image unless asked for
        for s, e in zip(starts, starts[1:] + [n]):
            assert ids[s:s + 2] == [prompts.IMAGE_TOKEN] * 2 and labels[s:s + 2 + len(prompt_ids)] == [prompts.IGNORE] * 4
            assert ids[s + 2:s + 2 + len(prompt_ids)] == prompt_ids
            target = ids[s + 2 + len(prompt_ids):e]
            assert labels[s + 2 + len(prompt_ids):e] == target  # loss on every caption, nothing else
            cap_ids = tok(" " + caps[next(images)], add_special_tokens=False)["input_ids"]
            end = [tok.eos_token_id] if e == n else period
            assert target == (cap_ids + end)[:8]
    assert next(images, None) is None
    assert torch.equal(ds.collate(items)["input_ids"], batch["input_ids"])  # rebuilt the same (resume)


def test_text_before_image_shifts_the_image_and_is_masked(tiny_lm_dir, tiny_shards):
    tok = load_tokenizer(str(tiny_lm_dir))
    ds = _interleaved_stream(tok, tiny_shards, text_before_image=3)
    items = [(torch.zeros(3, 16, 16), f"a {c} circle", f"k{i}") for i, c in enumerate(["red", "blue", "green"] * 2)]
    batch = ds.collate(items)
    assert batch["input_ids"].shape[0] == 6 and batch["pixel_values"].shape[0] == 6
    firsts = [row.index(prompts.IMAGE_TOKEN) for row in batch["input_ids"].tolist()]
    assert max(firsts) > 1  # some images start after written captions
    for row, labels, first in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), firsts):
        assert row.count(prompts.IMAGE_TOKEN) == 2 and all(x == prompts.IGNORE for x in labels[:first + 2])
        written = tok.decode(row[1:first])
        assert all(w.strip() == "" or w.strip().endswith("circle") for w in written.split(" ."))


def test_interleaved_sequences_train_through_the_model(tiny_lm_dir, tiny_shards):
    tok = load_tokenizer(str(tiny_lm_dir))
    ds = _interleaved_stream(tok, tiny_shards, images_per_sequence=3, text_before_image=2)
    model = build(tiny_lm_dir)
    items = [(torch.randn(3, 16, 16), "a red circle", f"k{i}") for i in range(6)]
    batch = ds.collate(items)
    loss = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"])
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in model.vision.parameters())


def test_probes_run_on_a_model_and_a_shift_changes_a_gpt2_prefix(tiny_lm_dir):
    from frozen_scale.world import probes

    model = build(tiny_lm_dir).eval()
    tok = load_tokenizer(str(tiny_lm_dir))
    out = probes.run_probes(model, tok, seed=0, n=2, batch_size=2)
    assert set(out["episodes"]) == {f"{k}-{w}" for k in ("classification", "binding") for w in probes.WRITTEN}
    assert all(0.0 <= v["accuracy"] <= 1.0 and v["n"] == 2 for v in out["episodes"].values())
    for key, places in (("caption_at_offset", probes.OFFSETS), ("caption_after_text", probes.TEXT_BEFORE)):
        assert set(out[key]) == {"image", "written"} and set(out[key]["image"]) == set(places)
    # learned absolute positions: the same prefix at shifted position ids gives other logits
    enc = prompts.pad_batch([prompts.encode([prompts.Image(), prompts.Text("caption :")], tok, 2)], tok.pad_token_id)
    embeds = model.embed(enc["input_ids"], torch.randn(1, 3, 16, 16))
    logits = [model.lm(inputs_embeds=embeds, position_ids=torch.arange(embeds.shape[1])[None] + s).logits
              for s in (0, 8)]
    assert not torch.allclose(logits[0], logits[1])


def test_position_shift_is_drawn_from_the_keys_and_moves_the_position_ids(tiny_lm_dir, tiny_shards):
    tok = load_tokenizer(str(tiny_lm_dir))
    ds = _interleaved_stream(tok, tiny_shards, position_shift=20)
    items = [(torch.randn(3, 16, 16), "a red circle", f"k{i}") for i in range(6)]
    batch = ds.collate(items)
    shift = batch["position_shift"]
    assert shift.shape == (6,) and int(shift.min()) >= 0 and int(shift.max()) <= 20 and len(set(shift.tolist())) > 1
    assert torch.equal(ds.collate(items)["position_shift"], shift)  # rebuilt the same (exact resume)
    assert "position_shift" not in _interleaved_stream(tok, tiny_shards).collate(items)  # off by default
    model = build(tiny_lm_dir).eval()
    args = (batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        shifted = model(*args, position_shift=shift)
        embeds = model.embed(batch["input_ids"], batch["pixel_values"])
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0) + shift[:, None]
        by_hand = model.lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=positions).logits
        plain = model(*args)
    torch.testing.assert_close(shifted, by_hand)
    assert not torch.allclose(shifted, plain)


def test_position_shift_past_the_lms_positions_is_refused_before_training():
    from types import SimpleNamespace

    from frozen_scale.config import ConfigError, FrozenConfig
    from frozen_scale.train.trainer import Trainer

    trainer = Trainer.__new__(Trainer)  # only the check: no model, no engine
    trainer.cfg = FrozenConfig()
    trainer.cfg.data.position_shift = 100
    with pytest.raises(ConfigError, match="position_shift=100"):
        trainer._check_positions(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=128)))
    trainer._check_positions(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=1024)))
    trainer.cfg.data.position_shift = 0
    trainer._check_positions(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=8)))


def test_lexical_prefix_is_a_mixture_of_the_lms_token_embeddings(tiny_lm_dir):
    """model.prefix_kind=lexical: every prefix vector is weights @ the LM's embedding table, with
    weights a distribution over the vocabulary that gives special tokens nothing; only the mapper
    and the encoder train."""
    model = build(tiny_lm_dir, prefix_kind="lexical").train()
    tok = load_tokenizer(str(tiny_lm_dir))
    pixels = torch.randn(3, 3, 16, 16)
    emb = model.lm.get_input_embeddings()
    weights = model.prefix.token_weights(model.vision(pixels), emb)
    table = emb.weight
    assert weights.shape == (3, 2, table.shape[0])
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2))
    for special in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
        assert float(weights[..., special].max()) == 0.0
    torch.testing.assert_close(model.image_prefix(pixels), weights @ table)
    b = batch_for(tok, 2, ["a big red circle", "a small blue square"])
    loss = model(b["pixel_values"], b["input_ids"], b["attention_mask"], b["labels"])
    loss.backward()
    assert all(p.grad is None for p in model.lm.parameters())
    assert all(p.grad is not None for p in model.prefix.parameters())
    assert all(p.grad is not None for p in model.vision.parameters())


def test_hard_lexical_prefix_writes_exactly_the_nearest_tokens(tiny_lm_dir):
    """lexical_hard: each slot is exactly the embedding of the token most similar (cosine) to its
    free vector, and the gradient reaches the free vector straight through."""
    model = build(tiny_lm_dir, prefix_kind="lexical_hard").train()
    tok = load_tokenizer(str(tiny_lm_dir))
    table = model.lm.get_input_embeddings().weight.detach()
    words = tok.convert_tokens_to_ids(["red", "circle"])
    model.prefix.free = FixedVectors(table[words] + 0.01 * torch.randn(2, table.shape[1]))
    pixels = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(model.image_prefix(pixels), table[words].expand(3, 2, -1), rtol=0, atol=0)
    weights = model.prefix.token_weights(model.vision(pixels), model.lm.get_input_embeddings())
    assert weights.argmax(-1).tolist() == [words] * 3
    b = batch_for(tok, 2, ["a big red circle", "a small blue square"])
    model(b["pixel_values"], b["input_ids"], b["attention_mask"], b["labels"]).backward()
    assert model.prefix.free.rows.grad is not None and float(model.prefix.free.rows.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.lm.parameters())


def _word_model(tiny_lm_dir, tok, words: list[str], k: int = 6) -> FrozenVLM:
    """A word prefix (k slots) whose free vectors point at `words`, then blanks (the pad token)."""
    model = build(tiny_lm_dir, prefix_kind="words", prefix_length=k).eval()
    table = model.lm.get_input_embeddings().weight.detach()
    ids = tok.convert_tokens_to_ids(words) + [tok.pad_token_id] * (k - len(words))
    model.prefix.free = FixedVectors(table[ids] + 0.01 * torch.randn(k, table.shape[1]))
    return model


def test_word_prefix_is_read_exactly_as_the_same_words_written(tiny_lm_dir):
    """model.prefix_kind=words: an image whose slots write "a red circle ." and two blanks gives the
    LM's very logits of the text "a red circle ." in its place (blanks masked out of attention and
    positions), in training's forward and in generation."""
    tok = load_tokenizer(str(tiny_lm_dir))
    words = ["a", "red", "circle", "."]
    model = _word_model(tiny_lm_dir, tok, words)
    shown = prompts.encode([prompts.Text("a blue square ."), prompts.Image(), prompts.Text("caption :")], tok, 6)
    written = prompts.encode([prompts.Text("a blue square . a red circle . caption :")], tok, 6)
    pixels = torch.randn(1, 3, 16, 16)
    batch = prompts.pad_batch([shown], tok.pad_token_id)
    with torch.no_grad():
        logits = model(pixels, batch["input_ids"], batch["attention_mask"])
        text_ids = torch.tensor([written.input_ids])
        reference = model.lm(input_ids=text_ids, attention_mask=torch.ones_like(text_ids)).logits
    keep = [i for i, t in enumerate(shown.input_ids) if t != prompts.IMAGE_TOKEN]
    keep[5:5] = [5, 6, 7, 8]  # the four written slots, where the blanks are not
    keep = sorted(keep)
    torch.testing.assert_close(logits[0, keep], reference[0], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        new = model.generate(pixels, batch["input_ids"], batch["attention_mask"], max_new_tokens=5,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        ref = model.lm.generate(input_ids=text_ids, attention_mask=torch.ones_like(text_ids), max_new_tokens=5,
                                do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert new[0].tolist() == ref[0, text_ids.shape[1]:].tolist()


def test_word_prefix_slot_loss_trains_the_writer_towards_the_captions_words(tiny_lm_dir, tiny_shards):
    """The loader gives each image its caption's words ("a red circle ." then pad) as the word
    prefix's slot targets; the slot loss adds their cross-entropy to the caption loss, its gradient
    reaches the vision side and not the LM, and a few steps of it make the slots write them."""
    from frozen_scale.data.loader import CaptionStream
    from frozen_scale.data.shards import list_shards

    tok = load_tokenizer(str(tiny_lm_dir))
    stream = CaptionStream(list_shards(str(tiny_shards)), tok, k=14, image_size=16, batch_size=8, seed=0, rank=0,
                           world_size=1, prompt="caption :", prefix_targets=True)
    batch = next(iter(stream))
    targets = batch["prefix_targets"]
    assert targets.shape == (8, 14)
    for caption, row in zip(batch["captions"], targets.tolist()):
        assert tok.decode([t for t in row if t != tok.pad_token_id]) == f"{caption} ."
    model = build(tiny_lm_dir, prefix_kind="words", prefix_length=14).train()
    args = (batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"])
    caption_loss = model(*args)
    with_slots = model(*args, prefix_targets=targets)
    assert float(with_slots.detach()) > float(caption_loss.detach())
    with_slots.backward()
    assert all(p.grad is None for p in model.lm.parameters())
    assert float(model.prefix.free.proj[0].weight.grad.abs().sum()) > 0
    model.cfg.prefix_target_weight = 0.0
    torch.testing.assert_close(model(*args, prefix_targets=targets), caption_loss)
    model.cfg.prefix_target_weight = 1.0
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        model(*args, prefix_targets=targets).backward()
        opt.step()
    with torch.no_grad():
        _, written, _ = model.prefix.write(model.vision(batch["pixel_values"]), model.lm.get_input_embeddings())
    assert float((written == targets).float().mean()) > 0.9


def test_word_prefix_needs_a_pad_token(tiny_lm_dir):
    from frozen_scale.config import InputError

    lm = load_lm(str(tiny_lm_dir))
    lm.config.pad_token_id = None
    cfg = ModelConfig(lm_path=str(tiny_lm_dir), prefix_length=4, prefix_kind="words",
                      vision=VisionConfig(image_size=16, resnet_widths=[8, 16]))
    with pytest.raises(InputError, match="pad_token_id"):
        FrozenVLM(cfg, lm)
