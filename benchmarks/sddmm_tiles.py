"""Which tiles and token splits the block-gradient kernel should use: GPU time of `sddmm_blocks` (with the sum over token splits) on
the per-layer problems of a Llama-3.2-1B or Llama-3-8B step — 4 × 1024 tokens, b=256, each projection's share of SMT at LoRA-r64's
budget, reading the saved column strips — over tile sides, token tiles, pipeline stages, warps and the number of programs aimed
for (per SM; 0: one token split, so no sum over splits). A sweep for choosing `launch_plan`'s defaults, not a benchmark of SMT: `model.py` gives the step figures.
With --rect: rectangular tiles too (BM×BN, e.g. 128×256: fewer loads per product); with --back-to-back: each problem's GPU time
over calls in a row replayed from a CUDA graph (inputs stay in L2, as the output gradient does in a step; no host launch time)
instead of do_bench's flushed cache.
Usage: python benchmarks/sddmm_tiles.py [--shapes 1b,8b] [--json out.json] [--rect] [--back-to-back]
"""
import argparse
import itertools
import json
import math

import torch
import triton
from triton.testing import do_bench

from smt_nb.blocks import lora_params
from smt_nb.kernels import _sddmm_kernel, sddmm_blocks_triton

from model import SHAPES, BATCH, SEQ, median

B = 256


def problems(shape: str) -> list[tuple[str, int, int, int]]:
    "(name, out, in, blocks) of one decoder layer's seven projections at LoRA-r64's budget (each its share: n = budget fraction × blocks)."
    s = SHAPES[shape]
    h, f, kv = s["hidden_size"], s["intermediate_size"], s["num_key_value_heads"] * s["hidden_size"] // s["num_attention_heads"]
    shapes = {"q": (h, h), "k": (kv, h), "v": (kv, h), "o": (h, h), "gate": (f, h), "up": (f, h), "down": (h, f)}
    frac = lora_params(64, list(shapes.values())) / sum(o * i for o, i in shapes.values())
    return [(name, o, i, max(1, round(frac * math.ceil(o / B) * math.ceil(i / B)))) for name, (o, i) in shapes.items()]


def inputs(T, out_f, in_f, n, seed=0):
    "g (T, out), the saved strips x (T, S·b), and each block's row strip and position among the saved strips."
    gen = torch.Generator().manual_seed(seed)
    flat = torch.randperm(math.ceil(out_f / B) * math.ceil(in_f / B), generator=gen)[:n]
    rows, cols = flat // math.ceil(in_f / B), flat % math.ceil(in_f / B)
    strips, pos = cols.unique(return_inverse=True)
    g = torch.randn(T, out_f, generator=gen).to("cuda", torch.bfloat16)
    x = torch.randn(T, len(strips) * B, generator=gen).to("cuda", torch.bfloat16)
    return g, x, rows.cuda(), pos.cuda()


