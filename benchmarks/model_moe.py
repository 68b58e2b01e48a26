"""Whole-model training step of a mixture-of-experts model, eager and under torch.compile: Qwen3-MoE with Qwen3-30B-A3B layer shapes
(hidden 2048, 128 experts, top-8, expert width 768, 32 heads, 4 KV heads, head_dim 128; 4 layers) or Mixtral-8x7B layer shapes
(hidden 4096, 8 experts, top-2, width 14336, 32 heads, 8 KV heads; 2 layers), random weights, vocabulary 32000, batch 4 × 1024
tokens, bf16, fused AdamW, experts run by transformers' default `grouped_mm` (fused 3-D `mlp.experts.gate_up_proj` / `down_proj`).
Rows: the frozen floor (gradients flow to the input only), LoRA r=16 on q/k/v/o and the expert weights (peft `target_parameters`),
SMT on the same targets with 128² blocks at LoRA's trainable count, SMT at 1 %, and SMT on q/k/v/o only at LoRA's fraction.
A row that raises is recorded as skipped with the error's first line; the others still run. SMT's expert routing refuses compilation
(NotImplementedError from a module hook), but torch.compile(model) turns that raise into a graph break and runs those frames
eagerly, so compiled rows also record dynamo's graphs, graph breaks and eager fallbacks: they say how much was really compiled.
Columns as benchmarks/model.py: tokens/s (median step), ratio to the floor of the same mode, peak GiB, ms/step, kernels per step.
Usage: python benchmarks/model_moe.py --json benchmarks/results/model_moe.json
       python benchmarks/model_moe.py --shape mixtral --json benchmarks/results/model_moe_mixtral.json
       python benchmarks/model_moe.py --tiny --json /tmp/moe_tiny.json    (tiny float32 model on the CPU: a smoke test of this script)
"""
import argparse
import gc
import types
import weakref
from contextlib import contextmanager
from pathlib import Path
import json
import os
import platform
import re
import sys
import time
import traceback
from dataclasses import dataclass

os.environ.setdefault("TEARDOWN_CUPTI", "1")  # before torch loads: a profile must not slow the rows timed after it (see model.py)

import torch
import transformers
from torch._dynamo.utils import counters
from transformers import MixtralConfig, MixtralForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # model.py sits beside this script (benchmarks/ is no package)
from model import device_events, free, host_phases, in_turns, in_turns_summary, kernels_per_step, median, step_fn, syncs_per_step, time_steps  # noqa: E402  the same step, profiler count and cleanup as the dense benchmark

from smt_nb.core import SMTConfig, find_targets, prepare_smt  # noqa: E402
from smt_nb.experts import expert_parameters  # noqa: E402  resolves target_parameters exactly as prepare_smt will

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
WARMUP, STEPS = int(os.environ.get("BENCH_WARMUP", 3)), 30  # BENCH_WARMUP: more untimed steps first
FAMILIES = {"qwen3": (Qwen3MoeConfig, Qwen3MoeForCausalLM), "mixtral": (MixtralConfig, MixtralForCausalLM)}
SHAPES = {  # Qwen3-30B-A3B's and Mixtral-8x7B's layer shapes (norm_topk_prob: Qwen3-30B-A3B's config.json sets it)
    "qwen3": dict(hidden_size=2048, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, num_attention_heads=32,
                  num_key_value_heads=4, head_dim=128, norm_topk_prob=True, layers=4),
    "mixtral": dict(hidden_size=4096, num_local_experts=8, num_experts_per_tok=2, intermediate_size=14336, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=128, layers=2),
}
TINY = {  # same architectures, small enough for two CPU cores: every block size divides every matrix
    "qwen3": dict(hidden_size=64, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, norm_topk_prob=True, layers=2),
    "mixtral": dict(hidden_size=64, num_local_experts=8, num_experts_per_tok=2, intermediate_size=32, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, layers=2),
}
METHODS = ["floor", "lora", "smt_matched", "smt_1pct", "smt_attention"]
MODEL_NAMES = {"qwen3": "Qwen3-MoE (Qwen3-30B-A3B layer shapes)", "mixtral": "Mixtral (Mixtral-8x7B layer shapes)"}


