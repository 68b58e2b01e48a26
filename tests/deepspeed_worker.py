"""One rank of the DeepSpeed check (run by tests/test_deepspeed.py through torchrun: 2 CPU processes, gloo, DS_ACCELERATOR=cpu).

Raw `deepspeed.initialize` after prepare_smt, ZeRO stages 1 and 2, torch's AdamW (`torch_adam`: no compiled DeepSpeed op): each rank
warms up GW and trains on its half of every batch, saves the adapter (every rank calls save_smt; the deltas are whole on every
rank under ZeRO-1/2), and writes a DeepSpeed checkpoint of the trained parameters only (`exclude_frozen_parameters`: the deltas
and their optimizer state, never the base) at step 2 of 4; a fresh engine resumes from it. ZeRO-3: a model built under
`deepspeed.zero.Init` is refused by prepare_smt with a message naming the alternatives. Then SMTTrainer with
`TrainingArguments(deepspeed=...)` (ZeRO-2): 4 steps with checkpoints every 2, and a fresh run resumed from checkpoint-2.
Usage: torchrun --nproc_per_node 2 tests/deepspeed_worker.py OUT_DIR
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from smt_nb.core import prepare_smt, save_smt, smt_layers
from smt_nb.train import smt_parameters
from conftest import ARCHS
from ddp_worker import config, full_batches, shard

STEPS = 4  # full_batches() gives 3; the 4th repeats the first
LR = 1e-2


def ds_config(stage: int) -> dict:
    return {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": stage},
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


def zero3_refusal() -> str:
    import deepspeed
    with deepspeed.zero.Init(config_dict_or_path=ds_config(3)): model = ARCHS["llama"]()
    try: prepare_smt(model, config(), dataloader=None)
    except Exception as e: return f"{type(e).__name__}: {e}"
    return ""


def zero3_after_initialize(rank: int, world: int) -> str:
    "A prepared model that deepspeed.initialize partitions with stage 3: the first forward refuses, naming the alternatives."
    model = prepare_smt(ARCHS["llama"](), config(), dataloader=batches(rank, world)[:1])
    engine = engine_for(model, 3)
    try: engine(**batches(rank, world)[0])
    except Exception as e: return f"{type(e).__name__}: {e}"
    return ""


def through_trainer(out: Path, rank: int, world: int, resume: bool) -> dict:
    "SMTTrainer with TrainingArguments(deepspeed=ZeRO-2 config): 4 steps with checkpoints every 2, or from checkpoint-2 on."
    from transformers import TrainingArguments
    from smt_nb.train import SMTTrainer
    from fsdp_trainer_worker import trainer_rows
    config_ds = {**ds_config(2), "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                 "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "torch_adam": True}}}
    args = TrainingArguments(output_dir=str(out / "trainer"), max_steps=4, save_steps=2, per_device_train_batch_size=2,
                             learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0, report_to=[], dataloader_drop_last=True,
                             seed=0, disable_tqdm=True, deepspeed=config_ds)
    model = prepare_smt(ARCHS["llama"](), config(), dataloader=batches(rank, world)[:3])
    trainer = SMTTrainer(model=model, args=args, train_dataset=trainer_rows())
    trainer.train(resume_from_checkpoint=str(out / "trainer" / "checkpoint-2") if resume else None)
    step2 = out / "trainer" / "checkpoint-2"
    engine_files = {p.name: p.stat().st_size for p in next(step2.glob("global_step*")).iterdir()}
    return dict(deepspeed=trainer.is_deepspeed_enabled, deltas={n: d.tolist() for n, d in deltas(trainer.model).items()},
                checkpoint=sorted(p.name for p in step2.iterdir()), engine_files=engine_files)


def main(out: Path):
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report = {f"zero{stage}": train(stage, out, rank, world) for stage in (1, 2)}
    report["zero3_refusal"] = zero3_refusal()
    report["zero3_after_initialize"] = zero3_after_initialize(rank, world)
    for resume in (False, True):
        report[f"trainer_{'resumed' if resume else 'straight'}"] = through_trainer(out, rank, world, resume)
        dist.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
