"""One rank of the DDP check (run by tests/test_reliability.py through torchrun, 2 CPU processes, gloo via accelerate).

Each rank warms up and trains on its half of every batch; GW statistics are summed across ranks inside smt_nb, so every rank must
select the same blocks, and DDP's averaged gradients must reproduce a single process training on the whole batch.
Usage: torchrun --nproc_per_node 2 tests/ddp_worker.py OUT_DIR
"""
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from smt_nb.core import SMTConfig, prepare_smt, smt_layers
from conftest import ARCHS, ALL_LINEAR, VOCAB
from smt_nb.train import counting_batches

STEPS, LR = 3, 0.5


def config():
    return SMTConfig(block_size=16, sparsity=0.1, warmup_steps=STEPS, target_modules=ALL_LINEAR["llama"])


def full_batches():
    return counting_batches(STEPS, VOCAB, batch_size=4, seq_len=12, seed=7)


def shard(batches, rank, world):
    "Rank `rank`'s rows of every batch."
    per = batches[0]["input_ids"].shape[0] // world
    return [{k: v[rank * per:(rank + 1) * per] for k, v in b.items()} for b in batches]


def main(out: Path):
    acc = Accelerator(cpu=True)
    rank, world = acc.process_index, acc.num_processes
    data = shard(full_batches(), rank, world)
    model = prepare_smt(ARCHS["llama"](), config(), dataloader=data)
    sel = model.smt_selection
    (out / f"blocks_rank{rank}.json").write_text(json.dumps({n: b.tolist() for n, b in sel.blocks.items()}))
    opt = torch.optim.SGD([l.smt_delta for l in smt_layers(model).values()], lr=LR)
    ddp_model, opt = acc.prepare(model, opt)
    for b in data:
        acc.backward(ddp_model(**b).loss)
        opt.step(); opt.zero_grad()
    if acc.is_main_process:
        inner = acc.unwrap_model(ddp_model)
        torch.save({"scores": sel.scores, "deltas": {n: l.smt_delta.detach() for n, l in smt_layers(inner).items()}, "world": world},
                   out / "ddp.pt")
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
