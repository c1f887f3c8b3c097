"""The fused row norms (ops/norm/triton.py) against the float64 formulas (impl="reference"), on the CPU through
Triton's interpreter: outputs and the gradients of x (and of the gate and the weight), rows that do not fill a
program, D off a power of two; the vmap rule (members folded into the rows; a weight per member or shared);
the torch path is the formula the mixers always used; sm_90 cubins of the kernels."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import attnzoo.ops.norm.api as norm_api  # noqa: E402
from attnzoo.ops.norm import gated_rms_norm, l2_norm  # noqa: E402
from attnzoo.ops.norm import triton as tri  # noqa: E402
from tests.ops._checks import rel  # noqa: E402


def grads(fn, ins, dy):
    leaves = [t.clone().requires_grad_(True) for t in ins]
    y = fn(*leaves)
    return [y, *torch.autograd.grad((y.double() * dy).sum(), leaves)]


@pytest.mark.parametrize("shape", [(3, 7, 2, 16), (5, 20), (1, 33, 128), (2, 3)])
def test_l2_matches_reference(shape):
    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g, dtype=torch.float64)
    got = grads(lambda x: l2_norm(x, impl="triton"), [x], dy)
    want = grads(lambda x: l2_norm(x, impl="reference"), [x.double()], dy)
    assert got[0].dtype == torch.float32
    for a, b in zip(got, want):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("activation", ["silu", "sigmoid"])
@pytest.mark.parametrize("shape", [(3, 7, 2, 16), (6, 20), (1, 1, 128)])
def test_gated_matches_reference(activation, shape):
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    w = 1 + 0.3 * torch.randn(shape[-1], generator=g)
    dy = torch.randn(*shape, generator=g, dtype=torch.float64)
    got = grads(lambda x, z, w: gated_rms_norm(x, w, z, 1e-5, activation, impl="triton"), [x, z, w], dy)
    want = grads(lambda x, z, w: gated_rms_norm(x, w, z, 1e-5, activation, impl="reference"),
                 [x.double(), z.double(), w.double()], dy)
    for name, a, b in zip(("y", "dx", "dz", "dw"), got, want):
        assert rel(a, b) < 1e-5, name


@pytest.mark.parametrize("per_member", [True, False])
def test_vmap_matches_members_one_by_one(per_member):
    G, M, D = 3, 10, 12   # 10 rows per member: programs of 2 rows, never across two members
    g = torch.Generator().manual_seed(2)
    x, z = torch.randn(G, M, D, generator=g), torch.randn(G, M, D, generator=g)
    w = torch.randn(G, D, generator=g) if per_member else torch.randn(D, generator=g)
    dy = torch.randn(G, M, D, generator=g, dtype=torch.float64)
    one = lambda x, z, w: gated_rms_norm(x, w, z, 1e-5, impl="triton")  # noqa: E731
    got = grads(torch.func.vmap(one, in_dims=(0, 0, 0 if per_member else None)), [x, z, w], dy)
    want = grads(lambda x, z, w: torch.stack([one(x[i], z[i], w[i] if per_member else w) for i in range(G)]),
                 [x, z, w], dy)
    for a, b in zip(got, want):
        assert rel(a, b) < 1e-6
    got = grads(torch.func.vmap(lambda x: l2_norm(x, impl="triton")), [x], dy)
    want = grads(lambda x: torch.stack([l2_norm(x[i], impl="triton") for i in range(G)]), [x], dy)
    assert all(rel(a, b) < 1e-6 for a, b in zip(got, want))


def test_torch_path_is_the_mixers_formula_and_auto_takes_it_on_the_cpu():
    """impl="torch" is what mixers.layers.GatedRMSNorm and _linear_common.l2_normalize computed before the
    op existed (bit for bit); "auto" takes it on the CPU (the fused kernels only on CUDA, NORM_TRITON_AUTO)."""
    g = torch.Generator().manual_seed(3)
    x, z = torch.randn(4, 8, generator=g).bfloat16(), torch.randn(4, 8, generator=g).bfloat16()
    w = torch.randn(8, generator=g)
    xf = x.float()
    old = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * w).to(x.dtype) * torch.nn.functional.silu(z)
    assert torch.equal(gated_rms_norm(x, w, z, 1e-5), old)
    assert torch.equal(l2_norm(x), x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6))
    assert norm_api.NORM_TRITON_AUTO is True and not norm_api._fits(x)


def test_rows_per_program_never_span_two_groups():
    assert [tri._rows(r) for r in (16, 32, 10, 7, 24)] == [16, 16, 2, 1, 8]


def test_bad_inputs_raise():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="gate must be"):
        gated_rms_norm(x, torch.ones(8), x[..., :4])
    with pytest.raises(ValueError, match="weight"):
        gated_rms_norm(x, torch.ones(4), x)
    with pytest.raises(ValueError, match="activation"):
        gated_rms_norm(x, torch.ones(8), x, activation="gelu")
    with pytest.raises(ValueError, match="D <= 256"):
        l2_norm(torch.randn(2, 300), impl="triton")
    with pytest.raises(ValueError, match="triton norms need"):
        l2_norm(x.double(), impl="triton")


SM90 = """
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from attnzoo.ops.norm import triton as t
cases = [(t.l2_fwd_kernel, ["X", "Y"], {}), (t.l2_bwd_kernel, ["X", "DY", "DX"], {}),
         (t.gated_fwd_kernel, ["X", "Z", "W", "Y"], {"SILU": True}),
         (t.gated_bwd_kernel, ["X", "Z", "W", "DY", "DX", "DZ", "DW"], {"SILU": True})]
for fn, ptrs, const in cases:
    sig = {p: "*fp32" if p in ("W", "DW") else "*bf16" for p in ptrs}
    sig.update(M="i32", D="i32", **({"R": "i32"} if "W" in ptrs else {}), eps="fp32")
    const = {**const, "BR": 16, "BD": 128}
    attrs = {(i,): [["tt.divisibility", 16]] for i, (k, v) in enumerate(sig.items()) if v[0] == "*"}
    src = ASTSource(fn, {**sig, **{k: "constexpr" for k in const}}, constexprs=const, attrs=attrs)
    assert compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["cubin"]
print("compiled")
"""


def test_kernels_compile_for_sm90():
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-c", SM90], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]