@dataclass
class Setup:
    "Everything a run depends on besides the method: the GPU run's values, or the tiny CPU smoke test's (see `setup`)."
    shape: str
    layers: int
    vocab: int
    batch: int
    seq: int
    block: int
    dtype: torch.dtype
    device: str
    kernel_table: int = 0  # --kernel-table N: each row also prints its N costliest kernels

    @property
    def cuda(self) -> bool: return self.device == "cuda"


def setup(a) -> Setup:
    "The GPU configuration, or with --tiny a float32 one on the CPU (no CUDA there, and bf16 matmuls on CPU are slow)."
    layers = a.layers or (TINY if a.tiny else SHAPES)[a.shape]["layers"]
    if a.tiny: return Setup(a.shape, layers, vocab=512, batch=2, seq=64, block=16, dtype=torch.float32, device="cpu")
    return Setup(a.shape, layers, vocab=a.vocab, batch=4, seq=1024, block=128, dtype=torch.bfloat16, device="cuda",
                 kernel_table=getattr(a, "kernel_table", 0))


def build(s: Setup, tiny: bool):
    "Random weights made directly in `s.dtype` on `s.device` (never a float32 copy of the GPU model), experts left at transformers' default."
    config_cls, model_cls = FAMILIES[s.shape]
    shape = {k: v for k, v in (TINY if tiny else SHAPES)[s.shape].items() if k != "layers"}
    cfg = config_cls(vocab_size=s.vocab, num_hidden_layers=s.layers, max_position_embeddings=max(2048, s.seq), **shape)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(s.dtype)
    try:
        with torch.device(s.device): model = model_cls(cfg).to(s.dtype)
    finally: torch.set_default_dtype(default)
    model.config.use_cache = False
    return model


def batch(s: Setup):
    "The same random tokens for every row (fixed generator on the model's device); labels = inputs, as a causal LM step."
    g = torch.Generator(device=s.device).manual_seed(0)
    ids = torch.randint(0, s.vocab, (s.batch, s.seq), device=s.device, generator=g)
    return dict(input_ids=ids, labels=ids)


def trainable(model) -> int:
    "Values that train, counted from the model itself (requires_grad), whatever the method says it trains."
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def targeted_values(model, modules: list[str], parameters: list[str] | None) -> int:
    "Elements of the weights a method targets: the 2-D modules and the 3-D expert weights, resolved as SMT resolves them."
    n = sum(m.weight.numel() for m in find_targets(model, modules).values())
    return n + sum(getattr(m, p).numel() for m, p in expert_parameters(model, parameters).values()) if parameters else n


def lora_model(model, rank: int):
    "peft LoRA on q/k/v/o and, through `target_parameters`, on the fused expert weights (one rank-r pair per expert)."
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=ATTENTION, target_parameters=EXPERTS)
    return get_peft_model(model, cfg)


def measure_budget(s: Setup, tiny: bool, rank: int) -> dict:
    "LoRA's trainable count, measured on a LoRA model, against the element counts of what it targets (with and without experts)."
    model = build(s, tiny)
    values = dict(target_values=targeted_values(model, ATTENTION, EXPERTS), attention_values=targeted_values(model, ATTENTION, None),
                  experts_implementation=model.config._experts_implementation)
    values["lora_values"] = trainable(lora_model(model, rank))
    del model; free()
    values["lora_fraction"] = values["lora_values"] / values["target_values"]
    values["smt_matched_blocks"] = values["lora_values"] // s.block**2  # at most LoRA's values, as smt_nb.blocks.blocks_for_lora_rank
    return values


def sync(s: Setup):
    "Wait for queued GPU work before reading a host clock; the CPU has nothing queued."
    if s.cuda: torch.cuda.synchronize()


@contextmanager
def gc_pauses():
    "Yields a list that collects the duration of every Python garbage collection inside the block: host time no kernel was launched in."
    pauses, started = [], []
    def timer(phase, info):
        if phase == "start": started.append(time.perf_counter())
        elif started: pauses.append(time.perf_counter() - started.pop())
    gc.callbacks.append(timer)
    try: yield pauses
    finally: gc.callbacks.remove(timer)


