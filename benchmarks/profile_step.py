"""Where a whole-model training step's time goes: GPU time per kernel (torch profiler) for the frozen floor and SMT at LoRA-r64's
budget, eager and compiled, and the host's Python time per function (cProfile) for eager SMT. A diagnostic for the speed work, not
a benchmark: run `model.py` for figures.
Usage: python benchmarks/profile_step.py [--shape 1b] [--modes eager,compiled] [--rows 25]
"""
import argparse
import cProfile
import pstats

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="1b")
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--methods", default="floor,smt")
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--sort", default="self_cuda_time_total", help="the table's order; self_cpu_time_total: where the host's time goes, op by op")
    a = ap.parse_args()
    layers = SHAPES[a.shape]["layers"]
    for mode in a.modes.split(","):
        for method in a.methods.split(","):
            print(f"==== {method} {mode} (3 steps)", flush=True)
            model, params = make(method, a.shape, layers)
            step = step_fn(torch.compile(model) if mode == "compiled" else model, params, batch())
            gpu_table(step, a.rows, a.sort)
            if mode == "eager" and method == "smt":
                with cProfile.Profile() as prof:
                    for _ in range(5): step()
                    torch.cuda.synchronize()
                pstats.Stats(prof).sort_stats("tottime").print_stats(a.rows)
            del model, params, step; free()


if __name__ == "__main__":
    main()
