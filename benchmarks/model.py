"""Whole-model training step on a GPU: a Llama-3.2-1B-shaped model (random weights), batch 4 × 1024 tokens, bf16, AdamW.
Full fine-tuning, LoRA (peft, all linear layers, rank matched to SMT's trainable values), SMT at three sparsities, and the floor
(frozen model, gradients flowing to the input). Tokens per second and peak memory, all in one run; plus the cost of GW selection
(time and extra memory) against accumulating full gradients. Usage: python benchmarks/model.py [--json out.json] [--layers 16]
"""
import argparse
import gc
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from smt_nb.blocks import lora_params, lora_rank_for
from smt_nb.core import SMTConfig, prepare_smt, find_targets, make_grids
from smt_nb.selection import score_gw
from smt_nb.train import smt_parameters

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH, SEQ, WARMUP, STEPS = 4, 1024, 3, 10


def build(layers):
    cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=8, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=500000.0)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.config.use_cache = False
    return model


def batch():
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, 128256, (BATCH, SEQ), device="cuda", generator=g)
    return dict(input_ids=ids, labels=ids)


def run(name, model, params):
    "Time WARMUP+STEPS training steps; report tokens/s and peak memory (model and optimizer included)."
    opt = torch.optim.AdamW(params, lr=1e-5) if params else None
    b = batch()
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    for i in range(WARMUP + STEPS):
        if i == WARMUP: torch.cuda.synchronize(); t0 = time.perf_counter()
        loss = model(**b).loss
        loss.backward()
        if opt: opt.step(); opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    trainable = sum(p.numel() for p in params) if params else 0
    r = dict(method=name, tokens_per_s=BATCH * SEQ * STEPS / dt, peak_gib=torch.cuda.max_memory_allocated() / 2**30, trainable=trainable)
    print(f"{name:<22} {r['tokens_per_s']:>9.0f} tok/s  {r['peak_gib']:6.2f} GiB  trainable {trainable / 1e6:8.2f} M", flush=True)
    return r


def gpu_busy(model, params):
    "Wall time vs summed GPU kernel time per training step (2 profiled steps): tells host-bound from GPU-bound."
    from torch.profiler import profile, ProfilerActivity
    opt, b = (torch.optim.AdamW(params, lr=1e-5) if params else None), batch()
    def step():
        model(**b).loss.backward()
        if opt: opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(2): step()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2): step()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / 2 * 1e3
    busy = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in prof.key_averages()) / 2 / 1e3
    return dict(wall_ms=wall, gpu_kernel_ms=busy)


def free():
    gc.collect(); torch.cuda.empty_cache()


def gw_cost(layers):
    "GW selection (hooks, mean_abs) vs accumulating full target gradients in .grad, 4 micro-batches each: time and extra peak memory."
    out = {}
    for variant in ("floor", "gw_hooks", "full_gradients"):
        model = build(layers); model.requires_grad_(False)
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
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--lora-rank", type=int, default=64)
    a = p.parse_args()
    results = []

    def measure(name, make):
        "Build with `make() -> (model, params)`, time it, then free everything before the next method."
        model, params = make()
        results.append(run(name, model, params))
        del model, params
        gc.collect(); torch.cuda.empty_cache()
        assert torch.cuda.memory_allocated() < 2**28, "memory left over from the previous method would skew the next peak"

    def frozen():
        model = build(a.layers); model.requires_grad_(False); model.enable_input_require_grads(); return model, []
    def full():
        model = build(a.layers); return model, list(model.parameters())
    measure("floor (frozen)", frozen)
    measure("full fine-tuning", full)

    from peft import LoraConfig, get_peft_model
    shapes = [(m.out_features, m.in_features) for m in find_targets(build(a.layers), TARGETS).values()]
    gc.collect(); torch.cuda.empty_cache()
    target_values, lora_values = sum(o * i for o, i in shapes), lora_params(a.lora_rank, shapes)
    matched = lora_values / target_values

    def lora(rank):
        model = get_peft_model(build(a.layers), LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS))
        return model, [p for p in model.parameters() if p.requires_grad]
    def smt(sparsity):
        model = prepare_smt(build(a.layers), SMTConfig(block_size=256, sparsity=sparsity, method="random", target_modules=TARGETS))
        return model, smt_parameters(model)
    for sparsity in (0.01, matched, 0.10):  # each SMT budget next to LoRA with the same number of trainable values
        rank = a.lora_rank if sparsity == matched else max(1, round(lora_rank_for(sparsity * target_values, shapes)))
        measure(f"LoRA r={rank} (peft)", lambda: lora(rank))
        measure(f"SMT {sparsity:.2%}" + (f" (= LoRA r={a.lora_rank})" if sparsity == matched else ""), lambda: smt(sparsity))

    busy = {}
    for name, make in (("floor", frozen), ("smt_matched", lambda: smt(matched))):
        model, params = make()
        busy[name] = gpu_busy(model, params)
        del model, params; gc.collect(); torch.cuda.empty_cache()
        print(f"{name} profiled: wall {busy[name]['wall_ms']:.1f} ms/step, GPU kernels {busy[name]['gpu_kernel_ms']:.1f} ms/step (profiler on)")

    gw = gw_cost(a.layers)
    for v in ("gw_hooks", "full_gradients"): gw[v]["extra_over_floor_gib"] = gw[v]["extra_peak_gib"] - gw["floor"]["extra_peak_gib"]
    print(f"GW extra memory over the warm-up floor: hooks {gw['gw_hooks']['extra_over_floor_gib']:.2f} GiB, "
          f"full gradients {gw['full_gradients']['extra_over_floor_gib']:.2f} GiB")
    floor = results[0]
    for r in results:
        r["speed_vs_floor"] = r["tokens_per_s"] / floor["tokens_per_s"]; r["memory_vs_floor"] = r["peak_gib"] / floor["peak_gib"]
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, model=f"Llama-3.2-1B shape, {a.layers} layers, random weights",
                batch=f"{BATCH} x {SEQ} tokens", dtype="bf16 weights, AdamW", steps=f"{WARMUP} warm-up + {STEPS} timed",
                lora_values=lora_values, target_values=target_values)
    print("\nmethod                  tok/s     vs floor   peak GiB  vs floor")
    for r in results:
        print(f"{r['method']:<22} {r['tokens_per_s']:>8.0f}   {r['speed_vs_floor']:6.3f}   {r['peak_gib']:7.2f}   {r['memory_vs_floor']:6.3f}")
    if a.json:
        with open(a.json, "w") as f: json.dump(dict(meta=meta, results=results, gw_selection=gw, smt_profile=busy), f, indent=1)


if __name__ == "__main__":
    main()
