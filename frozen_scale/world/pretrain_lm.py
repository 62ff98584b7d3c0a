"""`frozen-scale pretrain-lm`: step 1 of the paper on the built-in world.

A tiny causal LM (GPT-2, Llama, GPT-NeoX or OPT architecture) learns the world's text:
captions, copying a caption from context, and text-only question answering. Saved with
save_pretrained together with the world's tokenizer; afterwards it is frozen for good.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from frozen_scale.config import load_config
from frozen_scale.world.config import LMPretrainConfig
from frozen_scale.world import text

log = logging.getLogger("frozen_scale.pretrain_lm")

LOOKUP_EVERY = 250
"""Steps between the lookup phase's measurements of held-out name lookups (`lm_pretrain.lookup_steps`)."""

NAMING_LEARNED = 0.9
"""Text-only 2-way 1-shot classification at or above which the LM names in context (chance: 0.5).
The tiny LM learns it in a sudden phase change whose step varies between runs (docs/world.md)."""


def naming_warning(summary: dict) -> str | None:
    """The warning for an LM pretrained on naming documents that did not learn in-context naming,
    or None (also for an LM without naming)."""
    acc = summary.get("text_classification_accuracy")
    if acc is None or acc >= NAMING_LEARNED:
        return None
    return (f"the LM did not learn in-context naming (text-only 2-way 1-shot classification {acc:.3f}, "
            f"chance 0.5): its few-shot classification and binding cannot rise above chance; the naming "
            f"phase change comes at a step that varies between runs: rerun with a larger "
            f"lm_pretrain.naming_steps (or another world.seed)")


def tiny_lm_config(arch: str, vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int,
                   bos: int, eos: int, pad: int):
    """A transformers config for a small LM of the given architecture, dropout off."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    if arch == "gpt2":
        return tf.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if arch == "llama":
        return tf.LlamaConfig(num_hidden_layers=n_layer, hidden_size=n_embd, num_attention_heads=n_head,
                              num_key_value_heads=n_head, intermediate_size=4 * n_embd,
                              max_position_embeddings=n_positions, tie_word_embeddings=True, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(num_hidden_layers=n_layer, hidden_size=n_embd, num_attention_heads=n_head,
                                intermediate_size=4 * n_embd, max_position_embeddings=n_positions,
                                hidden_dropout=0.0, attention_dropout=0.0, **common)
    if arch == "opt":
        return tf.OPTConfig(num_hidden_layers=n_layer, hidden_size=n_embd, num_attention_heads=n_head,
                            ffn_dim=4 * n_embd, max_position_embeddings=n_positions, word_embed_proj_dim=n_embd,
                            dropout=0.0, attention_dropout=0.0, **common)
    raise ValueError(f"unknown LM architecture '{arch}'")




def positions(pc: LMPretrainConfig) -> int:
    """The LM's position table size (lm_pretrain.n_positions, default max(64, 2 * seq_len))."""
    return pc.n_positions or max(64, pc.seq_len * 2)


def uses_naming(pc: LMPretrainConfig) -> bool:
    """Whether the LM pretrains on naming documents (and so has their words in its vocabulary)."""
    return pc.naming_fraction > 0 or pc.naming_steps > 0 or pc.lookup_steps > 0 or pc.lookup_fraction > 0


