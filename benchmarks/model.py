"""Whole-model training step on a GPU, eager and under torch.compile: a Llama-3.2-1B-shaped model (or Llama-3-8B layer shapes),
random weights, batch 4 × 1024 tokens, bf16, fused AdamW (Trainer's default optimizer). The frozen floor (gradients flow to the input, nothing trains), full
fine-tuning, LoRA (peft, all linear layers) and SMT at 1 % and at LoRA-r64's trainable values; SMT also with float32 weights under
bf16 autocast. Every row of a shape comes from one run: tokens/s from the median step time (CUDA events), peak memory, kernel
launches per step. Optionally the cost of GW selection (--gw).
With --bits 4 (or 8) the model is saved once and reloaded as users load a quantized base — BitsAndBytesConfig NF4 with double
quantization and bf16 compute (or LLM.int8) — and the rows are the frozen quantized floor, QLoRA (peft), SMT at QLoRA's trainable
values with random and with GW blocks, SMT at 1 %, and SMT with the block product beside the base matmul instead of the blocks
written into the dequantized weight (the route before the 4-bit fast path), eager only.
Usage: python benchmarks/model.py --shape 1b [--json out.json] [--layers 16] [--methods floor,smt_matched] [--modes eager,compiled]
       python benchmarks/model.py --shape 1b --methods floor,smt_matched --modes eager --interleave 8  (rows also timed in turns)
       python benchmarks/model.py --shape 8b --layers 8 --bits 4 --json model_nf4.json
       python benchmarks/model.py --shape 1b --methods floor,smt_matched,smt_matched_baseline --modes eager --interleave 8 \
           --baseline DIR  (DIR holds another version's smt_nb/, e.g. from `git archive REV smt_nb | tar -x -C DIR`: both timed in turns)
"""
import argparse
import gc
import json
import os
import tempfile
import time

# Profiling (kernel counts) must not slow the rows timed after it: without TEARDOWN_CUPTI=1, kineto leaves CUPTI's callbacks on every
# kernel launch for the rest of the process (pytorch/pytorch#144455), so a row timed after another row's profile paid extra host
# time per launch and the floor, timed first, did not. Set before torch is imported; no CUDA graphs here (the teardown's known issue).
os.environ.setdefault("TEARDOWN_CUPTI", "1")

import torch
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM

from smt_nb.blocks import lora_params
from smt_nb.core import SMTConfig, find_targets, make_grids
from smt_nb.selection import score_gw
import smt_nb.core, smt_nb.train  # this version's modules; `load_baseline` gives another version's pair

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH, SEQ, WARMUP, STEPS = 4, 1024, 3, 10  # BENCH_WARMUP: more untimed steps first
SHAPES = {  # Llama-3.2-1B and the layer shapes of Llama-3-8B
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8, layers=16),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, layers=4),
}
METHODS = ["floor", "full", "lora", "smt_1pct", "smt_matched", "smt_matched_autocast"]
QUANTIZED_METHODS = ["floor", "lora", "smt_matched", "smt_matched_gw", "smt_1pct", "smt_matched_blockproduct"]


def build(shape, layers, dtype=torch.bfloat16, tie=True):
    "Random weights on the current CUDA device; `tie=False` gives Llama-3-8B's separate lm_head."
    s = {k: v for k, v in SHAPES[shape].items() if k != "layers"}
    cfg = LlamaConfig(vocab_size=128256, num_hidden_layers=layers, max_position_embeddings=2048, tie_word_embeddings=tie,
                      rope_theta=500000.0, **s)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialised in `dtype` directly: an 8B model never exists in float32
    try:
        with torch.device("cuda"): model = LlamaForCausalLM(cfg).to(dtype)
    finally: torch.set_default_dtype(default)
    model.config.use_cache = False
    return model