def run(name, model, s: Setup, compiled: bool) -> dict:
    "As model.run: warm up (compiling, if asked), then time STEPS steps one by one; tokens/s from the median step, peak memory after warm-up."
    params = [p for p in model.parameters() if p.requires_grad]
    counters.clear()  # dynamo's counts from here on are this row's
    fn = torch.compile(model) if compiled else model
    step = step_fn(fn, params, batch(s), fused=True)
    sync(s); t0 = time.perf_counter()
    for _ in range(WARMUP): step()
    sync(s); warmup_s = time.perf_counter() - t0
    if s.cuda: torch.cuda.reset_peak_memory_stats()
    mallocs = torch.cuda.memory_stats().get("num_device_alloc", 0) if s.cuda else 0
    with gc_pauses() as pauses: times, host = time_steps(step, STEPS, cuda=s.cuda)  # host: until each step's last kernel was queued
    mallocs = (torch.cuda.memory_stats().get("num_device_alloc", 0) if s.cuda else 0) - mallocs  # cudaMalloc calls: each one syncs
    step_s = median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if s.cuda else None
    sync(s); t0 = time.perf_counter()
    for _ in range(STEPS): step()  # back to back, as a training loop that never waits for the GPU runs them
    sync(s); back_to_back = (time.perf_counter() - t0) / STEPS
    events = device_events(step) if s.cuda else None  # kernels are a CUDA count: none on the CPU smoke test
    launches, gpu_ms = kernels_per_step(step, events) if s.cuda else (None, None)
    if s.kernel_table and events: print_kernel_table(events, s.kernel_table)
    phases = host_phases(*step.phases, sync=lambda: sync(s), events=s.cuda)
    syncs = syncs_per_step(step) if s.cuda else None
    n = sum(p.numel() for p in params)
    r = dict(method=name, compiled=compiled, tokens_per_s=s.batch * s.seq / step_s, step_ms=step_s * 1e3,
             step_ms_spread=[min(times) * 1e3, max(times) * 1e3], peak_gib=peak,
             trainable=n, kernels_per_step=launches, gpu_kernel_ms=gpu_ms, warmup_s=warmup_s,
             host_ms=median(host) * 1e3 if host else None,
             back_to_back_tokens_per_s=s.batch * s.seq / back_to_back, gc_ms_per_step=sum(pauses) * 1e3 / STEPS, gc_runs=len(pauses), cuda_mallocs_while_timed=mallocs,
             phases=phases, syncs_per_step=syncs)
    if compiled: r["dynamo"] = dynamo_counts()
    print(f"{name:<66} {r['tokens_per_s']:>9.0f} tok/s  {r['step_ms']:8.1f} ms/step  {fmt(r['peak_gib'], '6.2f')} GiB  "
          f"{fmt(launches, '6.0f')} kernels  {fmt(r['host_ms'], '5.1f')} ms host  trainable {n / 1e6:8.3f} M  warm-up {warmup_s:5.1f} s"
          + (f"  {r['dynamo']['graphs']} graphs, {r['dynamo']['graph_breaks']} breaks" if compiled else "")
          + f"\n    phases {phases}, {syncs}", flush=True)
    return r


def print_kernel_table(events: list, rows: int):
    "The `rows` GPU kernels (and copies) taking the most device time in 2 steps' `device_events`, per step, with call counts."
    totals = {}
    for e in events:
        t = totals.setdefault(e.name[:90], [0, 0.0]); t[0] += 1; t[1] += e.device_time / 2e3
    for name, (n, ms) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:rows]: print(f"      {ms:7.3f} ms  {n // 2:5d}x  {name}")


def dynamo_counts() -> dict:
    """How much of a compiled row was compiled: graphs made, graph breaks, and frames dynamo gave up on and ran eagerly (a raise in
    traced code, such as SMT's expert-routing hook under compilation, is one of those rather than an error)."""
    return dict(graphs=counters["stats"]["unique_graphs"], graph_breaks=sum(counters["graph_break"].values()),
                eager_fallbacks=sum(counters["unimplemented"].values()))


