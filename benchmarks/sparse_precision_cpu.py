"""Why the block_sparse mixer's bf16 output differs from its float32 one by ~2e-2 (issue #16: the H100 run of
benchmarks/sparse_gpu.py found 2.03e-2 for the Triton path against the float32 torch path at T=4096), on the
CPU: the same comparison with the torch path in both (bf16 weights and input vs their float32 copies), the
share of (head, query block) rows whose selected block set differs between the two precisions, and the
dense mode's error for scale. With random weights the block scores are nearly uniform, so bf16 rounding of
q and of the pooled keys changes the chosen block in a few rows, and each such row's output changes.

    python benchmarks/sparse_precision_cpu.py     # ~1 minute, one thread (results/sparse_h100/precision_cpu.txt)
"""

import torch

import attnzoo
import attnzoo.mixers.block_sparse as block_sparse

H, D, T, BS = 16, 128, 4096, 64


def rel(u, v):
    return ((u.double() - v.double()).norm() / v.double().norm()).item()


def main():
    torch.set_num_threads(1)
    top_k = max(1, (T // BS) // 16 - 3)  # benchmarks/sparse_gpu.py's check_mixer sizes
    kw = {"n_heads": H, "block_size": BS, "top_k": top_k, "n_sink": BS, "window": BS}
    torch.manual_seed(0)
    a = attnzoo.build("block_sparse", d_model=H * D, impl="torch", **kw).to(torch.bfloat16)
    b = attnzoo.build("block_sparse", d_model=H * D, impl="torch", **kw).float()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, T, H * D).to(torch.bfloat16)
    chosen = {}
    select = block_sparse.BlockSparseAttention._select

    def spy(self, qrep, kbar, q_block=None):
        chosen[qrep.dtype] = select(self, qrep, kbar, q_block)
        return chosen[qrep.dtype]

    block_sparse.BlockSparseAttention._select = spy
    with torch.no_grad():
        y, y_ref = a(x), b(x.float())
    (ia, ca), (ib, cb) = chosen[torch.bfloat16], chosen[torch.float32]
    same = (ia == ib).all(-1) & (ca == cb)
    print(f"T={T}, block {BS}, top_k {top_k}: bf16 torch path vs float32 torch path: {rel(y, y_ref):.4g}")
    print(f"rows with the same selected set: {same.float().mean().item():.4f} of {same.numel()}")
    a.mode = b.mode = "full"
    with torch.no_grad():
        print(f"dense mode, bf16 vs float32: {rel(a(x), b(x.float())):.4g}")


if __name__ == "__main__":
    main()