def quantized_loader(shape, layers, bits):
    "Save the random bf16 model once; each call reloads it 4-bit (NF4, double quantization, bf16 compute) or 8-bit, as users load one."
    from transformers import BitsAndBytesConfig
    folder = tempfile.mkdtemp(prefix="smt_bench_", dir=os.environ.get("BENCH_TMP", "/var/tmp"))
    model = build(shape, layers); model.save_pretrained(folder); del model; free()
    q = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
         if bits == 4 else BitsAndBytesConfig(load_in_8bit=True))
    def load(dtype=torch.bfloat16):
        model = LlamaForCausalLM.from_pretrained(folder, quantization_config=q, dtype=torch.bfloat16, device_map={"": torch.cuda.current_device()})
        model.config.use_cache = False
        return model
    return load


def batch():
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, 128256, (BATCH, SEQ), device="cuda", generator=g)
    return dict(input_ids=ids, labels=ids)


def step_fn(fn, params, b, fused: bool = True, autocast: bool = False):
    """One training step of `fn` (a model, or its compiled form) on batch `b`: forward (under bf16 autocast if asked), backward, and
    (when something trains) an AdamW step; the floor has no optimizer. `step.phases`: the same step phase by phase, for `host_phases`."""
    opt = torch.optim.AdamW(params, lr=1e-5, fused=fused) if params else None  # fused: Trainer's default optimizer (adamw_torch_fused)
    def forward():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast): return fn(**b).loss
    def optimizer():
        if opt: opt.step(); opt.zero_grad(set_to_none=True)
    def step(): forward().backward(); optimizer()
    step.phases = (forward, Tensor.backward, optimizer)
    return step