def fmt(x, spec: str) -> str:
    "A number, or a dash where the CPU smoke test has none (peak memory, kernels) or a row was skipped."
    width = re.match(r"\d*", spec).group()
    return format(x, spec) if x is not None else "-".rjust(int(width or 1))


def run_row(key: str, name: str, make, s: Setup, compiled: bool) -> dict:
    "Build the row's model and run it; an exception skips this row only, recorded with its first line (and the trainable count, if built)."
    model, n = None, None
    import smt_nb.experts as experts_module
    remade = experts_module._product_factors
    if key.endswith("_whole"): experts_module._product_factors = lambda x: None  # the ablation: backward keeps act(gate) * up itself
    try:
        model = make(); n = trainable(model)
        row = run(name, model, s, compiled)
    except Exception as e:  # noqa: BLE001  one failing method must not lose the others' numbers
        first = (str(e).strip().splitlines() or [""])[0]
        row = dict(method=name, compiled=compiled, skipped=f"{type(e).__name__}: {first}", trainable=n)
        print(f"{name:<66} skipped: {row['skipped']}", flush=True)
        if os.environ.get("BENCH_TRACEBACK"): traceback.print_exc()
    finally: experts_module._product_factors = remade
    row["key"] = key
    alive = weakref.ref(model) if model is not None else (lambda: None)
    del model; free()
    if alive() is not None: row["kept_by"] = holders(alive())  # something still references the row's model: say what
    torch._dynamo.reset()  # the next row compiles from scratch, not on top of this one's caches
    if s.cuda and torch.cuda.memory_allocated() >= 2**28:  # left over (model.py asserts): it would skew the next peak, so say so, don't stop
        row["leftover_gib"] = torch.cuda.memory_allocated() / 2**30
        print(f"warning: {row['leftover_gib']:.2f} GiB still allocated after {name}: the next rows' peaks include it", flush=True)
    return row


def holders(obj, depth: int = 3) -> list[str]:
    "What keeps `obj` alive: the types (and short reprs) of its referrers, `depth` levels up, skipping frames and this function's lists."
    out, level = [], [obj]
    for d in range(depth):
        nxt = []
        for o in level:
            for r in gc.get_referrers(o):
                if r is level or r is nxt or r is out: continue
                what = f"frame {r.f_code.co_name} {r.f_code.co_filename}:{r.f_lineno}" if type(r).__name__ == "frame" else str(r)[:120]
                out.append(f"{'  ' * d}{type(r).__module__}.{type(r).__qualname__}: {what!r}"); nxt.append(r)
        level = [r for r in nxt if not isinstance(r, (dict, types.MethodType))][:6] or nxt[:6]  # past the model's own bound methods
    print("\n".join(["model kept alive by:"] + out[:40]), flush=True)
    return out[:40]


def makers(s: Setup, tiny: bool, rank: int, budget: dict) -> dict:
    "key -> (row name, function building the model to train)."
    def frozen():
        model = build(s, tiny); model.requires_grad_(False); model.enable_input_require_grads(); return model
    def smt(modules, parameters, **size):  # size: n_blocks= (exact budget) or sparsity=
        cfg = SMTConfig(target_modules=modules, target_parameters=parameters, block_size=s.block, method="random", **size)
        return prepare_smt(build(s, tiny), cfg)
    b, frac = s.block, budget["lora_fraction"]
    return {
        "floor": ("floor (frozen)", frozen),
        "lora": (f"LoRA r={rank} q/k/v/o + experts (peft)", lambda: lora_model(build(s, tiny), rank)),
        "smt_matched": (f"SMT q/k/v/o + experts, {b}² blocks (= LoRA r={rank} budget)",
                        lambda: smt(ATTENTION, EXPERTS, n_blocks=budget["smt_matched_blocks"])),
        "smt_matched_whole": (f"SMT q/k/v/o + experts, {b}² blocks (= LoRA r={rank} budget), down input kept whole",
                              lambda: smt(ATTENTION, EXPERTS, n_blocks=budget["smt_matched_blocks"])),
        "smt_1pct": ("SMT 1% q/k/v/o + experts", lambda: smt(ATTENTION, EXPERTS, sparsity=0.01)),
        "smt_attention": (f"SMT q/k/v/o only, {frac:.2%} (LoRA r={rank}'s fraction)", lambda: smt(ATTENTION, None, sparsity=frac)),
    }


