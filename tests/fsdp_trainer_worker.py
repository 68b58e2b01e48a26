"""One rank of the accelerate / Trainer FSDP2 check (run by tests/test_fsdp.py through torchrun: 2 CPU processes, gloo).

accelerate turns its FSDP plugin on only for accelerator backends (CUDA, XPU, NPU...): on CPU processes it falls back to plain
multi-CPU data parallelism and ignores the plugin, and so does `Trainer(fsdp=...)`. `run_fsdp_on_cpu` lifts that one check (after
accelerate has set everything else up, it marks the state as FSDP with the plugin, as accelerate does on GPUs), so the rest of
accelerate's and Trainer's FSDP2 code — `fsdp2_prepare_model`, the optimizer's parameter switch, checkpoint saving and loading —
runs here as it does on GPUs.
  1. accelerate: `Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2, ...))`, `prepare(model, optimizer)`,
     SGD on each rank's half of every batch, `save_pretrained` on every rank.
  2. Trainer (`SMTTrainer`, `fsdp=True, fsdp_config={"version": 2, ...}`) with each state-dict type: 4 steps straight with
     checkpoints every 2, then a fresh run resumed from checkpoint-2, on in-place layers (the trainer must move them to the
     reference path before FSDP2 shards their weights); a run whose gradient turns NaN on one rank at step 3 (both ranks skip that
     step).
Usage: torchrun --nproc_per_node 2 tests/fsdp_trainer_worker.py OUT_DIR
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from smt_nb.core import prepare_smt, smt_layers, switch_path
from conftest import ARCHS
from ddp_worker import LR, config, full_batches, shard
from fsdp_worker import base_elements

STATE_DICT_TYPES = ("FULL_STATE_DICT", "SHARDED_STATE_DICT")


def run_fsdp_on_cpu():
    "Let accelerate's FSDP plugin take effect on CPU processes (see the module's docstring)."
    import accelerate.state as state
    from accelerate.utils import DistributedType
    init = state.AcceleratorState.__init__
    def init_with_fsdp(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin
    state.AcceleratorState.__init__ = init_with_fsdp


def whole_deltas(model) -> dict:
    return {n: l.smt_delta.detach().full_tensor() for n, l in smt_layers(model).items()}


def through_accelerate(out: Path, rank: int, world: int) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=["LlamaDecoderLayer"])
    acc = Accelerator(cpu=True, fsdp_plugin=plugin)
    data = shard(full_batches(), rank, world)
    model = prepare_smt(ARCHS["llama"](), config(), dataloader=data)
    opt = torch.optim.SGD([l.smt_delta for l in smt_layers(model).values()], lr=LR)
    model, opt = acc.prepare(model, opt)
    for b in data:
        acc.backward(model(**b).loss); opt.step(); opt.zero_grad()
    model.save_pretrained(out / "accelerate_adapter", is_main_process=acc.is_main_process)
    local, total = base_elements(model)
    deltas = whole_deltas(model)  # a gather: every rank takes part
    if rank == 0: torch.save(deltas, out / "accelerate_deltas.pt")
    from torch.distributed.fsdp import FSDPModule
    return dict(fsdp=isinstance(model, FSDPModule), local=local, total=total)


def trainer_rows():
    "The combined batches as rows: Trainer gives each rank every other row of each batch of 4 (2 per device)."
    return [{k: v[i] for k, v in b.items()} for b in full_batches() for i in range(b["input_ids"].shape[0])]


def through_trainer(out: Path, rank: int, world: int, state_dict_type: str, resume: bool, poison_step: int | None = None) -> dict:
    "4 steps (or from checkpoint-2 on); `poison_step`: rank 0 makes one delta's gradient NaN before that step's optimizer step."
    from transformers import TrainingArguments, TrainerCallback
    from smt_nb.train import SMTTrainer
    class CountSteps(TrainerCallback):
        steps = 0
        def on_step_end(self, *args, **kwargs): CountSteps.steps += 1
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step + 1 == poison_step and rank == 0:
                next(iter(smt_layers(model).values())).smt_delta.grad.to_local().view(-1)[0] = float("nan")
    folder = out / f"{state_dict_type}{'_nan' if poison_step else ''}"
    args = TrainingArguments(output_dir=str(folder), max_steps=4, save_steps=2, per_device_train_batch_size=2,
                             learning_rate=1e-2, lr_scheduler_type="constant", weight_decay=0.0, report_to=[], use_cpu=True,
                             dataloader_drop_last=True, seed=0, disable_tqdm=True,
                             fsdp=True, fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                                                     "state_dict_type": state_dict_type})
    model = switch_path(prepare_smt(ARCHS["llama"](), config(), dataloader=shard(full_batches(), rank, world)), "inplace")
    trainer = SMTTrainer(model=model, args=args, train_dataset=trainer_rows(), callbacks=[CountSteps()])
    paths = sorted({l.path for l in smt_layers(model).values()})
    trainer.train(resume_from_checkpoint=str(folder / "checkpoint-2") if resume else None)
    deltas = whole_deltas(trainer.model)  # a gather: every rank takes part
    if rank == 0: torch.save(deltas, out / f"trainer_{folder.name}_{'resumed' if resume else 'straight'}.pt")
    return dict(fsdp=trainer.is_fsdp_enabled, paths=paths, steps_run=CountSteps.steps, skipped=trainer.nonfinite_guard.skipped,
                finite=all(bool(torch.isfinite(d).all()) for d in deltas.values()),
                checkpoint=sorted(p.name for p in (folder / f"checkpoint-{4 if resume else 2}").iterdir()))


def main(out: Path):
    run_fsdp_on_cpu()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report = dict(accelerate=through_accelerate(out, rank, world))
    for kind in STATE_DICT_TYPES:
        for resume in (False, True):
            report[f"{kind}_{'resumed' if resume else 'straight'}"] = through_trainer(out, rank, world, kind, resume)
            dist.barrier()
    report["nan_step"] = through_trainer(out, rank, world, "FULL_STATE_DICT", False, poison_step=3)  # skipped on both ranks
    (out / f"trainer_rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
