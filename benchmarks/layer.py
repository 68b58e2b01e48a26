"""One-layer training step (forward + backward) on a GPU: SMT vs LoRA with the same trainable values vs dense training vs the
frozen floor (forward + input gradient only). bf16, 8192 tokens, block 256; medians of repeated runs; ratios to the floor.
Usage: python benchmarks/layer.py [--json benchmarks/results/layer.json]
"""
import argparse
import json
import os

os.environ.setdefault("TEARDOWN_CUPTI", "1")  # before torch loads: a profile must not slow the rows timed after it (see model.py)

import torch
import torch.nn as nn
from triton.testing import do_bench

from smt_nb.blocks import BlockGrid
from smt_nb.layers import SMTLinear

T, B, DTYPE = 8192, 256, torch.bfloat16


def random_blocks(grid, density, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = max(1, round(density * grid.n_blocks))
    flat = torch.randperm(grid.n_blocks, generator=gen)[:n]
    return torch.stack([flat // grid.n_cols, flat % grid.n_cols], 1)


def bench(fn):
    return do_bench(fn, warmup=50, rep=300, return_mode="median")


def measure(out_f, in_f, density):
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=DTYPE).requires_grad_(False)
    x = torch.randn(T, in_f, device="cuda", dtype=DTYPE, requires_grad=True)
    gy = torch.randn(T, out_f, device="cuda", dtype=DTYPE)
    grid = BlockGrid(out_f, in_f, B)
    blocks = random_blocks(grid, density)
    n_values = len(blocks) * B * B
    rank = max(1, round(n_values / (out_f + in_f)))
    res = {}

    res["floor"] = bench(lambda: torch.autograd.grad(lin(x), [x], gy))
    w = nn.Parameter(lin.weight.detach().clone())
    res["dense"] = bench(lambda: torch.autograd.grad(torch.nn.functional.linear(x, w), [x, w], gy))
    A = nn.Parameter(torch.randn(rank, in_f, device="cuda", dtype=DTYPE) / in_f**0.5)
    Bm = nn.Parameter(torch.zeros(out_f, rank, device="cuda", dtype=DTYPE))
    res["lora"] = bench(lambda: torch.autograd.grad(lin(x) + (x @ A.t()) @ Bm.t(), [x, A, Bm], gy))
    for path in ("inplace", "reference"):
        base = nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=DTYPE)
        base.load_state_dict(lin.state_dict())
        layer = SMTLinear(base, blocks, B, path=path)
        def step():
            with torch.no_grad(): layer.smt_delta.add_(0.0)  # as after an optimizer step: the in-place path rewrites its blocks
            return torch.autograd.grad(layer(x), [x, layer.smt_delta], gy)
        res[f"smt_{path}"] = bench(step)
    os.environ["SMT_NB_NO_TRITON"] = "1"  # the pure-PyTorch reference path: fresh W + ΔW, gather + bmm
    base = nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=DTYPE); base.load_state_dict(lin.state_dict())
    layer = SMTLinear(base, blocks, B, path="reference")
    res["smt_pytorch"] = bench(lambda: torch.autograd.grad(layer(x), [x, layer.smt_delta], gy))
    del os.environ["SMT_NB_NO_TRITON"]
    return dict(shape=[out_f, in_f], density=density, n_blocks=len(blocks), trainable=n_values, lora_rank=rank,
                ms=res, ratio={k: v / res["floor"] for k, v in res.items()})


def profile(out_f, in_f, density):
    "Where the SMT in-place step spends GPU time: the top kernels of a few profiled steps."
    from torch.profiler import profile as prof, ProfilerActivity
    torch.manual_seed(0)
    base = nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=DTYPE)
    layer = SMTLinear(base, random_blocks(BlockGrid(out_f, in_f, B), density), B, path="inplace")
    x = torch.randn(T, in_f, device="cuda", dtype=DTYPE, requires_grad=True)
    gy = torch.randn(T, out_f, device="cuda", dtype=DTYPE)
    def step():
        with torch.no_grad(): layer.smt_delta.add_(0.0)
        return torch.autograd.grad(layer(x), [x, layer.smt_delta], gy)
    for _ in range(5): step()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
        for _ in range(5): step()
        torch.cuda.synchronize()
    print(f"-- profile {out_f}x{in_f} {density:.0%} (5 steps)")
    try: print(p.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))
    except Exception: print(p.key_averages().table(sort_by="self_device_time_total", row_limit=12))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    if a.profile:
        profile(4096, 4096, 0.01); profile(14336, 4096, 0.05)
    out = []
    for (o, i) in ((4096, 4096), (14336, 4096)):
        for d in (0.01, 0.05):
            r = measure(o, i, d)
            out.append(r)
            print(f"{o}x{i} {d:.0%} blocks={r['n_blocks']:<4} lora_r={r['lora_rank']:<4} floor={r['ms']['floor']:.3f} ms  "
                  + "  ".join(f"{k}={v:.3f}x" for k, v in r["ratio"].items() if k != "floor"), flush=True)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, tokens=T, block_size=B, dtype=str(DTYPE),
                timing="triton.testing.do_bench median, forward+backward (torch.autograd.grad)")
    if a.json:
        with open(a.json, "w") as f: json.dump(dict(meta=meta, results=out), f, indent=1)


if __name__ == "__main__":
    main()
