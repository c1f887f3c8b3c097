"""Partial attention LM vs a plain causal LM on a seq2seq task laid out as [source ; SEP ; target].

Task: source = 8 random symbols, target = the source reversed. Both models are 2-layer
LanguageModels trained with the loss on the target tokens only; one uses causal softmax attention,
the other the partial attention mixer (prefix-LM over source+SEP plus an attention over the source
only). Prints the target token accuracy of each and, for the first layer, the self-attention mass
on the prefix at each generation step (Fu et al. 2023's attention degeneration).

    python examples/partial_attention_reverse.py            # ~30-60 s on a 2-core CPU
    python examples/partial_attention_reverse.py --small    # a few seconds (smoke test)
"""

from __future__ import annotations

import time

import torch

from _common import example_args, fit, report
from attnzoo.analysis.prefix_mass import prefix_mass_per_step
from attnzoo.models.lm import LanguageModel

VOCAB, SEP = 17, 16


def make_batch(batch: int, n: int, generator: torch.Generator):
    src = torch.randint(0, SEP, (batch, n), generator=generator)
    ids = torch.cat([src, torch.full((batch, 1), SEP), src.flip(1)], 1)
    return ids


def train(mixer: str, n: int, steps: int, batch: int, seed: int):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    kwargs = {"partial_attention": {"n_heads": 4, "prefix_len": n + 1}, "softmax": {"n_heads": 4}}
    lm = LanguageModel(VOCAB, 64, 2, mixer=mixer, mixer_kwargs={mixer: kwargs[mixer]})

    def loss_fn(ids):
        logits = lm(ids[:, :-1])[:, n:]  # predictions for the target tokens
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, n + 1:].reshape(-1))

    fit(lm, lambda: make_batch(batch, n, g), loss_fn, steps=steps, lr=3e-3, optimizer="adamw", weight_decay=0.0)
    ids = make_batch(256, n, torch.Generator().manual_seed(1234))
    with torch.no_grad():
        acc = (lm(ids[:, :-1])[:, n:].argmax(-1) == ids[:, n + 1:]).float().mean().item()
        block = lm.blocks[0]
        x = block.norm1(lm.embed(ids[:64, :-1]))
        mass = prefix_mass_per_step(block.mixer, x, prefix_len=n + 1)
    return acc, mass


def main(argv=None) -> dict:
    args = example_args(__doc__, argv, default_steps=400, small_steps=5)
    n, batch = (4, 8) if args.small else (8, 32)
    t0 = time.time()
    out = {}
    for mixer in ("softmax", "partial_attention"):
        acc, mass = train(mixer, n, args.steps, batch, args.seed)
        out[mixer] = acc
        steps_txt = " ".join(f"{m:.2f}" for m in mass.tolist())
        print(f"  {mixer:18s} target accuracy {acc:.3f}; layer-1 attention mass on the prefix per step: {steps_txt}")
    learned = out["partial_attention"] > 0.9
    report("partial_attention_reverse", steps=args.steps, t0=t0, each=True, result=f"accuracy softmax "
           f"{out['softmax']:.3f}, partial_attention {out['partial_attention']:.3f}", learned=learned)
    return {"accuracy": out["partial_attention"], "softmax_accuracy": out["softmax"], "learned": learned}

if __name__ == "__main__":
    main()
