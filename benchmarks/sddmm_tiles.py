"""Which tiles and token splits the block-gradient kernel should use: GPU time of `sddmm_blocks` (with the sum over token splits) on
the per-layer problems of a Llama-3.2-1B or Llama-3-8B step — 4 × 1024 tokens, b=256, each projection's share of SMT at LoRA-r64's
budget, reading the saved column strips — over tile sides, token tiles, pipeline stages, warps and the number of programs aimed
for (per SM; 0: one token split, so no sum over splits). A sweep for choosing `launch_plan`'s defaults, not a benchmark of SMT: `model.py` gives the step figures.
With --rect: rectangular tiles too (BM×BN, e.g. 128×256: fewer loads per product); with --back-to-back: each problem's GPU time
over calls in a row replayed from a CUDA graph (inputs stay in L2, as the output gradient does in a step; no host launch time)
instead of do_bench's flushed cache.
With --splits: per problem, tile shapes × explicit token split counts (back to back), beside a cuBLAS product of the same FLOPs;
--tma: the same over a candidate kernel loading by TMA; --diagnose: the 1B gate problem with a narrow output gradient, in L2 and on
cuBLAS; --plans: today's eager and compiled plans only; --wide: as --splits over the tiles those sweeps left out (64×256, steps of
128 tokens), each row checked against the compiled plan; --tma --tma-store: the TMA candidate also storing its partial tiles by TMA.
Usage: python benchmarks/sddmm_tiles.py [--shapes 1b,8b] [--json out.json] [--rect] [--back-to-back] [--splits] [--tma [--tma-store]]
       [--diagnose] [--plans] [--wide]
"""
import argparse
import functools
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


def token_slices(T: int, splits: int, bk: int) -> tuple[int, int]:
    "(slices made, tokens per slice) when `T` tokens are cut into about `splits` slices of whole `bk`-token tiles."
    per_split = math.ceil(T / splits / bk) * bk
    return math.ceil(T / per_split), per_split


def compiled_plan(g, x, rows, cols):
    "A call of the block gradients as a compiled graph launches them (partial tiles, then torch's sum), to time."
    return lambda: sddmm_blocks_triton(g, x, rows, cols, B, launch=lambda kernel: kernel)


def run_config(g, x, rows, cols, tile, bk, stages, warps, target=None, min_iters=4, bn=None, splits=None):
    """One launch (+ the sum over splits) with these settings (BM = `tile`, BN = `bn` or `tile`; `splits` token slices, or as many
    as give about `target` programs); returns a function to time and the splits it makes."""
    T, n = g.shape[0], rows.shape[0]
    bn = bn or tile
    tiles = (B // tile) * (B // bn)
    if splits is None: splits = max(1, min(math.ceil(target / (n * tiles)), math.ceil(T / (min_iters * bk))))
    splits, per_split = token_slices(T, splits, bk)
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


SPLIT_TILES = [dict(tile=64, bn=64, warps=4, stages=4), dict(tile=64, bn=128, warps=4, stages=4), dict(tile=128, bn=128, warps=4, stages=3),
               dict(tile=128, bn=128, warps=8, stages=3), dict(tile=128, bn=128, warps=8, stages=4), dict(tile=128, bn=256, warps=8, stages=3),
               dict(tile=256, bn=128, warps=8, stages=3)]
SPLITS = (1, 2, 3, 4, 5, 6, 8, 11, 16)
# --wide: the tiles the sweeps above left out — one warpgroup across a whole 256-wide strip (wgmma's widest product, 64×256), and
# 128-token steps (half the loop's waits) — at the power-of-two split counts `launch_plan` makes
WIDE_TILES = [dict(tile=64, bn=64, warps=4, stages=4, bk=64), dict(tile=64, bn=256, warps=4, stages=3, bk=64),
              dict(tile=64, bn=256, warps=4, stages=4, bk=64), dict(tile=64, bn=256, warps=8, stages=4, bk=64),
              dict(tile=64, bn=256, warps=4, stages=2, bk=128), dict(tile=64, bn=128, warps=4, stages=3, bk=128),
              dict(tile=64, bn=64, warps=4, stages=3, bk=128), dict(tile=128, bn=256, warps=8, stages=2, bk=128)]
WIDE_SPLITS = (1, 2, 4, 8)
# --tma --tma-store: the TMA candidate writing its fp32 partial tiles by bulk copies, asking whether the stores of large partial tiles
# (128 KB for 128×256) are what makes split launches of large tiles slow; two rows without it, for comparison in the same run
TMA_STORE_TILES = [dict(tile=64, bn=64, warps=4, stages=4, tma_store=True), dict(tile=64, bn=128, warps=4, stages=4, tma_store=True),
                   dict(tile=64, bn=256, warps=4, stages=4, tma_store=True), dict(tile=64, bn=256, warps=8, stages=4, tma_store=True),
                   dict(tile=128, bn=128, warps=8, stages=4, tma_store=True), dict(tile=128, bn=256, warps=8, stages=3, tma_store=True),
                   dict(tile=128, bn=256, warps=8, stages=2, tma_store=True, bk=128),
                   dict(tile=128, bn=256, warps=8, stages=3, tma_store=False), dict(tile=64, bn=128, warps=4, stages=4, tma_store=False)]
SWEEP_TIMING = "calls back to back in one CUDA graph (GPU µs per call, median of 7 replays), kernel + torch.sum over splits"


def dense_same_flops(T: int, n: int):
    "A cuBLAS product with the FLOPs of `n` b×b blocks over T tokens, from contiguous operands: (n·b, T) @ (T, b)."
    a = torch.randn(T, n * B, device="cuda", dtype=torch.bfloat16).t()
    c = torch.randn(T, B, device="cuda", dtype=torch.bfloat16)
    return lambda: a @ c


def sweep_meta(**extra) -> dict:
    "The `meta` of a back-to-back sweep's JSON."
    return dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__, tokens=BATCH * SEQ,
                block_size=B, **extra)


