"""Where a whole-model training step's time goes: GPU time per kernel (torch profiler) for the frozen floor and SMT at LoRA-r64's
budget, eager and compiled, and the host's Python time per function (cProfile) for eager SMT. A diagnostic for the speed work, not
a benchmark: run `model.py` for figures. With --timeline DIR: one step's trace (DIR/<method>_<mode>.json.gz, chrome://tracing or
Perfetto) and where the GPU sat idle in it, phase by phase: gaps the host caused (the next kernel was queued after the GPU ran out of
work) and gaps it did not (queued in time, started late), the largest gaps by the kernels around them, and slow CUDA API calls.
With --compare FLOOR SMT: two such traces side by side, and the kernels whose GPU time differs most.
Usage: python benchmarks/profile_step.py [--shape 1b] [--modes eager,compiled] [--rows 25] [--timeline DIR]
       python benchmarks/profile_step.py --compare DIR/floor_compiled.json.gz DIR/smt_compiled.json.gz
"""
import argparse
import ast
import cProfile
import gzip
import json
import os
import pstats
import re
from collections import Counter

import torch

from smt_nb.blocks import lora_params
from smt_nb.core import SMTConfig, prepare_smt, find_targets
from smt_nb.train import smt_parameters

from model import SHAPES, TARGETS, batch, build, free, step_fn


def make(method, shape, layers):
    model = build(shape, layers)
    if method == "floor":
        model.requires_grad_(False); model.enable_input_require_grads(); return model, []
    shapes = [(m.out_features, m.in_features) for m in find_targets(model, TARGETS).values()]
    sparsity = lora_params(64, shapes) / sum(o * i for o, i in shapes)
    model = prepare_smt(model, SMTConfig(block_size=256, sparsity=sparsity, method="random", target_modules=TARGETS))
    return model, smt_parameters(model)


def gpu_table(step, rows, sort="self_cuda_time_total"):
    from torch.profiler import profile, ProfilerActivity
    for _ in range(3): step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for _ in range(3): step()
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=70))


DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
PHASES = ("forward", "backward", "optimizer")


def traced_step(step, path):
    "Profile one step (after warm-up) with its phases marked, and write the trace to `path` (gzipped chrome trace)."
    from torch.profiler import profile, ProfilerActivity, record_function
    forward, backward, optimizer = step.phases
    for _ in range(3): step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        with record_function("forward"): loss = forward()
        with record_function("backward"): backward(loss)
        with record_function("optimizer"): optimizer()
        torch.cuda.synchronize()
    raw = path + ".tmp.json"
    p.export_chrome_trace(raw)
    with open(raw, "rb") as f, gzip.open(path, "wb") as g: g.write(f.read())
    os.remove(raw)