def run_config(g, x, rows, cols, tile, bk, target, min_iters, stages, warps, bn=None):
    "One launch (+ the sum over splits) with these settings (BM = `tile`, BN = `bn` or `tile`); returns a function to time."
    T, n = g.shape[0], rows.shape[0]
    bn = bn or tile
    tiles = (B // tile) * (B // bn)
    splits = max(1, min(math.ceil(target / (n * tiles)), math.ceil(T / (min_iters * bk))))
    per_split = math.ceil(T / splits / bk) * bk
    splits = math.ceil(T / per_split)
    even = g.shape[1] % B == 0 and x.shape[1] % B == 0 and T % per_split == 0
    partial = torch.empty(splits, n, B, B, device="cuda", dtype=torch.float32)
    kernel = _sddmm_kernel()
    def fn():
        kernel[(n, tiles, splits)](g, x, partial, None, None, rows, cols, T, per_split, g.shape[1], x.shape[1], g.stride(0),
                                   x.stride(0), B=B, BM=tile, BN=bn, BK=bk, IEEE=False, EVEN=even, REDUCE=False, num_warps=warps,
                                   num_stages=stages)
        return partial[0] if splits == 1 else partial.sum(0)
    return fn, splits


def back_to_back(fn, calls: int = 50, replays: int = 7) -> float:
    """GPU µs per call of `fn`: `calls` calls in a row captured in one CUDA graph, replayed `replays` times between CUDA events
    (median), so that neither the host's launch time (tens of µs a call, more than these kernels take) nor a flushed cache is in
    the figure: the inputs stay in L2, as the output gradient does in a step."""
    for _ in range(3): fn()                           # compile and allocate outside the capture (on this stream: one scratch buffer)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls): fn()
    graph.replay(); torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(); graph.replay(); end.record(); torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls * 1e3)
    return median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1b,8b")
    p.add_argument("--json", default=None)
    p.add_argument("--narrow", action="store_true", help="only 64×64 tiles, with one token split per block among the choices")
    p.add_argument("--rect", action="store_true", help="rectangular tiles too: BM×BN in 64×64, 128×128, 64×128, 128×64, 128×256")
    p.add_argument("--back-to-back", action="store_true", help="GPU time of calls in a row (CUDA graph, warm L2), not do_bench")
    a = p.parse_args()
    bench = back_to_back if a.back_to_back else (lambda fn: do_bench(fn, warmup=5, rep=25) * 1e3)
    T, sms = BATCH * SEQ, torch.cuda.get_device_properties(0).multi_processor_count
    grid = dict(tile=(64, 128), bk=(32, 64, 128), programs=(1, 2, 4), min_iters=(4, 16), stages=(3, 4), warps=(4, 8))
    if a.narrow:  # the 64×64 tiles' neighbourhood, and one token split per block (programs=0: no sum over splits)
        grid = dict(tile=(64,), bk=(64, 128), programs=(0, 1, 2, 3), min_iters=(4, 16), stages=(3, 4), warps=(4,))
    configs = [dict(tile=t, bk=k, target=max(1, m * sms), min_iters=i, stages=s, warps=w)
               for t, k, m, i, s, w in itertools.product(*grid.values())]
    if a.rect:
        grid = dict(tiles=((64, 64), (128, 128), (64, 128), (128, 64), (128, 256)), bk=(32, 64), programs=(0, 1, 2, 3), stages=(3, 4), warps=(4, 8))
        configs = [dict(tile=bm, bn=bn, bk=k, target=max(1, m * sms), min_iters=4, stages=s, warps=w)
                   for (bm, bn), k, m, s, w in itertools.product(*grid.values())]
    out = dict(meta=dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__, tokens=T,
                         block_size=B, timing=("calls back to back in one CUDA graph, CUDA events (GPU µs per call, median of 7 replays)" if a.back_to_back else
                                                          "triton.testing.do_bench medians (µs)") + ", kernel + sum over token splits"),
               shapes={})
    for shape in a.shapes.split(","):
        probs = problems(shape)
        cases = {name: inputs(T, o, i, n) for name, o, i, n in probs}
        current, compiled = {}, {}
        for name, o, i, n in probs:  # today's plans, as the layers launch them
            g, x, rows, cols = cases[name]
            current[name] = bench(lambda: sddmm_blocks_triton(g, x, rows, cols, B))  # the eager wrapper: splits summed in-kernel
            # the traced path's plan and launch (partial tiles, then torch's sum), as a compiled graph runs it: `launch` gives the kernel
            compiled[name] = bench(lambda: sddmm_blocks_triton(g, x, rows, cols, B, launch=lambda kernel: kernel))
        rows_out = []
        for c in configs:
            times = {}
            try:
                for name, o, i, n in probs:
                    fn, splits = run_config(*cases[name], **c)
                    times[name] = bench(fn)
            except Exception:  # e.g. more shared memory than the chip has
                continue
            rows_out.append(dict(config=c, us=times, layer_us=sum(times.values())))
        rows_out.sort(key=lambda r: r["layer_us"])
        out["shapes"][shape] = dict(problems=probs, current_us=current, current_layer_us=sum(current.values()), compiled_plan_us=compiled,
                                    compiled_plan_layer_us=sum(compiled.values()), best=rows_out[:10],
                                    best_per_problem={name: min(rows_out, key=lambda r: r["us"][name]) for name, *_ in probs})
        print(f"{shape}: problems {probs}\n  today's plan: {sum(current.values()):.1f} µs per decoder layer {current}")
        print(f"  the compiled path's plan: {sum(compiled.values()):.1f} µs per decoder layer {compiled}")
        for r in rows_out[:10]: print(f"  {r['layer_us']:7.1f} µs  {r['config']}  { {k: round(v, 1) for k, v in r['us'].items()} }")
        one = [r for r in rows_out if r["config"]["target"] == 1]
        if one: print(f"  best with one token split: {one[0]['layer_us']:.1f} µs {one[0]['config']} { {k: round(v, 1) for k, v in one[0]['us'].items()} }")
        for name, *_ in probs:
            r = out["shapes"][shape]["best_per_problem"][name]
            print(f"  best for {name}: {r['us'][name]:.1f} µs {r['config']} (today {current[name]:.1f})")
    if a.json:
        with open(a.json, "w") as f: json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