def sweep(case, run, ref=None, tiles=SPLIT_TILES, split_counts=SPLITS) -> tuple[list, list]:
    """Every tile shape of `tiles` with every split count of `split_counts` on one problem: `run(*case, splits=, **tile)` gives a
    function to time and the splits it makes. Returns all rows and the timed ones, fastest first; with `ref`, each row also holds
    its norm-relative error against it."""
    rows = []
    for tc, splits in itertools.product(tiles, split_counts):
        try:
            fn, made = run(*case, splits=splits, **tc)
            row = dict(**tc, splits=made)
            if ref is not None: row["err"] = ((fn() - ref).norm() / ref.norm()).item()
            rows.append(dict(row, us=back_to_back(fn)))
        except Exception as e:  # e.g. more shared memory than the chip has
            rows.append(dict(**tc, splits=splits, error=f"{type(e).__name__}: {str(e)[:200]}"))
    return rows, sorted((r for r in rows if "us" in r), key=lambda r: r["us"])


def split_sweep(a, wide: bool = False):
    """Per problem, every tile shape of SPLIT_TILES with every token split count of SPLITS (back to back), best first; `wide`:
    WIDE_TILES at WIDE_SPLITS instead, each row checked against today's compiled plan."""
    T = BATCH * SEQ
    out = dict(meta=sweep_meta(sms=torch.cuda.get_device_properties(0).multi_processor_count, timing=SWEEP_TIMING), shapes={})
    for shape in a.shapes.split(","):
        res = {}
        for name, o, i, n in problems(shape):
            case = inputs(T, o, i, n)
            plan = compiled_plan(*case)
            if wide: rows, ok = sweep(case, run_config, ref=plan(), tiles=WIDE_TILES, split_counts=WIDE_SPLITS)
            else: rows, ok = sweep(case, functools.partial(run_config, bk=64))
            res[name] = dict(blocks=n, out=o, inp=i, compiled_plan_us=back_to_back(plan),
                             cublas_same_flops_us=back_to_back(dense_same_flops(T, n)), best=ok[:8], all=rows)
            r = res[name]
            print(f"{shape} {name} (n={n}): plan {r['compiled_plan_us']:.1f} µs, cuBLAS same FLOPs {r['cublas_same_flops_us']:.1f}, "
                  f"best {[(x['tile'], x['bn'], x['warps'], x['stages'], x['splits'], round(x['us'], 1)) for x in ok[:4]]}", flush=True)
        out["shapes"][shape] = dict(problems=res, compiled_plan_layer_us=sum(r["compiled_plan_us"] for r in res.values()),
                                    best_per_problem_layer_us=sum(r["best"][0]["us"] for r in res.values() if r["best"]),
                                    cublas_layer_us=sum(r["cublas_same_flops_us"] for r in res.values()))
        print(shape, {k: round(v, 1) for k, v in out["shapes"][shape].items() if k != "problems"}, flush=True)
        if a.json:
            with open(a.json, "w") as f: json.dump(out, f, indent=1)


