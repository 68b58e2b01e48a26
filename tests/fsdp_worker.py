"""One rank of the FSDP2 check (run by tests/test_fsdp.py through torchrun: 2 CPU processes, gloo).

The plain FSDP2 recipe after prepare_smt: `fully_shard` on every decoder layer, then on the model. Each rank warms up GW and trains
on its half of every batch (GW statistics are summed across ranks inside smt_nb, FSDP averages the gradients), saves one adapter
(every rank calls save_smt; the deltas are gathered, rank 0 writes), and loads it back onto a second sharded model.
Usage: torchrun --nproc_per_node 2 tests/fsdp_worker.py OUT_DIR
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from smt_nb.core import prepare_smt, smt_layers, load_smt, switch_path
from conftest import ARCHS, VOCAB
from ddp_worker import LR, config, full_batches, shard  # the same model, data and selection as the DDP check


def probe():
    "A batch every rank feeds to the sharded model after training (its logits are compared with an unsharded model's)."
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(11))


def fully_shard_model(model, **options):
    "The plain FSDP2 recipe: every decoder layer, then the root."
    for layer in model.model.layers: fully_shard(layer, **options)
    fully_shard(model, **options)
    return model


def base_elements(model):
    "(elements of the frozen base held by this rank, elements of the whole base)."
    base = [p for n, p in model.named_parameters() if not n.endswith("smt_delta")]
    return sum(p.to_local().numel() for p in base), sum(p.numel() for p in base)


def main(out: Path):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = shard(full_batches(), rank, world)
    model = prepare_smt(ARCHS["llama"](), config(), dataloader=data)
    (out / f"blocks_rank{rank}.json").write_text(json.dumps({n: b.tolist() for n, b in model.smt_selection.blocks.items()}))
    fully_shard_model(model)
    local, total = base_elements(model)
    opt = torch.optim.SGD([l.smt_delta for l in smt_layers(model).values()], lr=LR)
    for b in data:
        model(**b).loss.backward(); opt.step(); opt.zero_grad()
    model.save_pretrained(out / "adapter", is_main_process=rank == 0)  # accelerate's habit; sharded: every rank gathers, rank 0 writes
    dist.barrier()
    twin = fully_shard_model(prepare_smt(ARCHS["llama"](), config(), selection=model.smt_selection))
    load_smt(twin, out / "adapter")         # onto a sharded model: each rank keeps its part
    reloaded = all(torch.equal(a.smt_delta.to_local(), b.smt_delta.to_local())
                   for a, b in zip(smt_layers(model).values(), smt_layers(twin).values()))
    with torch.no_grad(): logits = model(input_ids=probe()).logits
    files = sorted(p.name for p in (out / "adapter").iterdir())
    writer = fully_shard_model(switch_path(prepare_smt(ARCHS["llama"](), config(), selection=model.smt_selection), "inplace"))
    opt = torch.optim.SGD([l.smt_delta for l in smt_layers(writer).values()], lr=LR)
    try: writer(**data[0]).loss.backward(); opt.step(); refused = ""
    except RuntimeError as e: refused = str(e)  # the in-place path must not write into sharded weights: refused
    # bf16 compute (FSDP's MixedPrecisionPolicy) with activation checkpointing: the sharded deltas, their gradients and the
    # optimizer stay float32; the result stays close to the float32 run's
    mixed = prepare_smt(ARCHS["llama"](), config(), selection=model.smt_selection)
    mixed.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
    fully_shard_model(mixed, mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
    opt = torch.optim.SGD([l.smt_delta for l in smt_layers(mixed).values()], lr=LR)
    mixed.train()
    for b in data:
        mixed(**b).loss.backward(); opt.step(); opt.zero_grad()
    mixed_dtypes = sorted({str(l.smt_delta.dtype) for l in smt_layers(mixed).values()})
    mixed_error = max(((a.smt_delta.full_tensor() - b.smt_delta.full_tensor()).norm() / b.smt_delta.full_tensor().norm()).item()
                      for a, b in zip(smt_layers(mixed).values(), smt_layers(model).values()))
    (out / f"rank{rank}.json").write_text(json.dumps(dict(local=local, total=total, reloaded=reloaded, files=files, refused=refused,
                                                          mixed_dtypes=mixed_dtypes, mixed_error=mixed_error)))
    if rank == 0: torch.save(logits, out / "logits.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
