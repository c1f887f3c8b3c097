"""CUDA check for the conv/SSM/RWKV mixers (run on a GPU machine; CI never runs it).

    PYTHONPATH=. python3 benchmarks/conv_ssm_cuda_check.py

For each mixer: the same weights on CPU float64 and CUDA float32 give the same outputs; on CUDA,
token-by-token decoding equals the whole-sequence run; rwkv6 at a Triton-sized head (64) with
impl="auto" (Triton GLA on CUDA when supported) equals impl="reference".
"""

from __future__ import annotations

import torch

import attnzoo


def rel(a, b):
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm().clamp_min(1e-12)).item()


def main():
    dev = "cuda"
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    torch.manual_seed(0)
    for name in ("base_conv", "h3", "mamba", "rwkv6", "bi_rwkv6", "bi_mamba"):
        card = attnzoo.get_card(name)
        m64 = attnzoo.build(name, d_model=32, **card.example_kwargs).double().eval()
        m32 = attnzoo.build(name, d_model=32, **card.example_kwargs).to(dev).float().eval()
        m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
        x = torch.randn(2, 100, 32, dtype=torch.float64)
        mask = torch.ones(2, 100, dtype=torch.bool)
        mask[0, :9] = False
        with torch.no_grad():
            e_full = rel(m32(x.float().to(dev)), m64(x))
            e_mask = rel(m32(x.float().to(dev), mask=mask.to(dev))[mask.to(dev)], m64(x, mask=mask)[mask])
            e_dec = float("nan")
            if card.decode:
                xs = x.float().to(dev)
                full = m32(xs)
                ys, s = [], None
                for t in range(100):
                    y, s = m32(xs[:, t : t + 1], state=s, return_state=True)
                    ys.append(y)
                e_dec = rel(torch.cat(ys, 1), full)
        print(f"{name:10s} cuda fp32 vs cpu fp64: {e_full:.2e}  masked: {e_mask:.2e}  decode vs full: {e_dec:.2e}")
    m = attnzoo.build("rwkv6", d_model=256, n_heads=4).to(dev)
    x = torch.randn(2, 300, 256, device=dev)
    with torch.no_grad():
        y_auto = m(x)
        m.impl = "reference"
        y_ref = m(x)
    print(f"rwkv6 d=256 head 64: impl=auto vs reference on CUDA: {rel(y_auto, y_ref):.2e}")


if __name__ == "__main__":
    main()