def idle_report(trace: dict, top: int = 12, slow_call_us: float = 50.0) -> dict:
    """Where the GPU sat idle in a traced step: per phase (the phase whose host range queued the next device event), idle µs split into
    `host_late` (the launch call ended after the GPU had run out of work) and `queued` (the work was queued in time), the largest
    gaps with the device events around them, and CUDA API calls of at least `slow_call_us`."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    calls = {e["args"]["correlation"]: e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    phases = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events if e.get("cat") == "user_annotation" and e["name"] in PHASES)
    def phase_of(ts): return next((name for lo, hi, name in phases if lo <= ts <= hi), "other")
    device = sorted((e for e in events if e.get("cat") in DEVICE_CATS), key=lambda e: e["ts"])
    out = {p: dict(device_us=0.0, host_late_us=0.0, queued_us=0.0, events=0) for p in (*PHASES, "other")}
    gaps, busy_until = [], None
    for prev, e in zip([None, *device], device):
        call = calls.get(e.get("args", {}).get("correlation"))
        phase = phase_of(call["ts"]) if call else "other"
        row = out[phase]
        row["device_us"] += e["dur"]; row["events"] += 1
        if busy_until is not None and e["ts"] > busy_until:
            gap = e["ts"] - busy_until
            late = call is not None and call["ts"] + call["dur"] > busy_until
            row["host_late_us" if late else "queued_us"] += gap
            gaps.append(dict(us=round(gap, 1), phase=phase, host_late=late, before=prev["name"][:60], after=e["name"][:60],
                             launch=call["name"] if call else None))
        busy_until = max(busy_until or 0, e["ts"] + e["dur"])
    slow = Counter()
    for e in events:
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and e["dur"] >= slow_call_us and "Launch" not in e["name"]: slow[e["name"]] += e["dur"]
    for row in out.values():
        for k in ("device_us", "host_late_us", "queued_us"): row[k] = round(row[k], 1)
    return dict(phases={k: v for k, v in out.items() if v["events"]}, largest_gaps=sorted(gaps, key=lambda g: -g["us"])[:top],
                slow_calls_us={k: round(v, 1) for k, v in slow.most_common(8)})


def device_time_by_kernel(trace: dict) -> Counter:
    """µs of GPU time per kernel name, without the compiler's numbering and view ops (`triton_poi_fused__unsafe_view_mul_silu_9` and
    `triton_poi_fused_mul_silu_view_10` are one name)."""
    out = Counter()
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS:
            name = re.sub(r"_(unsafe_view|view|slice)(?=_|$)", "", re.sub(r"_\d+$", "", e["name"]))
            out[re.sub(r"__+", "_", name)] += e["dur"]
    return out


def compare(path_a: str, path_b: str, top: int = 15):
    "Idle reports of two traces (a: the floor, b: SMT) and the kernels whose GPU time differs most between them."
    traces = []
    for path in (path_a, path_b):
        with gzip.open(path) as f: traces.append(json.load(f))
        print(f"== {path}\n" + json.dumps(idle_report(traces[-1], top=5), indent=1))
    a, b = (device_time_by_kernel(t) for t in traces)
    print(f"== GPU µs per step, b - a (a {sum(a.values()):.0f}, b {sum(b.values()):.0f})")
    for name in sorted(set(a) | set(b), key=lambda k: -abs(b[k] - a[k]))[:top]:
        print(f"{b[name] - a[name]:+9.0f}  ({a[name]:8.0f} -> {b[name]:8.0f})  {name[:90]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="1b")
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--methods", default="floor,smt")
    ap.add_argument("--rows", type=int, default=25, help="rows of each table (with --compare: kernels listed)")
    ap.add_argument("--sort", default="self_cuda_time_total", help="the table's order; self_cpu_time_total: where the host's time goes, op by op")
    ap.add_argument("--timeline", default=None, help="instead of the tables: one step's trace per row into this folder, and its idle report")
    ap.add_argument("--compare", nargs=2, default=None, metavar=("FLOOR", "SMT"), help="instead: compare two --timeline traces (no GPU needed)")
    ap.add_argument("--options", default="", help="inductor options for torch.compile, as key=value,key=value (values read as Python literals)")
    a = ap.parse_args()
    if a.compare: return compare(*a.compare, top=a.rows)
    layers = SHAPES[a.shape]["layers"]
    options = {k: ast.literal_eval(v) for k, v in (kv.split("=", 1) for kv in a.options.split(",") if kv)}
    for mode in a.modes.split(","):
        for method in a.methods.split(","):
            print(f"==== {method} {mode} (3 steps)", flush=True)
            model, params = make(method, a.shape, layers)
            step = step_fn(torch.compile(model, options=options or None) if mode == "compiled" else model, params, batch())
            if a.timeline:
                os.makedirs(a.timeline, exist_ok=True)
                path = os.path.join(a.timeline, f"{method}_{mode}{'_options' if options and mode == 'compiled' else ''}.json.gz")
                traced_step(step, path)
                with gzip.open(path) as f: print(json.dumps(idle_report(json.load(f)), indent=1), flush=True)
                del model, params, step; free(); continue
            gpu_table(step, a.rows, a.sort)
            if mode == "eager" and method == "smt":
                with cProfile.Profile() as prof:
                    for _ in range(5): step()
                    torch.cuda.synchronize()
                pstats.Stats(prof).sort_stats("tottime").print_stats(a.rows)
            del model, params, step; free()


if __name__ == "__main__":
    main()
