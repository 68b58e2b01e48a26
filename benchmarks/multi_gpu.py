"""SMT on several GPUs, side by side: one GPU, DDP (the whole base on every GPU) and FSDP2 (`fully_shard`: the base sharded).

Model: Llama-3.2-1B shape (16 layers, tied embeddings; 4 x 1024 tokens per GPU per step) or Llama-3-8B (32 layers, separate
lm_head, activation checkpointing; 1 x 1024 tokens per GPU per step, the memory-bound setting FSDP is for: activations and logits
are per GPU, sharding does not divide them), random weights, bf16, AdamW, SMT with GW at LoRA-r64's number of trainable values (256² blocks). Every rank warms up
GW on its own data (statistics are summed across ranks inside prepare_smt), so all ranks must select the same blocks; DDP and FSDP
average the block gradients, so every rank must end with the same deltas. Both are checked, per configuration, with tokens/s
(median step, CUDA events on rank 0), peak memory per GPU during training (setup excluded: GW runs on the whole model before
sharding) and the base's elements held per GPU. Each configuration saves its adapter once (save_pretrained on every rank, rank 0
writes).

The single-GPU and DDP runs use smt_nb's default in-place path; FSDP2 runs the reference path (W + ΔW built from the gathered
weight in each forward), since FSDP2 holds the base weights as shards between forwards. FSDP2 units: at the 1B shape the plain recipe
(every decoder layer, then the root); at the 8B shape as accelerate's plugin makes them (also the input embedding, and the final
norm with the LM head), so that the root's large embedding and LM head are not held whole through the step.
The "agreement" shape runs DDP and FSDP2 on a 2-layer model with SGD (Adam's normalised first steps turn rounding differences into ±lr
flips), so that the two adapters can be compared value by value: --compare loads both onto fresh bases on one GPU and compares
their deltas and logits.

Usage:
  python benchmarks/multi_gpu.py --all [--shapes 1b,8b,agreement] [--gpus 2] [--out benchmarks/results]   # every configuration, then the comparison
  torchrun --nproc_per_node N benchmarks/multi_gpu.py --mode single|ddp|fsdp --shape 1b --out DIR  # one configuration
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from smt_nb.blocks import lora_params
from smt_nb.core import SMTConfig, prepare_smt, smt_layers, switch_path, load_smt, find_targets
from smt_nb.adapters import whole

from model import SEQ, TARGETS, build, median  # benchmarks/model.py

LORA_RANK, WARMUP_BATCHES, WARM_STEPS, STEPS, VOCAB = 64, 2, 3, 10, 128256
SHAPES = {"1b": dict(layers=16, tie=True, checkpointing=False, batch=4, optimizer="adamw", units="plain"),
          "8b": dict(layers=32, tie=False, checkpointing=True, batch=1, optimizer="adamw", units="accelerate"),
          "agreement": dict(shape="1b", layers=2, tie=True, checkpointing=False, batch=4, optimizer="sgd", units="accelerate")}
UNITS = {"plain": "plain: every decoder layer, then the root",
         "accelerate": "accelerate: every decoder layer, the input embedding, the final norm with the LM head (with the embedding "
                       "when tied), then the root"}


def rank_batches(n, rank, batch):
    "Each rank its own data (the same for a rank in every configuration, so DDP's and FSDP's runs can be compared)."
    g = torch.Generator(device="cuda").manual_seed(1000 + rank)
    return [dict(input_ids=(ids := torch.randint(0, VOCAB, (batch, SEQ), device="cuda", generator=g)), labels=ids) for _ in range(n)]


def shard(model, tied, units):
    "FSDP2 units, `plain` (decoder layers, then the root) or as accelerate's plugin makes them (also the embedding and the tail)."
    from torch.distributed.fsdp import fully_shard
    for layer in model.model.layers: fully_shard(layer)
    if units == "plain": return fully_shard(model)
    if not tied: fully_shard(model.model.embed_tokens)
    fully_shard([model.model.norm, model.lm_head] + ([model.model.embed_tokens] if tied else []), reshard_after_forward=False)
    fully_shard(model)


def matched_sparsity(model):
    "The fraction of the target weights that LoRA r=64 on the same layers trains."
    shapes = [(m.out_features, m.in_features) for m in find_targets(model, TARGETS).values()]
    return lora_params(LORA_RANK, shapes) / sum(o * i for o, i in shapes)


def gathered(obj, world):
    "Every rank's `obj` (a list in rank order)."
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def train_one(mode, shape, out: Path):
    "One configuration on this process's GPU (every rank runs it); rank 0 writes the JSON row."
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group("nccl")
    rank, world, local = dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    spec = SHAPES[shape]
    model = build(spec.get("shape", shape), spec["layers"], tie=spec["tie"])
    sparsity = matched_sparsity(model)
    t0 = time.perf_counter()
    model = prepare_smt(model, SMTConfig(block_size=256, sparsity=sparsity, warmup_steps=WARMUP_BATCHES, target_modules=TARGETS),
                        dataloader=rank_batches(WARMUP_BATCHES, rank, spec["batch"]))
    warmup_s = time.perf_counter() - t0
    sel = model.smt_selection
    digest = hashlib.sha256(json.dumps({n: b.tolist() for n, b in sel.blocks.items()}, sort_keys=True).encode()).hexdigest()
    if spec["checkpointing"]: model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
    if mode == "fsdp":
        switch_path(model, "reference")            # FSDP2 holds shards of the base weight: never write blocks into them
        shard(model, spec["tie"], spec["units"])
        net = model
    elif mode == "ddp": net = DistributedDataParallel(model, device_ids=[local])
    else: net = model
    base = [p for n, p in model.named_parameters() if not n.endswith("smt_delta")]
    base_local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in base)
    base_total = sum(p.numel() for p in base)
    deltas = [l.smt_delta for l in smt_layers(model).values()]
    opt = torch.optim.AdamW(deltas, lr=2e-3) if spec["optimizer"] == "adamw" else torch.optim.SGD(deltas, lr=1.0)
    torch.cuda.synchronize(); torch.cuda.empty_cache()
    resident_gib = torch.cuda.memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i, b in enumerate(rank_batches(WARM_STEPS + STEPS, rank, spec["batch"])):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        net(**b).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        end.record(); end.synchronize()
        if i >= WARM_STEPS: times.append(start.elapsed_time(end) / 1e3)
    step_s = median(times)
    peak = torch.tensor(torch.cuda.max_memory_allocated() / 2**30, device="cuda")
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    # every rank's deltas, whole (under FSDP2: gathered), against rank 0's
    flat = torch.cat([whole(l.smt_delta.detach()).flatten() for l in smt_layers(model).values()])
    ref = flat.clone(); dist.broadcast(ref, 0)
    max_diff = (flat - ref).abs().max(); dist.all_reduce(max_diff, op=dist.ReduceOp.MAX)
    digests, locals_ = gathered(digest, world), gathered(base_local, world)
    adapter = out / f"adapter_{shape}_{mode}{world}"
    model.save_pretrained(adapter, is_main_process=rank == 0)  # every rank calls it: FSDP2 gathers the deltas, rank 0 writes
    dist.barrier()
    res = dict(config=f"{mode}{world}", mode=mode, world=world, shape=shape, layers=spec["layers"], device=torch.cuda.get_device_name(),
               torch=torch.__version__, path=next(iter(smt_layers(model).values())).path, checkpointing=spec["checkpointing"],
               batch_per_gpu=f"{spec['batch']} x {SEQ}", optimizer=spec["optimizer"], sparsity=sparsity, n_blocks=sel.n_blocks, trainable=sel.n_trainable,
               same_blocks=len(set(digests)) == 1, max_delta_diff_across_ranks=max_diff.item(),
               tokens_per_s=world * spec["batch"] * SEQ / step_s, step_ms=step_s * 1e3, step_ms_spread=[min(times) * 1e3, max(times) * 1e3],
               peak_gib_per_gpu=peak.item(), resident_gib_before_training=resident_gib,
               base_elements_per_gpu=locals_, base_elements=base_total, base_fraction_per_gpu=max(locals_) / base_total,
               units=UNITS[spec["units"]] if mode == "fsdp" else None, gw_warmup_s=warmup_s, adapter_files=sorted(p.name for p in adapter.iterdir()))
    if rank == 0:
        print(json.dumps(res), flush=True)
        (out / f"multi_gpu_{shape}_{mode}{world}.json").write_text(json.dumps(res, indent=1))
    dist.destroy_process_group()


def compare(shape, gpus, out: Path):
    "Load the FSDP and the DDP adapters onto fresh bases on one GPU: their deltas and logits side by side."
    spec, torch_device = SHAPES[shape], torch.cuda.current_device()
    probe = torch.randint(0, VOCAB, (1, 256), device="cuda", generator=torch.Generator(device="cuda").manual_seed(7))
    loaded, logits, blocks = {}, {}, {}
    for mode in ("fsdp", "ddp"):
        model = load_smt(build(spec.get("shape", shape), spec["layers"], tie=spec["tie"]), out / f"adapter_{shape}_{mode}{gpus}")  # a fresh base
        loaded[mode] = {n: l.smt_delta.detach().clone() for n, l in smt_layers(model).items()}
        blocks[mode] = {n: l.blocks.tolist() for n, l in smt_layers(model).items()}
        with torch.no_grad(): logits[mode] = model(input_ids=probe).logits.float()
        del model; torch.cuda.empty_cache()
    a, b = (torch.cat([d[n].flatten() for n in sorted(d)]) for d in (loaded["fsdp"], loaded["ddp"]))
    res = dict(shape=shape, gpus=gpus, device=torch.cuda.get_device_name(torch_device), same_blocks=blocks["fsdp"] == blocks["ddp"],
               fsdp_vs_ddp_delta_norm_rel=((a - b).norm() / b.norm()).item(), delta_norm=b.norm().item(),
               fsdp_vs_ddp_logits_max_abs=(logits["fsdp"] - logits["ddp"]).abs().max().item(),
               logits_abs_max=logits["ddp"].abs().max().item())
    print(json.dumps(res), flush=True)
    (out / f"multi_gpu_{shape}_fsdp_vs_ddp.json").write_text(json.dumps(res, indent=1))


def run_all(shapes, gpus, out: Path):
    "Every configuration in its own torchrun, one after another (their GPUs start empty); for the agreement run, the comparison."
    here = Path(__file__).resolve()
    for shape in shapes:
        for mode, n in [("single", 1), ("ddp", gpus), ("fsdp", gpus)][shape == "agreement":]:
            subprocess.run(["torchrun", "--standalone", f"--nproc_per_node={n}", str(here), "--mode", mode, "--shape", shape,
                            "--out", str(out)], check=True)
        if shape == "agreement":
            subprocess.run([sys.executable, str(here), "--compare", "--shape", shape, "--gpus", str(gpus), "--out", str(out)], check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--all", action="store_true", help="run every configuration of --shapes, then the comparison")
    p.add_argument("--compare", action="store_true", help="load the FSDP and DDP adapters of --shape on one GPU and compare")
    p.add_argument("--mode", choices=["single", "ddp", "fsdp"], default="single")
    p.add_argument("--shape", choices=list(SHAPES), default="1b")
    p.add_argument("--shapes", default="1b,8b,agreement")
    p.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    if a.all: run_all(a.shapes.split(","), a.gpus, out)
    elif a.compare: compare(a.shape, a.gpus, out)
    else: train_one(a.mode, a.shape, out)


if __name__ == "__main__":
    main()
