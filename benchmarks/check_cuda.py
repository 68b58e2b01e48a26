"""GPU check of the SMT layer's CUDA fast path (in-place blocks + Triton block gradients) against a float64 dense autograd reference,
and of the Triton kernel against the PyTorch gather+bmm path, across shapes, block sizes, densities, dtypes and ragged edges;
then mixed precision: float32 weights under bf16/fp16 autocast (Trainer(bf16=True)) against a dense layer under the same autocast.
Exits non-zero if any case fails. Usage: python benchmarks/check_cuda.py
"""
import itertools
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from smt_nb.blocks import BlockGrid, gather_blocks, scatter_blocks
from smt_nb.kernels import kernel_repeats, sddmm_blocks_triton
from smt_nb.layers import SMTLinear, column_strips, sampled_block_grad

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm()).item()


def one_case(out_f, in_f, b, density, dtype, path, T=1024, seed=0):
    gen = torch.Generator().manual_seed(seed)
    grid = BlockGrid(out_f, in_f, b)
    n = max(1, round(density * grid.n_blocks))
    flat = torch.randperm(grid.n_blocks, generator=gen)[:n]
    blocks = torch.stack([flat // grid.n_cols, flat % grid.n_cols], 1)
    base = nn.Linear(in_f, out_f, device="cuda", dtype=dtype)
    w0 = base.weight.detach().double()
    layer = SMTLinear(base, blocks, b, init_std=0.02, path=path)
    x = torch.randn(T, in_f, device="cuda", dtype=dtype, requires_grad=True)
    y = layer(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    torch.cuda.synchronize()
    # float64 dense autograd reference (on the GPU: float64 is exact enough and much faster than the host)
    w = (w0 + scatter_blocks(layer.smt_delta.detach().double(), grid, layer.blocks)).requires_grad_()
    xr = x.detach().double().requires_grad_()
    yr = F.linear(xr, w, base.bias.detach().double())
    yr.backward(gy.double())
    errs = dict(y=rel(y, yr), gx=rel(x.grad, xr.grad), gdelta=rel(layer.smt_delta.grad, gather_blocks(w.grad, grid, layer.blocks)))
    # the Triton kernel against the PyTorch gather+bmm path, same inputs on the GPU
    g2 = gy.reshape(-1, out_f)
    torch_path = sampled_block_grad(g2.float(), column_strips(x.detach().float(), grid), layer.blocks[:, 0], layer.blocks[:, 1], grid)
    triton_path = sddmm_blocks_triton(g2, x.detach(), layer.blocks[:, 0], layer.blocks[:, 1] * b, in_f, grid)
    errs["kernel_vs_torch"] = rel(triton_path, torch_path)
    return n, errs


def autocast_case(out_f, in_f, b, density, dtype, path, T=1024, seed=0):
    "float32 base, forward under CUDA autocast, backward outside it; the reference is a dense float32 weight under the same autocast."
    gen = torch.Generator().manual_seed(seed)
    grid = BlockGrid(out_f, in_f, b)
    n = max(1, round(density * grid.n_blocks))
    flat = torch.randperm(grid.n_blocks, generator=gen)[:n]
    blocks = torch.stack([flat // grid.n_cols, flat % grid.n_cols], 1)
    base = nn.Linear(in_f, out_f, device="cuda")
    w0 = base.weight.detach().clone()
    layer = SMTLinear(base, blocks, b, init_std=0.02, path=path)
    w = (w0 + scatter_blocks(layer.smt_delta.detach(), grid, layer.blocks)).requires_grad_()
    x = torch.randn(T, in_f, device="cuda", requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    with torch.autocast("cuda", dtype=dtype):
        y, yr = layer(x), F.linear(xr, w, base.bias)
    gy = torch.randn_like(y)
    y.backward(gy); yr.backward(gy)
    torch.cuda.synchronize()
    assert y.dtype == dtype and layer.smt_delta.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    return n, dict(y=rel(y, yr), gx=rel(x.grad, xr.grad), gdelta=rel(layer.smt_delta.grad, gather_blocks(w.grad, grid, layer.blocks)))


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    shapes = [(4096, 4096), (14336 // 4, 4096), (1000, 3000), (576, 192), (192, 576), (300, 4096)]  # ragged ones included
    rows, failed = [], 0
    for (out_f, in_f), b, density, dtype, path in itertools.product(shapes, (64, 128, 256), (0.01, 0.05, 0.3),
                                                                    (torch.float32, torch.bfloat16), ("inplace", "reference")):
        if b > max(out_f, in_f): continue
        n, errs = one_case(out_f, in_f, b, density, dtype, path)
        tol = TOL[dtype]
        ok = all(v < tol for v in errs.values())
        failed += not ok
        rows.append(f"{out_f:>6}x{in_f:<6} b={b:<4} dens={density:<5} n={n:<5} {str(dtype)[6:]:<9} {path:<9} "
                    + " ".join(f"{k}={v:.1e}" for k, v in errs.items()) + ("  ok" if ok else "  FAIL"))
    print("\n".join(rows))
    print(f"{len(rows) - failed}/{len(rows)} cases passed (tolerance: fp32 1e-5, bf16 1e-2, norm-relative vs float64 dense autograd)")
    amp_rows, amp_failed = [], 0
    for (out_f, in_f), b, density, dtype, path in itertools.product([(4096, 4096), (1000, 3000), (576, 192)], (64, 256), (0.01, 0.3),
                                                                    (torch.bfloat16, torch.float16), ("inplace", "reference", "additive")):
        if b > max(out_f, in_f): continue
        n, errs = autocast_case(out_f, in_f, b, density, dtype, path)
        ok = all(v < 2e-2 for v in errs.values())
        amp_failed += not ok
        amp_rows.append(f"{out_f:>6}x{in_f:<6} b={b:<4} dens={density:<5} n={n:<5} autocast {str(dtype)[6:]:<9} {path:<9} "
                        + " ".join(f"{k}={v:.1e}" for k, v in errs.items()) + ("  ok" if ok else "  FAIL"))
    print("\n".join(amp_rows))
    print(f"{len(amp_rows) - amp_failed}/{len(amp_rows)} autocast cases passed (float32 weights, forward under autocast; tolerance 2e-2 "
          "norm-relative vs a dense layer under the same autocast)")
    failed += amp_failed
    repeats = {f"b={b} n={n} T={T}": kernel_repeats(T=T, b=b, n=n) for b, n, T in ((64, 3, 8192), (256, 1, 16384), (128, 5, 4096))}
    print("kernel gives the same bits on every call (token splits summed in a fixed order):", repeats)
    failed += not all(repeats.values())
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
