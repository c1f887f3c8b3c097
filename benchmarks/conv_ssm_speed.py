"""Speed of the conv/SSM ops and mixers on this machine (CPU by default, CUDA with --device cuda).

    .venv/bin/python benchmarks/conv_ssm_speed.py [--device cpu] [--threads 1]

Prints a table: FFT vs direct long convolution (where the crossover is), the chunked selective
scan vs the loop reference (forward + backward), and forward+backward of each mixer, and checks
that LanguageModel.generate runs with each mixer's decode state. Medians of a few repeats. On CPU
the times are process CPU time (robust when other jobs share the cores; with --threads 1 this is
the single-core time), on CUDA wall time after synchronising.
"""

from __future__ import annotations

import argparse

import torch

import attnzoo
from attnzoo.bench.timing import call_times, median
from attnzoo.models import LanguageModel
from attnzoo.ops.conv.long import fast_causal_conv
from attnzoo.ops.scan import selective_scan


def timeit(fn, reps=3, device="cpu"):
    """Median ms after one warm-up: process CPU time on CPU, wall time on CUDA (attnzoo.bench.timing)."""
    return 1e3 * median(call_times(fn, repeats=reps, device=device, clock="wall" if device == "cuda" else "cpu"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = a.device
    print(f"device={dev} threads={torch.get_num_threads()} torch={torch.__version__}")
    print("\nlong conv, B=4, C=256, kernel length = T (ms): T, direct(F.conv1d), fft")
    for T in (32, 64, 128, 256, 1024, 4096):
        x, k = torch.randn(4, T, 256, device=dev), torch.randn(256, T, device=dev)
        print(f"  {T:5d}  {timeit(lambda x=x, k=k: fast_causal_conv(x, k, fft=False), device=dev):9.2f}  "
              f"{timeit(lambda x=x, k=k: fast_causal_conv(x, k, fft=True), device=dev):9.2f}")
    print("\nselective scan fwd+bwd, B=2, D=256, N=16 (ms): T, reference loop, chunked torch")
    for T in (256, 1024):
        ins = [torch.randn(2, T, 256, device=dev), torch.rand(2, T, 256, device=dev) * 0.1,
               -torch.rand(256, 16, device=dev), torch.randn(2, T, 16, device=dev), torch.randn(2, T, 16, device=dev)]
        ins = [t.requires_grad_() for t in ins]

        def run(impl, ins=ins):
            y, _ = selective_scan(*ins, impl=impl)
            y.sum().backward()

        print(f"  {T:5d}  {timeit(lambda: run('reference'), 2, dev):9.1f}  {timeit(lambda: run('torch'), 2, dev):9.1f}")
    print("\nmixers fwd+bwd, B=2, T=512, d_model=128 (ms) | tokens/s decoding 64 tokens with LanguageModel")
    kw = {"base_conv": {"kernel_size": -1, "l_max": 512}, "h3": {"d_state": 64}, "mamba": {},
          "rwkv6": {"n_heads": 2}, "bi_mamba": {}, "bi_rwkv6": {"mixer_kwargs": {"n_heads": 2}}}
    for name, k in kw.items():
        m = attnzoo.build(name, d_model=128, **k).to(dev)
        x = torch.randn(2, 512, 128, device=dev, requires_grad=True)
        ms = timeit(lambda m=m, x=x: m(x).sum().backward(), 2, dev)
        tps = "-"
        if attnzoo.get_card(name).decode:
            lm = LanguageModel(vocab_size=64, d_model=128, n_layers=2, mixer=name,
                                              mixer_kwargs={name: k}).to(dev).eval()
            prompt = torch.randint(0, 64, (1, 16), device=dev)
            with torch.no_grad():
                t = timeit(lambda lm=lm, prompt=prompt: lm.generate(prompt, max_new_tokens=64), 1, dev)
            tps = f"{64 / (t / 1e3):.0f}"
        print(f"  {name:10s} {ms:9.1f}  {tps}")


if __name__ == "__main__":
    main()
