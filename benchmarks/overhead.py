"""Host time per call of each piece of an SMT layer's training step, on tensors so small that the GPU waits for the host:
wall time per call is then the Python and launch overhead. Also kernel launches per step, counted by the profiler.
Usage: python benchmarks/overhead.py [--json out.json] [--only "smt in-place,floor"] [--repeat 3] [--baseline DIR]
--baseline DIR: DIR/smt_nb is another version of the package (see model.py's load_baseline); its SMT layer's rows are timed
beside this version's, row after row, --repeat times in turns (medians), so that a before/after comparison comes from one run.
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TEARDOWN_CUPTI", "1")  # kernel counts are profiled between rows: see model.py

import torch
import torch.nn as nn

from smt_nb.kernels import sddmm_blocks_triton, cached_launch
from smt_nb.layers import SMTLinear, block_gradients

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # model.py sits beside this script (benchmarks/ is no package)

DTYPE, B, LONG = torch.bfloat16, 64, 2048


def host_us(fn, calls=2000):
    "Median over 5 rounds of wall microseconds per call, synchronizing only at the end of each round."
    for _ in range(50): fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls): fn()
        torch.cuda.synchronize()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return sorted(rounds)[2]


def kernels_per_call(fn, calls=10):
    "CUDA kernels (and memcpy/memset) launched per call, from the profiler's device events."
    from torch.profiler import profile, ProfilerActivity
    for _ in range(3): fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(calls): fn()
        torch.cuda.synchronize()
    device_events = [e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(device_events) / calls


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--only", default=None, help="comma-separated parts of row names: time only the rows whose name holds one")
    p.add_argument("--repeat", type=int, default=1, help="time the rows this many times in turns, report medians")
    p.add_argument("--baseline", default=None, metavar="DIR", help="DIR/smt_nb: another version, its SMT layer timed beside this one's")
    a = p.parse_args()
    torch.manual_seed(0)
    out_f = in_f = 256
    T = 64
    x = torch.randn(T, in_f, device="cuda", dtype=DTYPE, requires_grad=True)
    gy = torch.randn(T, out_f, device="cuda", dtype=DTYPE)
    lin = nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=DTYPE).requires_grad_(False)
    blocks = torch.tensor([[0, 0], [1, 2], [3, 3]])
    layer = SMTLinear(nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=DTYPE), blocks, B, path="inplace")
    rows, cols = layer.rows, layer.x_cols
    # blocks in one column strip: the layer keeps that strip of x for backward (gathered in forward), not x itself
    narrow = SMTLinear(nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=DTYPE), torch.tensor([[0, 1], [2, 1]]), B, path="inplace")
    assert not narrow.keep_x
    # what the optimizer step hook does for a 1B model's 93 SMT layers: one grouped write of base + Δ into their weights
    from smt_nb.layers import write_layers
    many = [SMTLinear(nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=DTYPE), blocks, B, path="inplace") for _ in range(93)]
    g2 = gy

    @torch.library.custom_op("overhead::noop", mutates_args=())
    def noop(t: torch.Tensor) -> torch.Tensor: return t.new_empty(1)

    class PassThrough(torch.autograd.Function):  # the cost of a Python backward run by the engine's CUDA thread
        @staticmethod
        def forward(ctx, t): return t.view_as(t)
        @staticmethod
        def backward(ctx, g): return g

    import smt_nb.layers as layers_module
    real_block_gradients, stub = layers_module._block_gradients, torch.zeros(len(blocks), B, B, device="cuda")
    def smt_without_kernel():  # the layer's own Python and torch ops, the kernel's call replaced by a ready result
        layers_module._block_gradients = lambda *args, **kwargs: stub
        try: torch.autograd.grad(layer(x), [x, layer.smt_delta], gy)
        finally: layers_module._block_gradients = real_block_gradients

    from smt_nb.kernels import _sddmm_kernel
    plan = dict(B=B, BM=B, BN=B, BK=64, IEEE=False, EVEN=True, REDUCE=False, num_warps=4, num_stages=3)
    partial_out = torch.empty(1, len(blocks), B, B, device="cuda")
    args = (g2, x.detach(), partial_out, None, None, rows, cols, T, T, out_f, in_f, g2.stride(0), x.stride(0))
    compiled = _sddmm_kernel()[(len(blocks), 1, 1)](*args, **plan)  # compiles once, returns the CompiledKernel
    runner = compiled[(len(blocks), 1, 1)]
    all_args = (*args, B, B, B, 64, False, True, False)  # the constexprs too, as JITFunction.run passes them

    def in_backward(work):  # a pass-through Function whose backward, run by the autograd engine's CUDA thread, also does `work`
        class Worker(torch.autograd.Function):
            @staticmethod
            def forward(ctx, t): return t.view_as(t)
            @staticmethod
            def backward(ctx, g): work(); return g
        return lambda: torch.autograd.grad(Worker.apply(x), [x], gy)
    xd = x.detach()

    # a layer call whose block gradients split the tokens (few blocks, many tokens): the splits are summed (by the kernel since
    # this session's change; by a torch.sum before) — still little GPU work, so the host's time shows
    x_long3 = torch.randn(2, LONG // 2, in_f, device="cuda", dtype=DTYPE, requires_grad=True)
    g_long3 = torch.randn(2, LONG // 2, out_f, device="cuda", dtype=DTYPE)
    x_long, g_long = x_long3.detach().reshape(LONG, in_f), g_long3.reshape(LONG, out_f)
    from smt_nb.kernels import launch_plan, _programs_target
    long_splits = launch_plan(LONG, len(blocks), B, out_f, in_f, False, _programs_target(torch.device("cuda")))[3]
    pieces = {
        "backward thread: nothing more": in_backward(lambda: None),
        "backward thread: one torch kernel (empty + zero_)": in_backward(lambda: torch.empty(1, device="cuda").zero_()),
        "backward thread: sddmm_blocks_triton": in_backward(lambda: sddmm_blocks_triton(g2, xd, rows, cols, B)),
        "backward thread: JITFunction launch": in_backward(lambda: _sddmm_kernel()[(len(blocks), 1, 1)](*args, **plan)),
        "backward thread: CompiledKernel runner": in_backward(lambda: runner(*all_args)),
        "backward thread: cached_launch": in_backward(lambda: cached_launch(_sddmm_kernel(), (len(blocks), 1, 1), *args, **plan)),
        "floor: linear forward + input gradient": lambda: torch.autograd.grad(lin(x), [x], gy),
        "floor: forward only": lambda: lin(x),
        "autograd.Function passing the gradient through": lambda: torch.autograd.grad(PassThrough.apply(x), [x], gy),
        "smt in-place: forward + both gradients, kernel call stubbed": smt_without_kernel,
        "Triton: JITFunction launch of the compiled kernel": lambda: _sddmm_kernel()[(len(blocks), 1, 1)](*args, **plan),
        "Triton: CompiledKernel runner (no JIT dispatch)": lambda: runner(*all_args),
        "Triton: cached_launch (smt_nb's launcher)": lambda: cached_launch(_sddmm_kernel(), (len(blocks), 1, 1), *args, **plan),
        "smt in-place: forward + both gradients": lambda: torch.autograd.grad(layer(x), [x, layer.smt_delta], gy),
        "smt in-place: forward only": lambda: layer(x),
        "smt in-place, strips kept: forward only": lambda: narrow(x),
        "smt in-place, strips kept: forward + both gradients": lambda: torch.autograd.grad(narrow(x), [x, narrow.smt_delta], gy),
        "grouped block write of 93 layers (write_layers)": lambda: write_layers(many),
        "block_gradients (Triton kernel + wrapper)": lambda: block_gradients(g2, x.detach(), rows, cols, B),
        "sddmm_blocks_triton": lambda: sddmm_blocks_triton(g2, x.detach(), rows, cols, B),
        f"sddmm_blocks_triton, {LONG} tokens in {long_splits} splits": lambda: sddmm_blocks_triton(g_long, x_long, rows, cols, B),
        f"smt in-place: forward + both gradients, {LONG} tokens ({long_splits} splits)":
            lambda: torch.autograd.grad(layer(x_long3), [x_long3, layer.smt_delta], g_long3),
        "block write after a step (_write_blocks)": lambda: layer._write_blocks(),
        "registered op call (torch.ops.smt_nb.block_gradients)": lambda: torch.ops.smt_nb.block_gradients(g2, x.detach(), rows, cols, B),
        "custom op that does nothing (dispatcher cost)": lambda: noop(x),
        "one empty torch kernel (x.new_empty + zero_)": lambda: torch.empty(1, device="cuda").zero_(),
    }
    if a.baseline:  # the same layer calls with the other version's SMTLinear, each row right after this version's
        from model import load_baseline
        old = load_baseline(a.baseline)[0].SMTLinear
        old_layer = old(nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=DTYPE), blocks, B, path="inplace")
        old_narrow = old(nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=DTYPE), torch.tensor([[0, 1], [2, 1]]), B, path="inplace")
        twins = {"smt in-place: forward only": lambda: old_layer(x),
                 "smt in-place: forward + both gradients": lambda: torch.autograd.grad(old_layer(x), [x, old_layer.smt_delta], gy),
                 "smt in-place, strips kept: forward + both gradients":
                     lambda: torch.autograd.grad(old_narrow(x), [x, old_narrow.smt_delta], gy)}
        pieces = {k: v for name, fn in pieces.items()
                  for k, v in ((name, fn),) + (((f"baseline code, {name}", twins[name]),) if name in twins else ())}
    if a.only: pieces = {k: v for k, v in pieces.items() if any(part in k for part in a.only.split(","))}
    times = {name: [] for name in pieces}
    for r in range(a.repeat):
        for name, fn in pieces.items():
            try: times[name].append(host_us(fn))
            except Exception as e: print(f"{name:<58} failed: {type(e).__name__}: {str(e)[:200]}"); continue
            print(f"{name:<58} {times[name][-1]:8.1f} µs/call" + (f"  (round {r + 1})" if a.repeat > 1 else ""), flush=True)
    res = {}
    for name, fn in pieces.items():
        if not times[name]: continue
        try: kernels = kernels_per_call(fn)
        except Exception as e: print(f"{name:<58} profiling failed: {type(e).__name__}: {str(e)[:200]}"); kernels = None
        res[name] = dict(host_us=statistics.median(times[name]), kernels=kernels, **({"rounds_us": times[name]} if a.repeat > 1 else {}))
        print(f"{name:<58} {res[name]['host_us']:8.1f} µs/call  {kernels if kernels is not None else float('nan'):5.1f} kernels/call", flush=True)
    if a.json:
        meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, shape=[out_f, in_f], tokens=T, block_size=B,
                    repeat=a.repeat, baseline=a.baseline)
        with open(a.json, "w") as f: json.dump(dict(meta=meta, results=res), f, indent=1)


if __name__ == "__main__":
    main()
