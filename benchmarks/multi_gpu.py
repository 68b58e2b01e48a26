"""SMT training with data parallelism on several GPUs (accelerate + DDP over NCCL).

Every rank warms up GW on its own shard of the data (statistics are summed across ranks inside prepare_smt), so all ranks must
select the same blocks; DDP averages the block gradients, so all ranks must end with the same weights. Both are checked here,
and tokens/s is reported for comparison with a one-GPU run of the same script.
Usage: torchrun --nproc_per_node N benchmarks/multi_gpu.py [--json out.json]   (N=1 gives the baseline)
Model: Llama-3.2-1B shape (random weights), bf16, 4 x 1024 tokens per GPU per step, SMT at LoRA-r64's parameter count.
"""
import argparse
import hashlib
import json
import time

import torch
import torch.distributed as dist
from accelerate import Accelerator

from smt_nb.core import SMTConfig, prepare_smt, smt_layers
from smt_nb.train import smt_parameters

from model import BATCH, SEQ, TARGETS, build  # benchmarks/model.py

SPARSITY, WARMUP_BATCHES, STEPS, WARM_STEPS = 0.0463, 4, 10, 3


def rank_batches(n, rank):
    g = torch.Generator(device="cuda").manual_seed(1000 + rank)  # each rank its own data
    return [dict(input_ids=(ids := torch.randint(0, 128256, (BATCH, SEQ), device="cuda", generator=g)), labels=ids) for _ in range(n)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--layers", type=int, default=16)
    a = p.parse_args()
    acc = Accelerator()
    rank, world = acc.process_index, acc.num_processes
    model = build(a.layers)
    t0 = time.perf_counter()
    model = prepare_smt(model, SMTConfig(block_size=256, sparsity=SPARSITY, warmup_steps=WARMUP_BATCHES, target_modules=TARGETS),
                        dataloader=rank_batches(WARMUP_BATCHES, rank))
    warmup_s = time.perf_counter() - t0
    sel = model.smt_selection
    digest = hashlib.sha256(json.dumps({n: b.tolist() for n, b in sel.blocks.items()}, sort_keys=True).encode()).hexdigest()
    digests = [None] * world
    if world > 1: dist.all_gather_object(digests, digest)
    else: digests = [digest]

    opt = torch.optim.AdamW(smt_parameters(model), lr=2e-3)
    ddp, opt = acc.prepare(model, opt)
    data = rank_batches(WARM_STEPS + STEPS, rank)
    for i, b in enumerate(data):
        if i == WARM_STEPS: torch.cuda.synchronize(); t0 = time.perf_counter()
        acc.backward(ddp(**b).loss); opt.step(); opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    # same weights everywhere: the largest difference of any rank's deltas from rank 0's
    flat = torch.cat([l.smt_delta.detach().flatten() for l in smt_layers(acc.unwrap_model(ddp)).values()])
    ref = flat.clone()
    if world > 1: dist.broadcast(ref, 0)
    max_diff = (flat - ref).abs().max()
    if world > 1: dist.all_reduce(max_diff, op=dist.ReduceOp.MAX)
    res = dict(world=world, device=torch.cuda.get_device_name(), same_blocks=len(set(digests)) == 1, n_blocks=sel.n_blocks,
               trainable=sel.n_trainable, max_delta_diff_across_ranks=max_diff.item(), tokens_per_s=world * BATCH * SEQ * STEPS / dt,
               step_ms=dt / STEPS * 1e3, gw_warmup_s=warmup_s, peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    if acc.is_main_process:
        print(json.dumps(res))
        if a.json: open(a.json, "w").write(json.dumps(res, indent=1))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
