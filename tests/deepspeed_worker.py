"""One rank of the DeepSpeed check (run by tests/test_deepspeed.py through torchrun: 2 CPU processes, gloo, DS_ACCELERATOR=cpu).

Raw `deepspeed.initialize` after prepare_smt, ZeRO stages 1 and 2, torch's AdamW (`torch_adam`: no compiled DeepSpeed op): each rank
warms up GW and trains on its half of every batch, saves the adapter (every rank calls save_smt; the deltas are whole on every
rank under ZeRO-1/2), and writes a DeepSpeed checkpoint of the trained parameters only (`exclude_frozen_parameters`: the deltas
and their optimizer state, never the base) at step 2 of 4; a fresh engine resumes from it. ZeRO-3: a model built under
`deepspeed.zero.Init` (every weight partitioned: persistence threshold 0): prepared with its weights gathered, additive layers,
then trained, saved and resumed the same way; a prepared model on the in-place/reference path that stage 3 partitions afterwards
is refused at its first forward. Under ZeRO-2 an in-place layer and a load into the engine are refused. Then SMTTrainer with
`TrainingArguments(deepspeed=...)` (ZeRO-2): 4 steps with checkpoints every 2, and a fresh run resumed from checkpoint-2.
Usage: torchrun --nproc_per_node 2 tests/deepspeed_worker.py OUT_DIR
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from smt_nb.core import load_smt, prepare_smt, save_smt, smt_layers, switch_path
from smt_nb.train import smt_parameters
from conftest import ARCHS
from ddp_worker import config, full_batches, shard

STEPS = 4  # full_batches() gives 3; the 4th repeats the first
LR = 1e-2


def ds_config(stage: int) -> dict:
    zero = {"stage": stage, "stage3_param_persistence_threshold": 0} if stage == 3 else {"stage": stage}  # 0: every weight partitioned
    return {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "zero_optimization": zero,
            "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": 0.0, "torch_adam": True}},
            "zero_allow_untested_optimizer": True, "steps_per_print": 10**6}


def batches(rank: int, world: int) -> list:
    data = shard(full_batches(), rank, world)
    return data + data[:STEPS - len(data)]


def engine_for(model, stage: int):
    import deepspeed  # here, not at the top: the test process imports this module for its data without importing DeepSpeed
    engine, *_ = deepspeed.initialize(model=model, model_parameters=smt_parameters(model), config=ds_config(stage))
    return engine


def deltas(model) -> dict: return {n: l.smt_delta.detach().clone() for n, l in smt_layers(model).items()}


def train(stage: int, out: Path, rank: int, world: int) -> dict:
    data = batches(rank, world)
    model = prepare_smt(ARCHS["llama"](), config(), dataloader=data[:3])
    sel = model.smt_selection
    engine = engine_for(model, stage)
    for step, b in enumerate(data, 1):
        engine.backward(engine(**b).loss); engine.step()
        if step == 2: engine.save_checkpoint(str(out / f"zero{stage}_ckpt"), tag="step2", exclude_frozen_parameters=True)
    straight = deltas(engine.module)
    save_smt(engine.module, out / f"zero{stage}_adapter")           # every rank: one folder, written under a lock, same bytes
    resumed = engine_for(prepare_smt(ARCHS["llama"](), config(), selection=sel), stage)
    resumed.load_checkpoint(str(out / f"zero{stage}_ckpt"), tag="step2", load_module_strict=False)  # the base is not in it
    for b in data[2:]:
        resumed.backward(resumed(**b).loss); resumed.step()
    files = sorted(p.name for p in (out / f"zero{stage}_ckpt" / "step2").iterdir())
    if rank == 0: torch.save(straight, out / f"zero{stage}_deltas.pt")
    return dict(resume_exact=all(torch.equal(straight[n], d) for n, d in deltas(resumed.module).items()), checkpoint=files,
                blocks={n: b.tolist() for n, b in sel.blocks.items()},
                checkpoint_bytes=sum(p.stat().st_size for p in (out / f"zero{stage}_ckpt" / "step2").iterdir()))


def zero3(out: Path, rank: int, world: int) -> dict:
    """ZeRO-3 with the model built under deepspeed.zero.Init (partitioned from the start): prepare_smt warms up GW with the weights
    gathered, the layers take the additive path; training, saving, a checkpoint without the base and resuming as for stages 1/2."""
    import deepspeed
    data = batches(rank, world)
    def partitioned(): 
        with deepspeed.zero.Init(config_dict_or_path=ds_config(3)): return ARCHS["llama"]()
    model = partitioned()
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):  # zero.Init draws other initial weights
        if rank == 0: torch.save({n: p.detach().clone() for n, p in model.named_parameters()}, out / "zero3_initial.pt")
    model = prepare_smt(model, config(), dataloader=data[:3])
    sel, paths = model.smt_selection, sorted({l.path for l in smt_layers(model).values()})
    engine = engine_for(model, 3)
    for step, b in enumerate(data, 1):
        engine.backward(engine(**b).loss); engine.step()
        if step == 2: engine.save_checkpoint(str(out / "zero3_ckpt"), tag="step2", exclude_frozen_parameters=True)
    save_smt(engine.module, out / "zero3_adapter")                 # every rank gathers the deltas; rank 0 writes
    straight = {n: w.tolist() for n, w in whole_deltas(engine.module).items()}
    resumed = engine_for(prepare_smt(partitioned(), config(), selection=sel), 3)
    resumed.load_checkpoint(str(out / "zero3_ckpt"), tag="step2", load_module_strict=False)
    for b in data[2:]:
        resumed.backward(resumed(**b).loss); resumed.step()
    try: engine.module.merge_and_unload(); merge = ""
    except NotImplementedError as e: merge = str(e)
    return dict(paths=paths, blocks={n: b.tolist() for n, b in sel.blocks.items()}, deltas=straight, merge_refusal=merge,
                resume_exact=straight == {n: w.tolist() for n, w in whole_deltas(resumed.module).items()},
                checkpoint_bytes=sum(p.stat().st_size for p in (out / "zero3_ckpt" / "step2").iterdir()))


def whole_deltas(model) -> dict:
    from smt_nb.adapters import whole
    return {n: whole(l.smt_delta) for n, l in smt_layers(model).items()}  # a gather under ZeRO-3: every rank calls it


def refusals_under_zero2(out: Path, rank: int, world: int) -> dict:
    """ZeRO-1/2 keep the deltas in a flat buffer stepped outside torch's optimizer hooks: an in-place layer refuses its first forward
    (the weights would never see the updates), and load_smt into the engine refuses (its float32 masters would overwrite the values)."""
    out_refusal, load_refusal = "", ""
    engine = engine_for(switch_path(prepare_smt(ARCHS["llama"](), config(), dataloader=batches(rank, world)[:1]), "inplace"), 2)
    try: engine(**batches(rank, world)[0])
    except RuntimeError as e: out_refusal = str(e)
    engine = engine_for(prepare_smt(ARCHS["llama"](), config(), dataloader=batches(rank, world)[:3]), 2)  # the adapter's blocks
    try: load_smt(engine.module, out / "zero2_adapter")
    except ValueError as e: load_refusal = str(e)
    return dict(inplace=out_refusal, load=load_refusal)


def zero3_after_initialize(rank: int, world: int) -> str:
    "A prepared model that deepspeed.initialize partitions with stage 3: the first forward refuses, naming the alternatives."
    model = prepare_smt(ARCHS["llama"](), config(), dataloader=batches(rank, world)[:1])
    engine = engine_for(model, 3)
    try: engine(**batches(rank, world)[0])
    except Exception as e: return f"{type(e).__name__}: {e}"
    return ""


def through_trainer(out: Path, rank: int, world: int, resume: bool, stage: int) -> dict:
    "SMTTrainer with TrainingArguments(deepspeed=ZeRO-`stage` config): 4 steps with checkpoints every 2, or from checkpoint-2 on."
    from transformers import TrainingArguments
    from smt_nb.train import SMTTrainer
    from fsdp_trainer_worker import trainer_rows
    config_ds = {**ds_config(stage), "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                 "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "torch_adam": True}}}
    args = TrainingArguments(output_dir=str(out / f"trainer{stage}"), max_steps=4, save_steps=2, per_device_train_batch_size=2,
                             learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0, report_to=[], dataloader_drop_last=True,
                             seed=0, disable_tqdm=True, deepspeed=config_ds)
    model = switch_path(prepare_smt(ARCHS["llama"](), config(), dataloader=batches(rank, world)[:3]), "inplace")  # GPUs' default
    trainer = SMTTrainer(model=model, args=args, train_dataset=trainer_rows())
    trainer.train(resume_from_checkpoint=str(out / f"trainer{stage}" / "checkpoint-2") if resume else None)
    step2 = out / f"trainer{stage}" / "checkpoint-2"
    engine_files = {p.name: p.stat().st_size for p in next(step2.glob("global_step*")).iterdir()}
    return dict(deepspeed=trainer.is_deepspeed_enabled, deltas={n: d.tolist() for n, d in whole_deltas(trainer.model).items()},
                paths=sorted({l.path for l in smt_layers(trainer.model).values()}),
                checkpoint=sorted(p.name for p in step2.iterdir()), engine_files=engine_files)


def resume_with_other_blocks(out: Path) -> str:
    "A DeepSpeed checkpoint loads deltas by position: resuming a model whose blocks differ must be refused, not trained on the wrong blocks."
    from transformers import TrainingArguments
    from smt_nb.train import SMTTrainer
    from fsdp_trainer_worker import trainer_rows
    other = prepare_smt(ARCHS["llama"](), {**vars(config()), "method": "random", "seed": 123})
    args = TrainingArguments(output_dir=str(out / "trainer2_other"), max_steps=4, per_device_train_batch_size=2, report_to=[],
                             deepspeed={**ds_config(2), "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "torch_adam": True}}})
    try: SMTTrainer(model=other, args=args, train_dataset=trainer_rows()).train(resume_from_checkpoint=str(out / "trainer2" / "checkpoint-2"))
    except ValueError as e: return str(e)
    return ""


def main(out: Path):
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report = {f"zero{stage}": train(stage, out, rank, world) for stage in (1, 2)}
    report["zero3"] = zero3(out, rank, world)
    report["zero2_refusals"] = refusals_under_zero2(out, rank, world)
    report["zero3_after_initialize"] = zero3_after_initialize(rank, world)
    for stage in (2, 3):
        for resume in (False, True):
            report[f"trainer{stage}_{'resumed' if resume else 'straight'}"] = through_trainer(out, rank, world, resume, stage)
            dist.barrier()
    report["trainer_other_blocks"] = resume_with_other_blocks(out)
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
