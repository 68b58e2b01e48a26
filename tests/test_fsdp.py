"""SMT under FSDP2 on CPU processes (gloo): 2 sharded ranks against 1 process on the same combined batches — the same selection,
the same trained deltas, one adapter that loads onto an unsharded base with the same logits, and half the base on each rank;
the in-place path, which would write into sharded weights, is refused at its first forward; bf16 compute through FSDP's
MixedPrecisionPolicy with activation checkpointing keeps float32 deltas. Then the same through accelerate's FSDP plugin and
through SMTTrainer with `fsdp=True`: adapter-only checkpoints that resume exactly, with either state-dict type."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from smt_nb.core import SMTConfig, load_smt, prepare_smt, smt_layers
from conftest import ARCHS

TESTS = Path(__file__).parent


def torchrun(script: str, out: Path, port: int, nproc: int = 2):
    exe = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run([exe, "--nproc_per_node", str(nproc), "--master_port", str(port), str(TESTS / script), str(out)],
                          capture_output=True, text=True, timeout=600, env=env)


def single_process():
    "One process trained with SGD on the combined batches of both ranks."
    import fsdp_worker as w
    data = w.full_batches()
    single = prepare_smt(ARCHS["llama"](), w.config(), dataloader=data)
    opt = torch.optim.SGD([l.smt_delta for l in smt_layers(single).values()], lr=w.LR)
    for b in data:
        single(**b).loss.backward(); opt.step(); opt.zero_grad()
    return single


def norm_error(got, want) -> float: return ((got - want).norm() / want.norm()).item()


def test_fsdp2_two_cpu_processes_match_single_process(tmp_path):
    import fsdp_worker as w
    run = torchrun("fsdp_worker.py", tmp_path, 29541)
    assert run.returncode == 0, run.stderr[-3000:]
    blocks = [json.loads((tmp_path / f"blocks_rank{r}.json").read_text()) for r in (0, 1)]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert blocks[0] == blocks[1]                                     # every rank selects the same blocks
    assert all(r["reloaded"] for r in ranks)                          # load_smt onto a sharded model restores each rank's part
    assert ranks[0]["files"] == ["adapter_config.json", "adapter_model.safetensors"]  # one adapter, written once
    for r in ranks: assert r["local"] <= 0.55 * r["total"], r         # each rank holds about half of the base
    assert all("switch_path(model, 'reference')" in r["refused"] for r in ranks)  # in-place writes into shards: refused, naming the fix
    for r in ranks:  # bf16 compute (MixedPrecisionPolicy) + activation checkpointing: float32 deltas, close to the float32 run
        assert r["mixed_dtypes"] == ["torch.float32"] and r["mixed_error"] < 3e-2, r

    single = single_process()
    assert blocks[0] == {n: b.tolist() for n, b in single.smt_selection.blocks.items()}
    loaded = load_smt(ARCHS["llama"](), tmp_path / "adapter")         # the FSDP adapter on an unsharded base
    for n, l in smt_layers(single).items():
        want, got = l.smt_delta.detach(), smt_layers(loaded)[n].smt_delta.detach()
        assert ((got - want).norm() / want.norm()).item() < 1e-5, n
    with torch.no_grad(): logits = loaded(input_ids=w.probe()).logits
    torch.testing.assert_close(logits, torch.load(tmp_path / "logits.pt"), rtol=1e-5, atol=1e-5)


def test_fsdp2_through_accelerate_and_trainer(tmp_path):
    from fsdp_trainer_worker import STATE_DICT_TYPES
    run = torchrun("fsdp_trainer_worker.py", tmp_path, 29542)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"trainer_rank{r}.json").read_text()) for r in (0, 1)]
    single = single_process()
    # accelerate's plugin: sharded (half the base each), and trained like one process on the combined batches
    for r in ranks: assert r["accelerate"]["fsdp"] and r["accelerate"]["local"] <= 0.55 * r["accelerate"]["total"], r
    deltas = torch.load(tmp_path / "accelerate_deltas.pt")
    loaded = load_smt(ARCHS["llama"](), tmp_path / "accelerate_adapter")   # its adapter, written once, on an unsharded base
    for n, l in smt_layers(single).items():
        assert norm_error(deltas[n], l.smt_delta.detach()) < 1e-5, n
        assert torch.equal(smt_layers(loaded)[n].smt_delta.detach(), deltas[n]), n
    # SMTTrainer(fsdp=True): checkpoints hold the adapter and the optimizer state, never the base; resuming is exact
    for kind in STATE_DICT_TYPES:
        for run_name in ("straight", "resumed"):
            r = ranks[0][f"{kind}_{run_name}"]
            assert r["fsdp"] and r["paths"] == ["reference"], r  # in-place layers moved to the reference path before sharding
            assert r["steps_run"] == (4 if run_name == "straight" else 2), r  # the resumed run starts after checkpoint-2
            assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.json", "scheduler.pt"} <= set(r["checkpoint"]), r
            assert ("optimizer.bin" if kind == "FULL_STATE_DICT" else "optimizer_0") in r["checkpoint"], r  # the deltas' optimizer state
            assert r["skipped"] == 0, r
            assert not any("pytorch_model" in f or f.endswith(".safetensors") and f != "adapter_model.safetensors" for f in r["checkpoint"]), r
        straight, resumed = (torch.load(tmp_path / f"trainer_{kind}_{x}.pt") for x in ("straight", "resumed"))
        assert straight.keys() == resumed.keys() and all(torch.equal(straight[n], resumed[n]) for n in straight), kind
        final = load_smt(ARCHS["llama"](), tmp_path / kind / "checkpoint-4")  # the last checkpoint's adapter on an unsharded base
        assert all(torch.equal(l.smt_delta.detach(), straight[n]) for n, l in smt_layers(final).items()), kind
        assert any(straight[n].abs().sum() > 0 for n in straight), kind     # it trained
    for r in ranks:  # a NaN gradient in rank 0's shard: both ranks skip that step (else their shards would stop being one model)
        assert r["nan_step"]["skipped"] == 1 and r["nan_step"]["steps_run"] == 4 and r["nan_step"]["finite"], r["nan_step"]


def test_trainer_refuses_fsdp1():
    "FSDP1 flattens the deltas into one buffer per module (accelerate builds its plugin only on accelerators, so the check is called directly)."
    from types import SimpleNamespace
    from smt_nb.train import SMTTrainerMixin
    import pytest
    model = prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, sparsity=0.1, method="mw", target_modules=["q_proj"]))
    trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=1))))
    with pytest.raises(ValueError, match=r"FSDP2 only.*'version': 2"): SMTTrainerMixin._prepare_for_fsdp(trainer)
    trainer.accelerator.state.fsdp_plugin.fsdp_version = 2
    SMTTrainerMixin._prepare_for_fsdp(trainer)                     # FSDP2: accepted, in-place layers (none on CPU) moved
    assert {l.path for l in smt_layers(model).values()} == {"reference"}
