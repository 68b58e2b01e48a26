"""One rank of the MoE FSDP2 check (run by tests/test_moe_distributed.py through torchrun: 2 CPU processes, gloo).

Tiny Mixtral and Qwen3-MoE with SMT blocks in the attention's q/v projections and in both fused expert weights (`target_parameters`):
  1. the plain FSDP2 recipe: GW warm-up on each rank's half of every batch (statistics summed over ranks inside smt_nb), then
     `switch_path(model, "reference")` (the expert weights keep their base values: FSDP2 shards them), `fully_shard` on every decoder
     layer and on the model, 3 steps of SGD, and again of AdamW (its per-element state sharded with the deltas); one adapter saved
     (every rank gathers, rank 0 writes) and loaded back onto a second sharded model; without switch_path, the in-place expert weights
     are refused at their first forward, naming the fix.
  2. `SMTTrainer(fsdp=True, fsdp_config={"version": 2, ...})` on in-place experts (the trainer must move them to the reference path
     before FSDP2 shards them), with each state-dict type: 4 steps straight with checkpoints every 2, then a fresh run resumed from
     checkpoint-2.
Usage: torchrun --nproc_per_node 2 tests/moe_fsdp_worker.py OUT_DIR
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from smt_nb.core import SMTConfig, load_smt, prepare_smt, smt_layers, switch_path
from smt_nb.experts import smt_experts
from smt_nb.train import counting_batches, smt_parameters
from ddp_worker import shard
from fsdp_worker import base_elements, fully_shard_model
from fsdp_trainer_worker import STATE_DICT_TYPES, run_fsdp_on_cpu
from test_architectures import V, build

MODEL_TYPES = ("mixtral", "qwen3_moe")
DECODER_LAYERS = {"mixtral": "MixtralDecoderLayer", "qwen3_moe": "Qwen3MoeDecoderLayer"}  # what the trainer's FSDP wraps
EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]
STEPS = 3
OPTIMIZERS = {"sgd": lambda params: torch.optim.SGD(params, lr=0.5),
              "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)}  # per-element state: sharded with Δ


def config():
    "The same config on every rank; each type its share of the budget, so the experts and the attention both get blocks."
    return SMTConfig(block_size=16, sparsity=0.05, method="gw", warmup_steps=STEPS, target_modules=["q_proj", "v_proj"],
                     target_parameters=EXPERTS, budget="per_type")


def full_batches():
    return counting_batches(STEPS, V, batch_size=4, seq_len=12, seed=7)


def probe():
    "A batch every rank feeds to the sharded model after training (its logits are compared with an unsharded model's)."
    return torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(11))


def deltas_of(model) -> dict:
    "Every Δ by its module's (2-D) or weight's (experts) name, whole: under FSDP2 a gather, so every rank calls it."
    from smt_nb.adapters import whole
    return {n: whole(m.smt_delta.detach()).clone() for n, m in {**smt_layers(model), **smt_experts(model)}.items()}


def local_parts(model) -> dict:
    return {n: m.smt_delta.detach().to_local() for n, m in {**smt_layers(model), **smt_experts(model)}.items()}


def train(model, data, optimizer: str):
    opt = OPTIMIZERS[optimizer](smt_parameters(model))  # after sharding: the DTensor deltas
    for b in data:
        model(**b).loss.backward(); opt.step(); opt.zero_grad()
    return model


def sharded(model):
    "The recipe: the reference path (2-D layers and expert weights), then `fully_shard` on every decoder layer and on the model."
    return fully_shard_model(switch_path(model, "reference"))


def plain_fsdp(out: Path, model_type: str, rank: int, world: int) -> dict:
    data = shard(full_batches(), rank, world)
    model = prepare_smt(build(model_type), config(), dataloader=data)
    sel = model.smt_selection
    report = dict(blocks={n: b.tolist() for n, b in sel.blocks.items()})
    report["local"], report["total"] = base_elements(sharded(model))
    report["paths"] = sorted({m.path for m in [*smt_layers(model).values(), *smt_experts(model).values()]})
    train(model, data, "sgd")
    deltas = {"sgd": deltas_of(model)}
    model.save_pretrained(out / model_type / "adapter", is_main_process=rank == 0)  # every rank gathers, rank 0 writes
    with torch.no_grad(): logits = model(input_ids=probe()).logits
    twin = sharded(prepare_smt(build(model_type), config(), selection=sel))
    load_smt(twin, out / model_type / "adapter")                                  # onto a sharded model: each rank keeps its part
    mine, loaded = local_parts(model), local_parts(twin)
    report["reloaded"] = sorted(mine) == sorted(loaded) and all(torch.equal(mine[n], loaded[n]) for n in mine)
    report["files"] = sorted(p.name for p in (out / model_type / "adapter").iterdir())
    adamw = train(sharded(prepare_smt(build(model_type), config(), selection=sel)), data, "adamw")
    deltas["adamw"] = deltas_of(adamw)
    writer = fully_shard_model(prepare_smt(build(model_type), config(), selection=sel))  # no switch_path: experts in place
    report["writer_paths"] = sorted({m.path for m in smt_experts(writer).values()})
    opt = torch.optim.SGD(smt_parameters(writer), lr=0.5)
    try: writer(**data[0]).loss.backward(); opt.step(); report["refused"] = ""
    except RuntimeError as e: report["refused"] = str(e)  # the in-place path must not write into sharded expert weights: refused
    if rank == 0:
        torch.save(deltas, out / model_type / "deltas.pt")
        torch.save(logits, out / model_type / "logits.pt")
    return report


def trainer_rows():
    "The combined batches as rows: Trainer gives each rank every other row of each batch of 4 (2 per device)."
    return [{k: v[i] for k, v in b.items()} for b in full_batches() for i in range(b["input_ids"].shape[0])]


def through_trainer(out: Path, model_type: str, rank: int, world: int, state_dict_type: str, resume: bool) -> dict:
    "4 steps with checkpoints every 2 (or from checkpoint-2 on), experts left in place: the trainer moves them before sharding."
    from transformers import TrainerCallback, TrainingArguments
    from smt_nb.train import SMTTrainer
    class CountSteps(TrainerCallback):
        steps = 0
        def on_step_end(self, *args, **kwargs): CountSteps.steps += 1
    folder = out / f"trainer_{model_type}_{state_dict_type}"
    args = TrainingArguments(output_dir=str(folder), max_steps=4, save_steps=2, per_device_train_batch_size=2,
                             learning_rate=1e-2, lr_scheduler_type="constant", weight_decay=0.0, report_to=[], use_cpu=True,
                             dataloader_drop_last=True, seed=0, disable_tqdm=True,
                             fsdp=True, fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": [DECODER_LAYERS[model_type]],
                                                     "state_dict_type": state_dict_type})
    model = prepare_smt(build(model_type), config(), dataloader=shard(full_batches(), rank, world))
    before = sorted({m.path for m in smt_experts(model).values()})
    trainer = SMTTrainer(model=model, args=args, train_dataset=trainer_rows(), callbacks=[CountSteps()])
    paths = sorted({m.path for m in smt_experts(model).values()})
    trainer.train(resume_from_checkpoint=str(folder / "checkpoint-2") if resume else None)
    deltas = deltas_of(trainer.model)  # a gather: every rank takes part
    if rank == 0: torch.save(deltas, out / f"{folder.name}_{'resumed' if resume else 'straight'}.pt")
    return dict(fsdp=trainer.is_fsdp_enabled, paths_before=before, paths=paths, steps_run=CountSteps.steps,
                skipped=trainer.nonfinite_guard.skipped, checkpoint=sorted(p.name for p in (folder / f"checkpoint-{4 if resume else 2}").iterdir()))


def main(out: Path):
    run_fsdp_on_cpu()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report = {}
    for model_type in MODEL_TYPES:
        report[model_type] = plain_fsdp(out, model_type, rank, world)
        dist.barrier()
    for model_type in MODEL_TYPES:
        for kind in STATE_DICT_TYPES:
            for resume in (False, True):
                report[f"trainer_{model_type}_{kind}_{'resumed' if resume else 'straight'}"] = \
                    through_trainer(out, model_type, rank, world, kind, resume)
                dist.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
