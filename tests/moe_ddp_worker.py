"""One rank of the MoE DDP check (run by tests/test_moe_distributed.py through torchrun: 2 CPU processes, gloo via accelerate).

Tiny Mixtral with SMT blocks in q/v and in both fused expert weights, with each experts implementation ("grouped_mm", "eager"). On
rank 1 every layer's router chooses its top-k again with expert X's logit at -inf, so rank 1 routes no token to X, while X has
blocks (with these data, one expert weight has blocks in X alone). GW warms up under that routing (statistics summed over ranks: the
same blocks on both ranks), then DDP trains with accelerate's default find_unused_parameters=False: on rank 1 X's blocks get no
gradient from any token, yet Δ must be in the graph there too, or DDP would wait for its gradient forever. The test compares the
deltas with one process that accumulates both halves' gradients (half 1 routed as rank 1 routes it).
First, warm-ups in which no expert matmul of layer 1 runs on rank 1 (its MoE block skipped there): GW and AW sum their statistics
over ranks and count the matmuls over ranks before deciding that none ran, so both ranks select the same blocks; when none ran on
any rank, every rank raises (a rank raising alone would leave the other waiting in the next collective).
Usage: torchrun --nproc_per_node 2 tests/moe_ddp_worker.py OUT_DIR
"""
import json
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from smt_nb.core import SMTConfig, prepare_smt, smt_layers
from smt_nb.experts import smt_experts
from smt_nb.train import counting_batches, smt_parameters
from ddp_worker import shard
from test_architectures import V, build

EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]
IMPLEMENTATIONS = ("grouped_mm", "eager")
STEPS, LR = 3, 0.5
X = 1      # the expert rank 1 never routes to; with SEED's data, model.layers.1.mlp.experts.gate_up_proj has blocks in X alone
SEED = 8


def config():
    return SMTConfig(block_size=16, sparsity=0.05, method="gw", warmup_steps=STEPS, target_modules=["q_proj", "v_proj"],
                     target_parameters=EXPERTS, budget="per_type")


def full_batches():
    return counting_batches(STEPS, V, batch_size=4, seq_len=12, seed=SEED)


class WithoutExpert:
    """Forward hook on every layer's router (MixtralTopKRouter: (logits, scores, indices)): while `on`, the top-k is chosen again with
    `expert`'s logit at -inf (scores renormalised as the router does); `routed` counts the token slots sent to `expert` either way."""
    def __init__(self, model, expert: int):
        self.expert, self.on, self.routed = expert, False, 0
        for layer in model.model.layers: layer.mlp.gate.register_forward_hook(self)

    def __call__(self, router, args, output):
        logits, scores, indices = output
        if self.on:
            logits = logits.masked_fill(torch.arange(logits.shape[-1]) == self.expert, float("-inf"))
            top, indices = torch.topk(torch.softmax(logits.float(), dim=-1), router.top_k, dim=-1)
            scores = top / top.sum(dim=-1, keepdim=True)
        self.routed += int((indices == self.expert).sum())
        return logits, scores, indices


def prepared(implementation: str, rank: int, data):
    "Mixtral with `implementation`, X masked on rank 1, warmed up (GW) on `data`: (model, its router hook, token slots sent to X)."
    model = build("mixtral")
    model.set_experts_implementation(implementation)
    router = WithoutExpert(model, X)
    router.on = rank == 1
    model = prepare_smt(model, config(), dataloader=data)
    warmup, router.routed = router.routed, 0
    return model, router, warmup


def without_experts(model, layer: int, skipping=lambda: True):
    "While `skipping()`, `layer`'s MoE block returns zeros without running its router or experts: no expert matmul of that layer runs."
    block = model.model.layers[layer].mlp
    run = block.forward
    block.forward = lambda hidden_states: torch.zeros_like(hidden_states) if skipping() else run(hidden_states)


def uneven_warmups(rank: int, data) -> dict:
    "The blocks GW and AW select with layer 1's experts skipped on rank 1 only, and the error with them skipped on every rank."
    report = {}
    for method in ("gw", "aw"):
        model = build("mixtral")
        if rank == 1: without_experts(model, 1)
        model = prepare_smt(model, replace(config(), method=method), dataloader=data)
        report[method] = {n: b.tolist() for n, b in model.smt_selection.blocks.items()}
    model = build("mixtral")
    without_experts(model, 1)
    try: prepare_smt(model, config(), dataloader=data); report["never"] = ""
    except ValueError as e: report["never"] = str(e)
    return report


def deltas_of(model) -> dict:
    return {n: m.smt_delta.detach().clone() for n, m in {**smt_layers(model), **smt_experts(model)}.items()}


def main(out: Path):
    acc = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])  # a hang fails, not waits
    rank, world = acc.process_index, acc.num_processes
    data = shard(full_batches(), rank, world)
    report = dict(uneven=uneven_warmups(rank, data))
    for implementation in IMPLEMENTATIONS:
        model, router, warmup = prepared(implementation, rank, data)
        opt = torch.optim.SGD(smt_parameters(model), lr=LR)
        ddp_model, opt = acc.prepare(model, opt)
        for b in data:
            acc.backward(ddp_model(**b).loss)
            opt.step(); opt.zero_grad()
        report[implementation] = dict(blocks={n: b.tolist() for n, b in model.smt_selection.blocks.items()},
                                      routed_warmup=warmup, routed_training=router.routed,
                                      find_unused_parameters=ddp_model.find_unused_parameters, ddp=type(ddp_model).__name__)
        torch.save(deltas_of(acc.unwrap_model(ddp_model)), out / f"{implementation}_rank{rank}.pt")
        acc.wait_for_everyone()
    (out / f"ddp_rank{rank}.json").write_text(json.dumps(report))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