def add_floor_ratios(results: list[dict]):
    "Each timed row against the floor of its own mode (eager or compiled), as model.py."
    for r in results:
        floor = next((f for f in results if f["key"] == "floor" and f["compiled"] == r["compiled"] and "skipped" not in f), None)
        if floor and "skipped" not in r:
            r["speed_vs_floor"] = r["tokens_per_s"] / floor["tokens_per_s"]
            r["memory_vs_floor"] = r["peak_gib"] / floor["peak_gib"] if r["peak_gib"] is not None else None


def describe(s: Setup, tiny: bool, budget: dict, rank: int) -> dict:
    "What the numbers were measured on: device, versions, shapes, budgets."
    shape = {k: v for k, v in (TINY if tiny else SHAPES)[s.shape].items() if k != "layers"}
    return dict(device=torch.cuda.get_device_name() if s.cuda else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
                torch=torch.__version__, transformers=transformers.__version__, peft=__import__("peft").__version__, shape=s.shape,
                model=f"{MODEL_NAMES[s.shape]}{', tiny' if tiny else ''}, {s.layers} layers, random weights, vocabulary {s.vocab} "
                      f"(not the real model's: only the LM head's size depends on it)",
                config=shape, experts_implementation=budget["experts_implementation"],
                batch=f"{s.batch} x {s.seq} tokens",
                dtype=f"{str(s.dtype).removeprefix('torch.')} weights, fused AdamW (SMT deltas and AdamW states float32)",
                steps=f"{WARMUP} warm-up (compiling) + {STEPS} timed one by one (median)", compile="torch.compile(model), default mode",
                lora=f"peft LoraConfig(r={rank}, lora_alpha={2 * rank}, target_modules={ATTENTION}, target_parameters={EXPERTS})",
                smt=f"SMTConfig(block_size={s.block}, method='random'); matched row: n_blocks={budget['smt_matched_blocks']} "
                    f"(= {budget['smt_matched_blocks'] * s.block**2} values, LoRA's {budget['lora_values']} rounded down to whole blocks)",
                profiling="each row is timed first, then profiled (kernel counts, syncs); TEARDOWN_CUPTI="
                          f"{os.environ.get('TEARDOWN_CUPTI')} so that no later row pays for an earlier profile",
                **{k: budget[k] for k in ("lora_values", "target_values", "attention_values", "lora_fraction", "smt_matched_blocks")})


def print_table(meta: dict, results: list[dict]):
    "model.py's closing table, with trainable values, ms/step and (compiled rows) graph breaks."
    print(f"\n{meta['model']}, {meta['device']}\n{'method':<66} {'trainable':>11} {'tok/s':>9} {'x floor':>8} "
          f"{'peak GiB':>8} {'ms/step':>8} {'kernels':>8} {'breaks':>6}")
    for r in results:
        if "skipped" in r:
            print(f"{r['method']:<66} {fmt(r['trainable'], '11,d')} skipped: {r['skipped'][:100]}"); continue
        print(f"{r['method']:<66} {r['trainable']:>11,d} {r['tokens_per_s']:>9.0f} {fmt(r.get('speed_vs_floor'), '8.3f')} "
              f"{fmt(r['peak_gib'], '8.2f')} {r['step_ms']:>8.1f} {fmt(r['kernels_per_step'], '8.0f')} "
              f"{fmt(r.get('dynamo', {}).get('graph_breaks'), '6d')}")


