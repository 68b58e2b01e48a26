"""Peak extra memory of GW block scoring (hooks, `mean_abs` via block sums) vs accumulating full weight gradients.

Each variant runs in a fresh process on the same Llama-shaped model (random weights) and data, all seven linear layer types targeted:
  floor  - forward + backward to the inputs only (no weight gradients, no hooks): what any warm-up costs at least
  gw     - smt_nb's hook-based GW with statistic `mean_abs` (O(R·C) state per matrix)
  dense  - target weights require grad; autograd accumulates full gradients in .grad over the warm-up (what the official code does,
           before it copies them to fp32)
Reported: peak memory of each run and the extra above the floor. CPU: the process's peak resident set (ru_maxrss); CUDA:
torch.cuda.max_memory_allocated. Usage: python benchmarks/gw_memory.py [--hidden 1024 --layers 4 --steps 4 --device cpu|cuda] [--json]
"""
import argparse
import json
import resource
import subprocess
import sys

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(hidden, layers, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=int(2.75 * hidden), num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 256))
    return LlamaForCausalLM(cfg).to(device)


def one_run(variant, hidden, layers, steps, device):
    import torch
    from smt_nb.core import find_targets, make_grids
    from smt_nb.selection import score_gw, gradients_to_inputs_only
    from smt_nb.train import counting_batches
    from types import SimpleNamespace
    model = build(hidden, layers, device)
    batches = [{k: v.to(device) for k, v in b.items()} for b in counting_batches(steps, 512, batch_size=2, seq_len=128, seed=0)]
    targets = find_targets(model, TARGETS)
    grids = make_grids(targets, 64)
    target_bytes = sum(m.weight.numel() * 4 for m in targets.values())
    cuda = device.startswith("cuda")
    if cuda: torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if variant == "floor":
        with gradients_to_inputs_only(model):
            for b in batches: model(**b).loss.backward()
    elif variant == "gw":
        score_gw(model, targets, grids, batches, SimpleNamespace(statistic="mean_abs", warmup_steps=steps))
    elif variant == "dense":
        model.requires_grad_(False)
        for m in targets.values(): m.weight.requires_grad_(True)
        for b in batches: model(**b).loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(variant=variant, peak=peak, start=start, target_bytes=target_bytes)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON line at the end")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.variant:  # child process: one measurement
        print(json.dumps(one_run(a.variant, a.hidden, a.layers, a.steps, a.device)))
        return
    runs = {}
    for v in ("floor", "gw", "dense"):
        out = subprocess.run([sys.executable, __file__, "--variant", v, "--hidden", str(a.hidden), "--layers", str(a.layers),
                              "--steps", str(a.steps), "--device", a.device], capture_output=True, text=True)
        if out.returncode: sys.exit(f"the {v} run failed:\n{out.stderr}")
        runs[v] = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    res = dict(device=a.device, measure="cuda max_memory_allocated" if a.device.startswith("cuda") else "process peak RSS (ru_maxrss)",
               model=f"Llama-shaped, hidden {a.hidden}, {a.layers} layers, all 7 linear types targeted, block 64, {a.steps} micro-batches of 2x128 tokens",
               targets_mib=round(runs["floor"]["target_bytes"] / mib, 1),
               floor_mib=round(runs["floor"]["peak"] / mib, 1), gw_mib=round(runs["gw"]["peak"] / mib, 1), dense_mib=round(runs["dense"]["peak"] / mib, 1),
               gw_extra_mib=round((runs["gw"]["peak"] - runs["floor"]["peak"]) / mib, 1),
               dense_extra_mib=round((runs["dense"]["peak"] - runs["floor"]["peak"]) / mib, 1))
    if not a.json:
        for k, v in res.items(): print(f"{k:>16}: {v}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
