"""The main job (`make demo`): the registry table, a small hybrid LanguageModel prefilling and
decoding with its mixers' states (checked against re-running the whole sequence), then the quick
zoo: every registered causal mixer trained on MQAR, leaderboard and plot in runs/zoo_quick/."""

from __future__ import annotations

import torch


def run_demo():
    from rich.console import Console

    from attnzoo.bench.table import print_registry
    from attnzoo.models import LanguageModel

    console = Console()
    print_registry(2048, 512, 8)
    torch.manual_seed(0)
    pattern = "sliding_window*2+gated_softmax"
    lm = LanguageModel(vocab_size=64, d_model=64, n_layers=3, mixer=pattern,
                       mixer_kwargs={"sliding_window": {"window": 16}}).eval()
    prompt = torch.randint(0, 64, (2, 12))
    out = lm.generate(prompt, max_new_tokens=20, temperature=0)
    ref = prompt
    with torch.no_grad():
        for _ in range(20):
            ref = torch.cat([ref, lm(ref)[:, -1:].argmax(-1)], 1)
    console.print(f"\nhybrid LanguageModel {pattern!r}: {sum(p.numel() for p in lm.parameters())} parameters")
    console.print(f"prompt    {prompt[0].tolist()}")
    console.print(f"generated {out[0, 12:].tolist()}")
    console.print(f"decoding with states equals re-running the full sequence: {bool(torch.equal(out, ref))}")

    from attnzoo.bench.zoo import run_zoo
    from attnzoo.bench.zoo.presets import get_preset

    console.print("\nthe quick zoo (MQAR, every registered causal mixer): `attnzoo zoo --help` for more")
    run_zoo(preset=get_preset("quick"), out="runs/zoo_quick")