def host_profile(model, s: Setup, path: str):
    "cProfile of 5 eager steps after 3 warm-up steps: where the host's time goes (written to `path`, sorted by own time, then cumulative)."
    import cProfile, io, pstats
    step = step_fn(model, [p for p in model.parameters() if p.requires_grad], batch(s), fused=True)
    for _ in range(3): step()
    sync(s)
    with cProfile.Profile() as prof:
        for _ in range(5): step()
        sync(s)
    out = io.StringIO()
    for key in ("tottime", "cumulative"): pstats.Stats(prof, stream=out).sort_stats(key).print_stats(90)
    Path(path).write_text(out.getvalue())
    print(out.getvalue()[:6000])


def interleaved(keys: list[str], rows: dict, s: Setup, rounds: int, steps: int = 5) -> dict:
    """Eager tokens/s of every row with the rows' steps timed in turns (model.py's `in_turns`: all models built and warmed up
    first, then `rounds` rounds in which each row runs `steps` steps one by one), summed up by model.py's `in_turns_summary`."""
    import smt_nb.experts as experts_module
    remade = experts_module._product_factors
    def row_step(key, step):  # the ablation row ("_whole") needs its patch while it runs, so each of its steps sets it
        if not key.endswith("_whole"): return step
        def patched():
            experts_module._product_factors = lambda x: None
            try: step()
            finally: experts_module._product_factors = remade
        return patched
    steps_of = {}
    for key in keys:  # each step holds its model and optimizer
        model = rows[key][1]()
        steps_of[key] = row_step(key, step_fn(model, [p for p in model.parameters() if p.requires_grad], batch(s), fused=True))
        del model
    for step in steps_of.values():
        for _ in range(WARMUP): step()
    out = in_turns_summary(in_turns(steps_of, rounds, lambda step: time_steps(step, steps, cuda=s.cuda)[0]), s.batch * s.seq)
    print(f"interleaved ({rounds} rounds x {steps} steps per row; x floor: the median of the per-round ratios):")
    for k, r in out.items(): print(f"  {k:<20} {r['tokens_per_s']:>9.0f} tok/s  {r['step_ms']:7.2f} ms  x floor {fmt(r.get('speed_vs_floor'), '.3f')}")
    del steps_of; free()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=list(SHAPES), default="qwen3")
    p.add_argument("--json", default=None)
    p.add_argument("--layers", type=int, default=None, help="default: 4 (qwen3), 2 (mixtral, --tiny)")
    p.add_argument("--vocab", type=int, default=32000, help="LM head / embedding size (--tiny: 512)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--modes", default="eager,compiled")
    p.add_argument("--tiny", action="store_true", help="tiny float32 model on the CPU (hidden 64, 8 experts top-2, 2 x 64 tokens, 16² blocks)")
    p.add_argument("--cprofile", default=None, help="instead: profile the host side of 5 eager steps of this method (cProfile), to this file")
    p.add_argument("--kernel-table", type=int, default=0, help="also print each row's N costliest GPU kernels (profiler, 2 steps)")
    p.add_argument("--interleave", type=int, default=0, help="also time the eager rows interleaved, this many rounds (see `interleaved`)")
    a = p.parse_args()
    s = setup(a)
    if s.cuda and not torch.cuda.is_available(): p.error("no CUDA device: run on a GPU, or pass --tiny for the CPU smoke test")
    budget = measure_budget(s, a.tiny, a.lora_rank)
    rows = makers(s, a.tiny, a.lora_rank, budget)
    if a.cprofile: return host_profile(rows[a.methods.split(",")[0]][1](), s, a.cprofile)
    results = []
    for mode in a.modes.split(","):
        for key in a.methods.split(","):
            name, make = rows[key]
            results.append(run_row(key, name + (" compiled" if mode == "compiled" else ""), make, s, mode == "compiled"))
    add_floor_ratios(results)
    out = dict(meta=describe(s, a.tiny, budget, a.lora_rank), results=results)
    if a.interleave: out["interleaved"] = interleaved(a.methods.split(","), rows, s, a.interleave)
    print_table(out["meta"], results)
    if a.json:
        with open(a.json, "w") as f: json.dump(out, f, indent=1)
        print("wrote", a.json)


if __name__ == "__main__":
    main()