@functools.cache
def tma_kernel():
    """The same product with the operands loaded by the Tensor Memory Accelerator (device-side descriptors, Hopper): one bulk copy
    per BK×BM tile instead of per-thread addresses, zero fill past the edges instead of masks. A candidate, timed by --tma."""
    import triton.language as tl

    @triton.jit
    def sddmm_tma(G, X, OUT, ROWS, XCOL, T, tokens_per_split, out_features, x_width,
                  B: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, STAGES: tl.constexpr,
                  TMA_STORE: tl.constexpr = False):
        k, tile, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        tm, tn = tile // (B // BN), tile % (B // BN)
        row0 = tl.load(ROWS + k).to(tl.int32) * B + tm * BM
        col0 = tl.load(XCOL + k).to(tl.int32) * B + tn * BN
        g_desc = tl.make_tensor_descriptor(G, shape=[T, out_features], strides=[out_features, 1], block_shape=[BK, BM])
        x_desc = tl.make_tensor_descriptor(X, shape=[T, x_width], strides=[x_width, 1], block_shape=[BK, BN])
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        t_start = split * tokens_per_split
        for t0 in tl.range(t_start, t_start + tokens_per_split, BK, num_stages=STAGES):
            g = g_desc.load([t0, row0])          # (BK, BM); rows past T read as zeros
            x = x_desc.load([t0, col0])          # (BK, BN)
            acc = tl.dot(g.T, x, acc)
        if TMA_STORE:  # the partial tile leaves through shared memory by the copy engine, rather than from every thread's registers
            rows_out = tl.num_programs(2) * tl.num_programs(0) * B
            out_desc = tl.make_tensor_descriptor(OUT, shape=[rows_out, B], strides=[B, 1], block_shape=[BM, BN])
            out_desc.store([(split * tl.num_programs(0) + k) * B + tm * BM, tn * BN], acc)
        else:
            offs_m, offs_n = tm * BM + tl.arange(0, BM), tn * BN + tl.arange(0, BN)
            tl.store(OUT + (split * tl.num_programs(0) + k) * B * B + offs_m[:, None] * B + offs_n[None, :], acc)

    return sddmm_tma


