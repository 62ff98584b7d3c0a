"""LM pretraining step: each step's rows packed (`lm_pretrain.pack_steps`) against the padded batch.

    python bench/lm_packing.py [--quick] [--rounds N] [--threads T]

Both run `pretrain_lm.train_step` on the same batches (the world's mixed corpus as
configs/reproduce-cpu.yaml writes it, 64 rows of up to 96 tokens, drawn once) from the same
initial weights (the reproduce LM's shape: rotary, 4 x 128), alternating A B A B; the ratio is the
median of per-round ratios of this process's CPU time. The padded batch is cut to its longest row;
the packed one lays the rows into as few rows of 96 as hold them (`pretrain_lm.pack_rows`). Same
math: the first step's losses and gradients of the two are printed side by side.
Prints the ratio (packed / padded) last. Goal: < 1 (fewer tokens computed, nothing else changed).
"""

from __future__ import annotations


import common  # the shared runner; picks the CPU accelerator
from common import add_thread_arg, alternate, machine, median, paired_ratios, quiet_logs, set_threads


def main() -> None:
    parser = common.parser(__doc__, "--quick", "smoke size: 2 layers x 32, 1000 documents")
    parser.add_argument("--rounds", type=int, default=0, help="A/B rounds (default 10, 3 with --quick)")
    parser.add_argument("--steps-per-round", type=int, default=5)
    add_thread_arg(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    quiet_logs()
    import torch
    from transformers import AutoModelForCausalLM

    from frozen_scale.world.reproduce import load_reproduce_config
    from frozen_scale.world import text
    from frozen_scale.world import pretrain_lm

    shape = ["lm_pretrain.n_layer=2", "lm_pretrain.n_embd=32", "lm_pretrain.n_head=2"] if args.quick else []
    pc = load_reproduce_config(str(common.REPO / "configs" / "tiny-cpu.yaml"),
                               str(common.REPO / "configs" / "reproduce-cpu.yaml"), shape).lm_pretrain
    num_docs = 1000 if args.quick else 5000
    tok = text.build_tokenizer(naming=True)
    docs = text.corpus(0, num_docs, pc.copy_fraction, pc.naming_fraction, pc.seq_len, pc.multi_scene_fraction,
                       pc.naming_shape_questions, pc.multi_scene_scenes, pc.mixed_query_names)
    data = pretrain_lm.encode_corpus(docs, tok, pc.seq_len)
    pad = tok.pad_token_id
    rounds = args.rounds or (3 if args.quick else 10)
    gen = torch.Generator().manual_seed(0)
    batches = [data[torch.randint(0, len(data), (pc.batch_size,), generator=gen)]
               for _ in range(args.steps_per_round)]

    def lm():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(pretrain_lm.tiny_lm_config(
            pc.arch, len(tok), pc.n_layer, pc.n_embd, pc.n_head, pretrain_lm.positions(pc), tok.bos_token_id,
            tok.eos_token_id, pad)).train()

    first = batches[0]
    model = lm()
    cut = first[:, : int((first != pad).sum(1).max())]
    padded_loss = model(input_ids=cut, attention_mask=(cut != pad).long(), labels=cut.masked_fill(cut == pad, -100)).loss
    padded_grads = torch.autograd.grad(padded_loss, list(model.parameters()))
    packed, position_ids, labels = pretrain_lm.pack_rows(first, pad, pc.seq_len)
    packed_loss = model(input_ids=packed, position_ids=position_ids, labels=labels, use_cache=False).loss
    packed_grads = torch.autograd.grad(packed_loss, list(model.parameters()))
    drift = max(float((a - b).abs().max()) for a, b in zip(padded_grads, packed_grads))
    tokens = int((first != pad).sum())
    print(f"machine: {machine()}; LM {pc.arch} {pc.n_layer} x {pc.n_embd}, {sum(p.numel() for p in model.parameters()):,} "
          f"parameters; {pc.batch_size} rows of up to {pc.seq_len} tokens, {rounds} rounds x {args.steps_per_round} steps")
    print(f"first batch: {tokens} tokens; padded {tuple(cut.shape)} = {cut.numel()}, packed {tuple(packed.shape)} = "
          f"{packed.numel()}")
    print(f"first batch loss: padded {padded_loss.item():.6f}, packed {packed_loss.item():.6f}; "
          f"largest gradient difference {drift:.2e}")

    def stepper(width: int):
        model = lm()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

        def run():
            for ids in batches:
                pretrain_lm.train_step(model, opt, sched, ids, pad, width)
        return run

    times = alternate({"padded": stepper(0), "packed": stepper(pc.seq_len)}, rounds)
    for name in times:
        print(f"{name}: {median(times[name]['cpu']) / args.steps_per_round:.3f} cpu s/step, "
              f"{median(times[name]['wall']) / args.steps_per_round:.3f} wall s/step")
    wall = median(paired_ratios(times, 'packed', 'padded', 'wall'))
    print(f"wall ratio: {wall:.3f}")
    common.report(args, "lm_packing", median(paired_ratios(times, "packed", "padded")), "packed / padded, cpu",
                  goal=1.0, extra={"wall_ratio": wall})


if __name__ == "__main__":
    common.run_main(main)