def encode_corpus(docs: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """[N, seq_len] ids: bos + document + eos, right-padded (pad masked from the loss); the
    documents tokenized in one batched call."""
    rows = torch.full((len(docs), seq_len), tokenizer.pad_token_id, dtype=torch.long)
    for i, ids in enumerate(tokenizer(docs, add_special_tokens=False)["input_ids"]):
        ids = ([tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id])[:seq_len]
        rows[i, : len(ids)] = torch.tensor(ids)
    return rows


def _mixed_docs(pc: LMPretrainConfig, seed: int) -> list[str]:
    return text.corpus(seed, pc.num_documents, pc.copy_fraction, pc.naming_fraction, pc.seq_len,
                       pc.multi_scene_fraction, pc.naming_shape_questions, pc.multi_scene_scenes,
                       pc.mixed_query_names)


def _naming_docs(pc: LMPretrainConfig, seed: int) -> tuple[list[str], list[str]]:
    return text.naming_corpora(seed, pc.num_documents, pc.seq_len, pc.naming_shape_questions)


def _lookup_docs(pc: LMPretrainConfig, seed: int) -> list[str]:
    return text.lookup_corpus(seed, pc.num_documents, pc.copy_fraction)


def _kept_lookup_docs(pc: LMPretrainConfig, seed: int) -> list[str]:
    return text.name_lookup_corpus(seed + 1, pc.num_documents)


def build_corpora(pc: LMPretrainConfig, seed: int, workers: int | None = None) -> dict:
    """The documents of every corpus `pretrain` draws from: {"mixed", "naming" (plain, named),
    "lookup", "kept_lookups"}, each None when the config has no use for it. Every corpus is drawn
    on generators of its own, so they are built in up to `workers` forked processes (default: two,
    or one on a single core or inside a daemon process) with the same documents as one by one."""
    jobs = {"mixed": _mixed_docs}
    if pc.naming_steps:
        jobs["naming"] = _naming_docs
    if pc.lookup_steps:
        jobs["lookup"] = _lookup_docs
    if pc.lookup_fraction:
        jobs["kept_lookups"] = _kept_lookup_docs
    if workers is None:
        workers = min(2, os.cpu_count() or 1, len(jobs))
    if multiprocessing.current_process().daemon or "fork" not in multiprocessing.get_all_start_methods():
        workers = 1
    out = dict.fromkeys(("mixed", "naming", "lookup", "kept_lookups"))
    if workers <= 1:
        out.update({name: job(pc, seed) for name, job in jobs.items()})
        return out
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {name: pool.submit(job, pc, seed) for name, job in jobs.items()}
        out.update({name: future.result() for name, future in futures.items()})
    return out


def pack_corpus(docs: list[str], tokenizer, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """[N, seq_len] ids: the documents in a shuffled order, each after an end-of-text token, back
    to back and cut into rows; a document cut at a row's edge goes on in the next row. No padding:
    every kind of text lands at every position."""
    order = torch.randperm(len(docs), generator=generator).tolist()
    stream = []
    for ids in tokenizer([docs[i] for i in order], add_special_tokens=False)["input_ids"]:  # one batched call
        stream.append(tokenizer.bos_token_id)
        stream += ids
    rows = len(stream) // seq_len
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def pack_rows(ids: torch.Tensor, pad_id: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of right-padded rows, each one sequence, laid into fewer rows of `width` tokens
    (first fit, longest first): (ids, position_ids, labels). Positions restart at 0 for every
    sequence, which is how transformers tells packed sequences apart (attention stays within each;
    the attention mask must be None), and each sequence's first token is unlabelled, so the loss
    holds exactly the padded batch's predictions. A row's padding left after its sequences is one
    more sequence, unlabelled."""
    lengths = (ids != pad_id).sum(1).tolist()
    if max(lengths) > width:
        raise ValueError(f"a row of {max(lengths)} tokens does not fit in packed rows of {width}")
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        j = next((j for j, r in enumerate(room) if r >= lengths[i]), None)
        if j is None:
            bins.append([])
            room.append(width)
            j = len(bins) - 1
        bins[j].append(i)
        room[j] -= lengths[i]
    width = max(width - r for r in room)
    out = torch.full((len(bins), width), pad_id, dtype=ids.dtype)
    pos = torch.zeros((len(bins), width), dtype=torch.long)
    labels = torch.full((len(bins), width), -100, dtype=ids.dtype)
    for b, members in enumerate(bins):
        at = 0
        for i in members:
            n = lengths[i]
            out[b, at: at + n] = ids[i, :n]
            pos[b, at: at + n] = torch.arange(n)
            labels[b, at + 1: at + n] = ids[i, 1:n]
            at += n
        pos[b, at:] = torch.arange(width - at)
    return out, pos, labels


def train_step(model, opt, sched, ids: torch.Tensor, pad_id: int, pack_width: int = 0) -> float:
    """One step of next-token loss on a batch of rows (cut to its longest row, padding unlabelled);
    gradients clipped to norm 1. Returns the loss. pack_width > 0: the rows packed into rows of that
    many tokens (`pack_rows`): the same loss and gradient (up to float rounding) on fewer tokens."""
    if pack_width:
        packed, position_ids, labels = pack_rows(ids, pad_id, pack_width)
        loss = model(input_ids=packed, position_ids=position_ids, labels=labels, use_cache=False).loss
    else:
        ids = ids[:, : int((ids != pad_id).sum(1).max())]
        labels = ids.masked_fill(ids == pad_id, -100)
        loss = model(input_ids=ids, attention_mask=(ids != pad_id).long(), labels=labels).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return float(loss.detach())


@dataclass
class _Corpora:
    """The LM's training rows, encoded, and the generators of their draws."""

    mixed: torch.Tensor
    naming: torch.Tensor | None = None
    named: torch.Tensor | None = None  # the naming rows with their binding queries' objects named (row for row)
    named_gen: torch.Generator | None = None
    lookup: torch.Tensor | None = None
    kept_lookups: torch.Tensor | None = None  # name lookups kept in every batch after the lookup phase
    lookup_gen: torch.Generator | None = None


def _encoded_corpora(pc: LMPretrainConfig, tokenizer, seed: int) -> _Corpora:
    t_corpora = time.perf_counter()
    corpora = build_corpora(pc, seed)
    pack_gen = torch.Generator().manual_seed(seed + 1)

    def encode(documents, pack: bool):
        if pack:
            return pack_corpus(documents, tokenizer, pc.seq_len, pack_gen)
        return encode_corpus(documents, tokenizer, pc.seq_len)

    out = _Corpora(encode(corpora["mixed"], pc.pack in ("mixed", "all")))
    if pc.naming_steps:
        out.naming = encode(corpora["naming"][0], pc.pack == "all")
    if pc.naming_query_names:
        out.named = encode(corpora["naming"][1], False)
        out.named_gen = torch.Generator().manual_seed(seed + 2)  # its own draws: the batches' rows stay as without
    if pc.lookup_steps:
        out.lookup = encode_corpus(corpora["lookup"], tokenizer, pc.seq_len)
    if pc.lookup_fraction:
        out.kept_lookups = encode_corpus(corpora["kept_lookups"], tokenizer, pc.seq_len)
        out.lookup_gen = torch.Generator().manual_seed(seed + 3)
    log.info("LM corpora built and encoded in %.1f s", time.perf_counter() - t_corpora)
    return out


def _curriculum_batch(pc: LMPretrainConfig, data: _Corpora, k: int, gen: torch.Generator) -> torch.Tensor:
    """The rows of step `k` of the naming curriculum and the mixed corpus after it."""
    source = data.naming if k < pc.naming_steps else data.mixed
    rows = torch.randint(0, len(source), (pc.batch_size,), generator=gen)
    ids = source[rows]
    if data.named is not None and k < pc.naming_steps:
        named = torch.rand(pc.batch_size, generator=data.named_gen) < pc.naming_query_names * (1 - k / pc.naming_steps)
        ids = torch.where(named[:, None], data.named[rows], ids)
    if data.kept_lookups is not None:
        kept = torch.rand(pc.batch_size, generator=data.lookup_gen) < pc.lookup_fraction
        ids = torch.where(kept[:, None], data.kept_lookups[torch.randint(0, len(data.kept_lookups), (pc.batch_size,),
                                                                         generator=data.lookup_gen)], ids)
    return ids


def _lookup_phase_over(pc: LMPretrainConfig, model, tokenizer, seed: int, step: int) -> dict | None:
    """At a measurement step of the lookup phase: its summary when the phase ends here, else None."""
    if step == 0 or (step % LOOKUP_EVERY and step != pc.lookup_steps):
        return None
    model.eval()
    level = text_name_lookup_accuracy(model, tokenizer, seed)
    model.train()
    log.info("lookup phase, step %d: held-out name lookups %.3f (ends at %.2f)", step, level, pc.lookup_level)
    if level < pc.lookup_level and step != pc.lookup_steps:
        return None
    if level < pc.lookup_level:
        log.warning("the lookup phase ended after %d steps without lookups by names (%.3f < %.2f): binding is "
                    "not expected to rise; rerun with a larger lm_pretrain.lookup_steps", step, level, pc.lookup_level)
    return {"lookup_phase_steps": step, "text_name_lookup_after_lookup_phase": level}


def _after_naming(pc: LMPretrainConfig, model, tokenizer, seed: int) -> dict:
    """The naming curriculum's result, measured before the mixed corpus starts."""
    model.eval()
    measured = text_naming_accuracy(model, tokenizer, seed)
    after = {f"{k}_after_naming_steps": v for k, v in measured.items()}
    log.info("after the naming curriculum: %s", after)
    if naming_warning(measured):
        log.warning("the naming curriculum ended after %d steps without in-context naming (%s)", pc.naming_steps, after)
    model.train()
    return after


def pretrain(pc: LMPretrainConfig, out_dir: str, seed: int = 0, progress: bool = True) -> dict:
    """Train and save the LM + tokenizer into out_dir; returns a summary."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    naming = uses_naming(pc)
    tokenizer = text.build_tokenizer(naming=naming)
    data = _encoded_corpora(pc, tokenizer, seed)
    lm_cfg = tiny_lm_config(pc.arch, len(tokenizer), pc.n_layer, pc.n_embd, pc.n_head, positions(pc),
                            tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(lm_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=pc.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=pc.lr, total_steps=pc.steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    width = pc.seq_len if pc.pack_steps else 0  # packed rows (`pack_rows`), or the padded batch
    model.train()
    t0, losses = time.perf_counter(), []
    after_naming, lookup = {}, {}
    start = None if pc.lookup_steps else 0  # the step the naming curriculum starts at: after the lookup phase
    for step in tqdm(range(pc.steps + pc.continue_steps), desc="pretrain-lm", disable=not progress,
                     dynamic_ncols=True):
        if step == pc.steps:  # the continuation: a new one-cycle schedule on the mixed corpus
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=pc.continue_lr, total_steps=pc.continue_steps,
                                                        pct_start=0.05)
        if start is None:
            lookup = _lookup_phase_over(pc, model, tokenizer, seed, step) or {}
            start = step if lookup else None
        if start is None:
            ids = data.lookup[torch.randint(0, len(data.lookup), (pc.batch_size,), generator=gen)]
        else:
            if step - start == pc.naming_steps and pc.naming_steps > 0:
                after_naming = _after_naming(pc, model, tokenizer, seed)
            ids = _curriculum_batch(pc, data, step - start, gen)
        losses.append(train_step(model, opt, sched, ids, tokenizer.pad_token_id, width))
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    summary = _summary(pc, model, tokenizer, seed, losses, time.perf_counter() - t0, naming, after_naming, lookup)
    log.info("LM pretrained: %s", summary)
    warning = naming_warning(summary)
    if warning:
        log.warning(warning)
    return summary


def _summary(pc, model, tokenizer, seed: int, losses: list, seconds: float, naming: bool, after_naming: dict,
             lookup: dict) -> dict:
    summary = {"arch": pc.arch, "parameters": sum(p.numel() for p in model.parameters()),
               "final_loss": float(np.mean(losses[-20:])), "seconds": seconds,
               "text_qa_accuracy": text_qa_accuracy(model, tokenizer, seed),
               "text_qa_2shot_accuracy": text_qa_accuracy(model, tokenizer, seed, shots=2),
               "text_lookup_accuracy": text_lookup_accuracy(model, tokenizer, seed),
               "text_lookup_2shot_accuracy": text_lookup_accuracy(model, tokenizer, seed, shots=2)}
    if naming:
        summary.update(text_naming_accuracy(model, tokenizer, seed))
        summary["text_name_lookup_accuracy"] = text_name_lookup_accuracy(model, tokenizer, seed)
        summary.update(after_naming)
        summary.update(lookup)
    return summary


# the LM's text-only measurements (held-out QA, lookups, naming), imported from here too
from frozen_scale.world.lm_text_eval import (text_lookup_accuracy, text_name_lookup_accuracy,  # noqa: E402,F401
                                             text_naming_accuracy, text_qa_accuracy)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="frozen-scale pretrain-lm", description=__doc__)
    parser.add_argument("config", nargs="?", help="run config (its lm_pretrain section is used)")
    parser.add_argument("--out", required=True, help="folder to save the LM and tokenizer into")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    print(pretrain(cfg.lm_pretrain, args.out, seed=cfg.world.seed))
    return 0
