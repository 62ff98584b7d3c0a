"""A measurement script for the built-in world (docs/world.md): which text teaches the world's
tiny LM to look an object up by an arbitrary word, the match binding needs.

Trains a fresh rotary LM of the default's shape (4 x 128, Llama) on a chosen mixture of naming and
world documents (one per row from position 0, AdamW, one-cycle), and every `--every` steps
measures it on 200 held-out text episodes, the same ones `pretrain-lm` measures on, written six
ways: classification, binding as the evaluation asks it, binding with the query's objects named
after their shapes, that named query alone (no support), the names instead of the shapes (no
support), hop 1 alone ("what shape is the dax ?" after the support); and plain two-object lookups.
One JSON line per measurement; not a benchmark (no ratio), a record of what a mixture does.

    python bench/naming_lab.py --mix cls:0.25,world:0.25,swaplook:0.5 --steps 2000
    python bench/naming_lab.py --mix swaplook:0.5,world:0.5 --switch 1000 --then cls:0.3,bind:0.3,... --steps 2500
    python bench/naming_lab.py --mix swaplook:0.5,world:0.5 --switch-when swaplook:0.9 --then ... --every 250
    python bench/naming_lab.py --mix A --switch-when swaplook:0.9 --then B --switch-when hop1:0.95 --then C
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from frozen_scale.world import episodes, scenes, text
from frozen_scale.eval.names import NONSENSE_NAMES
from frozen_scale.world import lm_text_eval, pretrain_lm

PROBES = ("cls", "bind", "bindnamed", "namedlook", "swaplook", "hop1")


def named_query(ep: episodes.Episode) -> str:
    """The query's caption with each object's name after its shape ("a red square dax on the left ...")."""
    written = text.episode_text(ep, named_query=True)
    return next(p for p in written.split(" . ") if " on the left " in p) + " ."


def document(kind: str, rng: np.random.Generator, i: int, seed: int) -> str:
    """One training document of a kind: cls, bind, bindnamed, namedlook, swaplook, hop1, world, multi."""
    if kind == "cls":
        ways, shots = ((3, 2), (2, 3), (2, 2), (3, 1), (2, 1))[int(rng.integers(5))]
        return text.episode_text(episodes.classification(rng, ways, shots, NONSENSE_NAMES, split="train", index=i))
    if kind == "world":
        return text.document(scenes.make_scene(seed + 1000, "train", i), rng, 0.3)
    if kind == "multi":
        return text.multi_scene_document([scenes.make_scene(seed + 2000, "train", 3 * i + j) for j in range(3)], rng)
    ep = episodes.binding(rng, int(rng.integers(1, 3)), NONSENSE_NAMES, split="train", index=i)
    if kind == "bind":
        return text.episode_text(ep)
    if kind == "bindnamed":
        return text.episode_text(ep, named_query=True)
    if kind == "namedlook":  # no support: the objects named after their shapes, both asked by name
        return text.name_lookup_text(ep, rng, named_query(ep))
    if kind == "swaplook":  # no support: names instead of shapes, both asked by name
        return text.name_lookup_text(ep, rng)
    if kind == "hop1":
        return text.shape_question_text(ep)
    raise ValueError(f"unknown document kind '{kind}'")


def probe_prompts(seed: int, n: int = 200) -> dict[str, tuple[list[str], list[str]]]:
    """Each probe's (prompts, answers) on the held-out episodes `pretrain_lm.text_naming_accuracy` uses."""
    out = {k: ([], []) for k in PROBES}

    def add(kind, prompt, answer):
        out[kind][0].append(prompt)
        out[kind][1].append(answer)

    for i in range(n):
        ep = episodes.classification(np.random.default_rng([seed, 98, i]), 2, 1, NONSENSE_NAMES, index=i)
        written = text.episode_text(ep)
        add("cls", written[: written.rindex(f" {ep.answer} .")], ep.answer)
        ep = episodes.binding(np.random.default_rng([seed, 98, i]), 1, NONSENSE_NAMES, index=i)
        for kind, written in (("bind", text.episode_text(ep)), ("bindnamed", text.episode_text(ep, True))):
            add(kind, written[: written.rindex(f" {ep.answer} .")], ep.answer)
        add("namedlook", f"{named_query(ep)} {text.question_prompt(ep.question())}", ep.answer)
        add("swaplook", f"{text.name_lookup_query(ep)} {text.question_prompt(ep.question())}", ep.answer)
        written = text.shape_question_text(ep)
        shape = written.split()[-2]
        add("hop1", written[: written.rindex(f" {shape} .")], shape)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mix", default="cls:0.3,bind:0.3,world:0.4", help="kind:weight,... of the training documents")
    ap.add_argument("--then", action="append", default=[], help="a later mixture (same schedule); repeat for "
                    "a third, ...: each starts at --switch (the first only) or by its --switch-when")
    ap.add_argument("--switch", type=int, default=0, help="the step the first --then starts at (0: by --switch-when)")
    ap.add_argument("--switch-when", action="append", default=[], help="probe:level, one per --then in order: that "
                    "mixture starts after the first measurement at which the probe reaches the level (e.g. swaplook:0.9)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--embd", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--documents", type=int, default=40000)
    ap.add_argument("--probe-items", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    tok = text.build_tokenizer(naming=True)
    rng = np.random.default_rng([a.seed, 1])

    def corpus(spec: str) -> torch.Tensor:
        mix = [(k, float(v)) for k, v in (p.split(":") for p in spec.split(","))]
        kinds = rng.choice(len(mix), a.documents, p=np.array([w for _, w in mix]) / sum(w for _, w in mix))
        return pretrain_lm.encode_corpus([document(mix[k][0], rng, i, a.seed) for i, k in enumerate(kinds)], tok, a.seq)

    if len(a.switch_when) != max(len(a.then) - bool(a.switch), 0):
        ap.error("each --then needs a --switch-when (the first may use --switch instead), and no more")
    sources = [corpus(spec) for spec in [a.mix, *a.then]]
    whens = [w.split(":") for w in a.switch_when]
    if a.switch:  # the first later mixture by step; the others by their levels
        whens.insert(0, None)
    cfg = pretrain_lm.tiny_lm_config("llama", len(tok), a.layers, a.embd, a.heads, 144,
                                     tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    model = AutoModelForCausalLM.from_config(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(a.seed)
    probes = probe_prompts(a.seed, a.probe_items)
    t0, losses, phase = time.perf_counter(), [], 0  # phase: the index of the mixture drawn from
    model.train()
    for step in range(1, a.steps + 1):
        if a.switch and phase == 0 and step > a.switch and a.then:
            phase = 1
        source = sources[phase]
        ids = source[torch.randint(0, len(source), (64,), generator=gen)]
        losses.append(pretrain_lm.train_step(model, opt, sched, ids, tok.pad_token_id))
        if step % a.every == 0 or step == a.steps:
            model.eval()
            row = {"step": step, "loss": round(float(np.mean(losses[-50:])), 4),
                   "seconds": round(time.perf_counter() - t0)}
            for kind, (prompts, answers) in probes.items():
                row[kind] = lm_text_eval.first_word_accuracy(model, tok, prompts, answers)
            row["lookup"] = pretrain_lm.text_lookup_accuracy(model, tok, a.seed, n=a.probe_items)
            when = whens[phase] if phase < len(whens) else None
            if when and row[when[0]] >= float(when[1]):
                phase, row["switch"] = phase + 1, step
            row["mixture"] = "mix" if phase == 0 else "then" + (str(phase) if phase > 1 else "")
            print(json.dumps(row), flush=True)
            model.train()


if __name__ == "__main__":
    main()