def run_tma(g, x, rows, cols, tile, bn, warps, stages, splits, tma_store=False, bk=64):
    "One launch of the TMA candidate (+ torch's sum over splits): a function to time, and the splits it makes."
    T, n = g.shape[0], rows.shape[0]
    tiles = (B // tile) * (B // bn)
    splits, per_split = token_slices(T, splits, bk)
    partial = torch.empty(splits, n, B, B, device="cuda", dtype=torch.float32)
    kernel = tma_kernel()
    def fn():
        kernel[(n, tiles, splits)](g, x, partial, rows, cols, T, per_split, g.shape[1], x.shape[1], B=B, BM=tile, BN=bn, BK=bk,
                                   STAGES=stages, TMA_STORE=tma_store, num_warps=warps)
        return partial[0] if splits == 1 else partial.sum(0)
    return fn, splits


def tma_sweep(a):
    "Per problem: the TMA candidate over tile shapes and token splits, checked against the pointer kernel, beside today's plan."
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    T = BATCH * SEQ
    out = dict(meta=sweep_meta(timing=SWEEP_TIMING), shapes={})
    for shape in a.shapes.split(","):
        res = {}
        for name, o, i, n in problems(shape):
            case = inputs(T, o, i, n)
            plan = compiled_plan(*case)
            if a.tma_store: rows, ok = sweep(case, run_tma, ref=plan(), tiles=TMA_STORE_TILES, split_counts=WIDE_SPLITS)
            else: rows, ok = sweep(case, run_tma, ref=plan())
            res[name] = dict(blocks=n, compiled_plan_us=back_to_back(plan), best=ok[:8], all=rows)
            r = res[name]
            errs = [x["error"] for x in rows if "error" in x][:1]
            print(f"{shape} {name} (n={n}): plan {r['compiled_plan_us']:.1f} µs, TMA best "
                  f"{[(x['tile'], x['bn'], x['warps'], x['stages'], x['splits'], round(x['us'], 1), format(x['err'], '.0e')) for x in ok[:4]]} {errs}", flush=True)
        out["shapes"][shape] = dict(problems=res, compiled_plan_layer_us=sum(r["compiled_plan_us"] for r in res.values()),
                                    tma_best_per_problem_layer_us=sum(r["best"][0]["us"] for r in res.values() if r["best"]))
        print(shape, {k: round(v, 1) for k, v in out["shapes"][shape].items() if k != "problems"}, flush=True)
        if a.json:
            with open(a.json, "w") as f: json.dump(out, f, indent=1)


def plans(a):
    "Today's launch plans only: each problem's GPU time as the eager wrapper and as a compiled graph launch it (back to back)."
    T = BATCH * SEQ
    out = dict(meta=sweep_meta(timing="calls back to back in one CUDA graph (GPU µs per call, median of 7 replays)"), shapes={})
    for shape in a.shapes.split(","):
        eager, compiled = {}, {}
        for name, o, i, n in problems(shape):
            g, x, rows, cols = inputs(T, o, i, n)
            eager[name] = back_to_back(lambda: sddmm_blocks_triton(g, x, rows, cols, B))
            compiled[name] = back_to_back(compiled_plan(g, x, rows, cols))
        out["shapes"][shape] = dict(eager_us=eager, eager_layer_us=sum(eager.values()), compiled_us=compiled,
                                    compiled_layer_us=sum(compiled.values()))
        print(f"{shape}: eager {sum(eager.values()):.1f} µs per decoder layer { {k: round(v, 1) for k, v in eager.items()} }\n"
              f"     compiled {sum(compiled.values()):.1f} { {k: round(v, 1) for k, v in compiled.items()} }", flush=True)
    if a.json:
        with open(a.json, "w") as f: json.dump(out, f, indent=1)


def diagnose(a):
    """Where the kernel's time goes on the largest 1B problem (gate: 12 blocks of an 8192×2048 weight): the output gradient as wide as
    in a step (8192 columns, 16 KB between tokens) against one holding only the 12 row strips read (3072 columns), a quarter of the
    tokens (all of g in L2), and cuBLAS on the same strided views one block at a time. The narrow case reads strips 0..11 in order
    (the same amount of data, not the same pattern): it asks whether the width between tokens matters, not the order of the strips."""
    T = BATCH * SEQ
    name, o, i, n = next(p for p in problems("1b") if p[0] == "gate")
    g, x, rows, cols = inputs(T, o, i, n)
    narrow_g = g[:, :n * B].contiguous()
    narrow_rows = torch.arange(n, device="cuda")
    quarter = g[: T // 4].contiguous(), x[: T // 4].contiguous()
    rl, cl = rows.tolist(), cols.tolist()
    def cublas_per_block():
        return [g[:, r * B:(r + 1) * B].t() @ x[:, c * B:(c + 1) * B] for r, c in zip(rl, cl)]
    out = dict(wide_g_us=back_to_back(compiled_plan(g, x, rows, cols)), narrow_g_us=back_to_back(compiled_plan(narrow_g, x, narrow_rows, cols)),
               quarter_tokens_x4_us=4 * back_to_back(compiled_plan(*quarter, rows, cols)), cublas_per_block_strided_us=back_to_back(cublas_per_block),
               cublas_same_flops_contiguous_us=back_to_back(dense_same_flops(T, n)))
    print({k: round(v, 1) for k, v in out.items()}, flush=True)
    if a.json:
        with open(a.json, "w") as f: json.dump(dict(meta=dict(device=torch.cuda.get_device_name(), problem=[name, o, i, n], tokens=T), **out), f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1b,8b")
    p.add_argument("--json", default=None)
    p.add_argument("--narrow", action="store_true", help="only 64×64 tiles, with one token split per block among the choices")
    p.add_argument("--rect", action="store_true", help="rectangular tiles too: BM×BN in 64×64, 128×128, 64×128, 128×64, 128×256")
    p.add_argument("--back-to-back", action="store_true", help="GPU time of calls in a row (CUDA graph, warm L2), not do_bench")
    p.add_argument("--splits", action="store_true", help="per problem: tile shapes × explicit token splits (one wave or more), and "
                   "a cuBLAS product of the same size for scale")
    p.add_argument("--diagnose", action="store_true", help="the 1B gate problem with a narrow output gradient, in L2, and on cuBLAS")
    p.add_argument("--tma", action="store_true", help="per problem: a TMA-loading candidate kernel over tile shapes and token splits")
    p.add_argument("--plans", action="store_true", help="today's plans only (eager wrapper and compiled launch), back to back")
    p.add_argument("--tma-store", action="store_true", help="with --tma: partial tiles stored by TMA too (TMA_STORE_TILES)")
    p.add_argument("--wide", action="store_true", help="as --splits over WIDE_TILES (64×256 tiles, 128-token steps, two reference rows), checked")
    a = p.parse_args()
    if sum(map(bool, (a.plans, a.tma, a.splits, a.diagnose, a.wide))) > 1:
        p.error("--plans, --tma, --splits, --diagnose and --wide are separate runs: give one")
    if a.tma_store and not a.tma: p.error("--tma-store changes the --tma sweep: give both")
    if a.plans: return plans(a)
    if a.tma: return tma_sweep(a)
    if a.splits: return split_sweep(a)
    if a.wide: return split_sweep(a, wide=True)
    if a.diagnose: return diagnose(a)
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
            compiled[name] = bench(compiled_plan(g, x, rows, cols))
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