def device_events(step, steps: int = 2) -> list:
    "The profiler's CUDA events (kernels, copies, fills) of `steps` training steps."
    from torch.profiler import profile, ProfilerActivity
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(steps): step()
        torch.cuda.synchronize()
    return [e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def kernels_per_step(step, events: list | None = None):
    "CUDA kernels, copies and fills per training step, and their summed GPU time in ms (profiler, 2 steps; or these `device_events`)."
    device = device_events(step) if events is None else events
    return len(device) / 2, sum(e.device_time for e in device) / 2 / 1e3


def host_phases(forward, backward, optimizer, steps: int = 10, sync=torch.cuda.synchronize, events: bool = True) -> dict:
    """Where a step's time goes, phase by phase (forward, backward, optimizer; medians of `steps` steps, the GPU idle at each start):
    `host_ms`, how long the Python thread takes to queue each phase, and, with `events` (CUDA), `host_done_ms` / `gpu_done_ms`, when
    the host had queued each phase and when the GPU finished it, from the step's start. Where the GPU finishes a phase just after the
    host queued it, the GPU waited for the host; a phase that syncs with the GPU also waits for it."""
    names = ("forward", "backward", "optimizer")
    laps, host_done, gpu_done = {k: [] for k in names}, {k: [] for k in names}, {k: [] for k in names}
    for _ in range(steps):
        sync()
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if events else None
        t = [time.perf_counter()]
        if events: marks[0].record()
        loss = forward(); t.append(time.perf_counter())
        if events: marks[1].record()
        backward(loss); t.append(time.perf_counter())
        if events: marks[2].record()
        optimizer(); t.append(time.perf_counter())
        if events: marks[3].record(); marks[3].synchronize()
        for i, k in enumerate(names):
            laps[k].append((t[i + 1] - t[i]) * 1e3); host_done[k].append((t[i + 1] - t[0]) * 1e3)
            if events: gpu_done[k].append(marks[0].elapsed_time(marks[i + 1]))
    sync()
    med = lambda v: round(median(v), 2)
    out = dict(host_ms={k: med(v) for k, v in laps.items()}, host_done_ms={k: med(v) for k, v in host_done.items()})
    if events: out["gpu_done_ms"] = {k: med(v) for k, v in gpu_done.items()}
    return out


SYNCING_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::equal", "aten::_assert_async")

def syncs_per_step(step) -> dict:
    """Host-side waits for the GPU in one step (profiler, CUDA runtime calls): synchronizations and device-to-host copies, and
    `where`: the Python lines (innermost first) of the ops that read a value back, which is what makes the host wait."""
    from torch.profiler import profile, ProfilerActivity
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as p:
        step(); torch.cuda.synchronize()
    events = p.events()
    names = [e.name for e in events]
    where = [f"{e.name} at " + " < ".join(f for f in e.stack[:6] if "site-packages/torch/" not in f)[:400] for e in events if e.name in SYNCING_OPS]
    return dict(synchronize=sum("Synchronize" in n for n in names) - 1,  # less the closing torch.cuda.synchronize()
                device_to_host=sum(n.startswith("Memcpy DtoH") for n in names), where=where[:6])


def run(name, model, params, compiled, autocast=False):
    "Warm up (compiling, if asked), then time STEPS steps one by one with CUDA events: tokens/s from the median step."
    step = step_fn(torch.compile(model) if compiled else model, params, batch(), autocast=autocast)
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(WARMUP): step()
    torch.cuda.synchronize(); warmup_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    times, host = time_steps(step, STEPS)
    step_s = median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(STEPS): step()  # back to back, as a training loop that never waits for the GPU runs them
    torch.cuda.synchronize(); back_to_back = (time.perf_counter() - t0) / STEPS
    launches, gpu_ms = kernels_per_step(step)
    phases = host_phases(*step.phases)
    syncs = syncs_per_step(step)
    trainable = sum(p.numel() for p in params) if params else 0
    r = dict(method=name, compiled=compiled, tokens_per_s=BATCH * SEQ / step_s, step_ms=step_s * 1e3,
             step_ms_spread=[min(times) * 1e3, max(times) * 1e3], peak_gib=peak,
             trainable=trainable, kernels_per_step=launches, gpu_kernel_ms=gpu_ms, host_ms=median(host) * 1e3,
             back_to_back_tokens_per_s=BATCH * SEQ / back_to_back,
             warmup_s=warmup_s, phases=phases, syncs_per_step=syncs)
    print(f"{name:<44} {r['tokens_per_s']:>9.0f} tok/s  {r['step_ms']:6.1f} ms/step ({gpu_ms:5.1f} in kernels, {r['host_ms']:5.1f} host)  {r['peak_gib']:6.2f} GiB  {launches:6.0f} kernels  "
          f"trainable {trainable / 1e6:8.2f} M  warm-up {warmup_s:5.1f} s\n    phases {phases}, {syncs}", flush=True)
    return r


def free():
    gc.collect(); torch.cuda.empty_cache()


def median(v: list):
    "The middle value of `v` (the upper one of an even count)."
    return sorted(v)[len(v) // 2]


def time_steps(step, n: int, cuda: bool = True) -> tuple[list, list]:
    """`n` steps, each timed alone (the GPU idle at its start): seconds per step from CUDA events (no host-side bias), and host
    seconds until the step's last kernel is queued (its Python and launch time, if nothing syncs). With `cuda=False` (model_moe.py's
    CPU runs): wall seconds per step, and no host list."""
    times, host = [], []
    for _ in range(n):
        if not cuda:
            t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter(); start.record(); step(); host.append(time.perf_counter() - t0); end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times, host


def in_turns(steps_of: dict, rounds: int, time_turn) -> dict:
    """Step times of several rows measured in turns — a turn of each row (`time_turn(step)` -> its steps' seconds), round after round,
    all rows alive at once — so that a host that speeds up or slows down during the run weighs on every row alike (rows timed one
    after the other each meet the host as it is during their own seconds). `steps_of`: key -> the row's warmed-up training step.
    Returns key -> per round, the seconds of that turn's steps. Used by this script and model_moe.py."""
    per_round = {key: [] for key in steps_of}
    for _ in range(rounds):
        for key, step in steps_of.items(): per_round[key].append(time_turn(step))
    return per_round


def in_turns_summary(per_round: dict, tokens: int) -> dict:
    """Per row of `in_turns`'s result: its median step (`step_ms`), `tokens_per_s` and each round's median (`round_step_ms`); beside a
    "floor" row, each round's ratio (the floor's median over the row's, same round: `round_speed_vs_floor`) and `speed_vs_floor`,
    their median — a ratio of turns taken side by side, which a host drifting from round to round moves less than the ratio of the
    overall medians (`speed_vs_floor_of_medians`; model_moe.py's interleaved `speed_vs_floor` before both scripts shared this)."""
    out = {}
    for key, rounds in per_round.items():
        every = [t for turn in rounds for t in turn]
        out[key] = dict(step_ms=median(every) * 1e3, tokens_per_s=tokens / median(every), steps=len(every),
                        round_step_ms=[median(turn) * 1e3 for turn in rounds])
    if "floor" in out:
        for r in out.values():
            ratios = [f / s for f, s in zip(out["floor"]["round_step_ms"], r["round_step_ms"])]
            r.update(round_speed_vs_floor=ratios, speed_vs_floor=median(ratios), speed_vs_floor_of_medians=out["floor"]["step_ms"] / r["step_ms"])
    return out


def load_baseline(path: str):
    """Another version of the package — `path`/smt_nb, e.g. unpacked from `git archive REV smt_nb` — imported beside this one as
    `smt_nb_baseline`, so that one run times both versions' steps in turns (a whole-step A/B on one host). Every `smt_nb` in its
    source is renamed: module names, and its torch.library namespace, which cannot be registered twice. Both versions register
    their optimizer step hook, so every row's step runs both (each a lookup in its own, for other rows empty, set of layers).
    The copy is removed at exit. Returns its (core, train)."""
    import atexit, importlib, re, shutil, sys
    from pathlib import Path
    src = Path(path) / "smt_nb"
    if not (src / "core.py").exists(): raise FileNotFoundError(f"--baseline {path}: no smt_nb package there ({src}/core.py)")
    dst = Path(tempfile.mkdtemp(prefix="smt_baseline_")) / "smt_nb_baseline"
    atexit.register(shutil.rmtree, dst.parent, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    for f in dst.rglob("*.py"): f.write_text(re.sub(r"\bsmt_nb\b", "smt_nb_baseline", f.read_text()))
    sys.path.insert(0, str(dst.parent))
    return importlib.import_module("smt_nb_baseline.core"), importlib.import_module("smt_nb_baseline.train")


def interleaved(rows: list, compiled: bool, rounds: int, steps: int = 5) -> dict:
    """The rows' steps timed in turns (`in_turns`: `steps` steps of each row per round) and summed up by `in_turns_summary`.
    `rows`: (key, name, make, autocast)."""
    def warmed_step(make, autocast):  # the row's training step, warmed up (compiled, if asked); it holds the model and its optimizer
        model, params = make()
        step = step_fn(torch.compile(model) if compiled else model, params, batch(), autocast=autocast)
        for _ in range(WARMUP): step()
        return step
    steps_of = {key: warmed_step(make, autocast) for key, _, make, autocast in rows}
    summary = in_turns_summary(in_turns(steps_of, rounds, lambda step: time_steps(step, steps)[0]), BATCH * SEQ)
    out = {key: dict(method=name + (" compiled" if compiled else ""), **summary[key]) for key, name, *_ in rows}
    del steps_of; free()
    torch._dynamo.reset()
    return out


def gw_cost(shape, layers):
    "GW selection (hooks, mean_abs) vs accumulating full target gradients in .grad, 4 micro-batches each: time and extra peak memory."
    out = {}
    for variant in ("floor", "gw_hooks", "full_gradients"):
        model = build(shape, layers); model.requires_grad_(False)
        targets = find_targets(model, TARGETS)
        data = [batch() for _ in range(4)]
        torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats(); t0 = time.perf_counter()
        if variant == "floor":  # the warm-up's own forward + backward to the inputs, no statistics
            model.enable_input_require_grads()
            for b in data: model(**b).loss.backward()
        elif variant == "gw_hooks":
            score_gw(model, targets, make_grids(targets, 256), data, SMTConfig(block_size=256, warmup_steps=4))
        else:
            for m in targets.values(): m.weight.requires_grad_(True)
            model.enable_input_require_grads()
            for b in data: model(**b).loss.backward()
        torch.cuda.synchronize()
        out[variant] = dict(seconds=time.perf_counter() - t0, extra_peak_gib=(torch.cuda.max_memory_allocated() - base) / 2**30)
        print(f"{variant:<22} {out[variant]['seconds']:.2f} s  extra peak {out[variant]['extra_peak_gib']:.2f} GiB", flush=True)
        del model, targets, data; free()
    for v in ("gw_hooks", "full_gradients"): out[v]["extra_over_floor_gib"] = out[v]["extra_peak_gib"] - out["floor"]["extra_peak_gib"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=list(SHAPES), default="1b")
    p.add_argument("--json", default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--lora-rank", type=int, default=64)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--modes", default="eager,compiled")
    p.add_argument("--compiled-methods", default="floor,full,lora,smt_1pct,smt_matched", help="methods also run compiled")
    p.add_argument("--gw", action="store_true", help="also measure the cost of GW selection")
    p.add_argument("--cprofile", default=None, help="instead: profile the host side of 5 steps of this method (cProfile; eager, or compiled with --modes compiled)")
    p.add_argument("--bits", type=int, choices=[4, 8], default=None, help="a bitsandbytes 4-bit (NF4) or 8-bit base; eager only")
    p.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                   help="also time the rows of each mode in turns, ROUNDS rounds of 5 steps each, all models alive at once (see `interleaved`)")
    p.add_argument("--baseline", default=None, metavar="DIR",
                   help="DIR/smt_nb: another version of the package, for the smt_matched_baseline row (see `load_baseline`)")
    a = p.parse_args()
    layers = a.layers or SHAPES[a.shape]["layers"]
    if a.bits:
        if a.methods == ",".join(METHODS): a.methods = ",".join(QUANTIZED_METHODS)
        a.modes = "eager"
    methods, modes = a.methods.split(","), a.modes.split(",")

    shapes = [(m.out_features, m.in_features) for m in find_targets(build(a.shape, layers), TARGETS).values()]
    free()
    base = quantized_loader(a.shape, layers, a.bits) if a.bits else (lambda dtype=torch.bfloat16: build(a.shape, layers, dtype))
    target_values, lora_values = sum(o * i for o, i in shapes), lora_params(a.lora_rank, shapes)
    matched = lora_values / target_values

    def frozen():
        model = base(); model.requires_grad_(False); model.enable_input_require_grads(); return model, []
    def full():
        model = base(); return model, list(model.parameters())
    def lora():
        from peft import LoraConfig, get_peft_model
        r = a.lora_rank
        model = get_peft_model(base(), LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=TARGETS))
        return model, [p for p in model.parameters() if p.requires_grad]
    baseline = load_baseline(a.baseline) if a.baseline else None
    def smt(sparsity, dtype=torch.bfloat16, method="random", block_product=False, package=None):
        core, train = package or (smt_nb.core, smt_nb.train)
        cfg = core.SMTConfig(block_size=256, sparsity=sparsity, method=method, target_modules=TARGETS, warmup_steps=4)
        model = core.prepare_smt(base(dtype), cfg, dataloader=[batch() for _ in range(4)] if method == "gw" else None)
        if block_product:  # the route before the 4-bit fast path: base(x) + the block-sparse product
            for layer in core.smt_layers(model).values(): layer.rides_on_dequantized = lambda x: False
        return model, train.smt_parameters(model)
    q = {4: "Q", 8: "int8 "}.get(a.bits, "")
    makers = {"floor": (f"floor (frozen{', NF4' if a.bits == 4 else ', int8' if a.bits else ''})", frozen, False),
              "full": ("full fine-tuning", full, False),
              "lora": (f"{q}LoRA r={a.lora_rank} (peft)", lora, False), "smt_1pct": ("SMT 1%", lambda: smt(0.01), False),
              "smt_matched": (f"SMT {matched:.2%} (= {q}LoRA r={a.lora_rank})" + (", random blocks" if a.bits else ""), lambda: smt(matched), False),
              "smt_matched_gw": (f"SMT {matched:.2%} (= {q}LoRA r={a.lora_rank}), GW blocks", lambda: smt(matched, method="gw"), False),
              "smt_matched_blockproduct": (f"SMT {matched:.2%} (= {q}LoRA r={a.lora_rank}), block product beside the base",
                                           lambda: smt(matched, block_product=True), False),
              "smt_matched_autocast": (f"SMT {matched:.2%}, fp32 weights + bf16 autocast", lambda: smt(matched, torch.float32), True)}
    if baseline:
        makers["smt_matched_baseline"] = (f"SMT {matched:.2%} (= LoRA r={a.lora_rank}), baseline code", lambda: smt(matched, package=baseline), False)
    if "smt_matched_baseline" in methods and not baseline: raise SystemExit("the smt_matched_baseline row needs --baseline DIR")
    if a.cprofile:
        import cProfile, pstats
        name, make, autocast = makers[a.cprofile]
        model, params = make()
        # --modes compiled: profile the compiled step
        step = step_fn(torch.compile(model) if modes == ["compiled"] else model, params, batch(), autocast=autocast)
        for _ in range(3): step()
        torch.cuda.synchronize()
        with cProfile.Profile() as prof:
            for _ in range(5): step()
            torch.cuda.synchronize()
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(60)
        return
    results = []
    for mode in modes:
        for key in [m for m in methods if mode == "eager" or m in a.compiled_methods.split(",")]:
            name, make, autocast = makers[key]
            model, params = make()
            results.append(run(name + (" compiled" if mode == "compiled" else ""), model, params, mode == "compiled", autocast))
            results[-1]["key"] = key
            del model, params; free()
            torch._dynamo.reset()
            assert torch.cuda.memory_allocated() < 2**28, "memory left over from the previous method would skew the next peak"
    for r in results:
        floor = next((f for f in results if f["key"] == "floor" and f["compiled"] == r["compiled"]), None)
        if floor:
            r["speed_vs_floor"] = r["tokens_per_s"] / floor["tokens_per_s"]; r["memory_vs_floor"] = r["peak_gib"] / floor["peak_gib"]
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, shape=a.shape,
                profiling=f"each row is timed first, then profiled; TEARDOWN_CUPTI={os.environ.get('TEARDOWN_CUPTI')} (see the top of this script)",
                model=f"Llama-{'3.2-1B' if a.shape == '1b' else '3-8B'} layer shapes, {layers} layers, random weights"
                      + {4: ", reloaded NF4 (double quantization, bf16 compute)", 8: ", reloaded LLM.int8"}.get(a.bits, ""),
                batch=f"{BATCH} x {SEQ} tokens", dtype="bf16 weights, fused AdamW (autocast row: float32 weights, bf16 autocast)",
                steps=f"{WARMUP} warm-up (compiling) + {STEPS} timed one by one (median)", compile="torch.compile(model), default mode",
                lora_values=lora_values, target_values=target_values)
    out = dict(meta=meta, results=results)
    if a.interleave:
        out["interleaved"] = {}
        for mode in modes:
            keys = [m for m in methods if mode == "eager" or m in a.compiled_methods.split(",")]
            rows = [(k, *makers[k]) for k in keys]
            out["interleaved"][mode] = got = interleaved(rows, mode == "compiled", a.interleave)
            print(f"\ninterleaved, {mode}: {a.interleave} rounds of 5 steps per row")
            for r in got.values():
                print(f"{r['method']:<44} {r['tokens_per_s']:>8.0f}  {r.get('speed_vs_floor', float('nan')):7.3f}  per round "
                      + " ".join(f"{x:.3f}" for x in r.get("round_speed_vs_floor", [])))
    if a.gw: out["gw_selection"] = gw_cost(a.shape, layers)
    print(f"\n{meta['model']}, {meta['device']}\nmethod                                          tok/s  vs floor  peak GiB  vs floor  kernels")
    for r in results:
        print(f"{r['method']:<44} {r['tokens_per_s']:>8.0f}  {r.get('speed_vs_floor', float('nan')):7.3f}  {r['peak_gib']:7.2f}  "
              f"{r.get('memory_vs_floor', float('nan')):7.3f}  {r['kernels_per_step']:7.0f}")
    if a.json:
        with open(a.json, "w") as f: json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
