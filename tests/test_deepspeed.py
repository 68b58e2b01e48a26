"""SMT under DeepSpeed (the official SMT code's engine) on CPU processes: raw `deepspeed.initialize` after prepare_smt with ZeRO
stages 1 and 2 on 2 gloo processes against 1 plain process on the combined batches — the same selection, the same deltas (torch's
AdamW on both sides), one adapter that loads bitwise into a plain model, and a DeepSpeed checkpoint of the deltas and their
optimizer state only (no base weights) that resumes exactly; the same through SMTTrainer with `TrainingArguments(deepspeed=...)`. ZeRO-3 is refused with a message naming the alternatives, both for a
model built under `deepspeed.zero.Init` and for a prepared model that stage 3 partitioned afterwards."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import importlib.util

import pytest
import torch

from smt_nb.core import load_smt, prepare_smt, smt_layers
from conftest import ARCHS

TESTS = Path(__file__).parent


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="the optional extra: pip install 'smt_nb[deepspeed]' (CI installs it)")
def test_zero1_and_zero2_match_one_process_and_resume_exactly(tmp_path):
    import deepspeed_worker as w
    exe = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               DS_ACCELERATOR="cpu")
    run = subprocess.run([exe, "--nproc_per_node", "2", "--master_port", "29561", str(TESTS / "deepspeed_worker.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:  # a layer reading its weight itself under ZeRO-3: refused at the first forward, naming switch_path(model, 'additive')
        assert r["zero3_after_initialize"].startswith("NotImplementedError") and "switch_path(model, 'additive')" in r["zero3_after_initialize"], r
    z3 = [r["zero3"] for r in ranks]                                         # ZeRO-3, built under deepspeed.zero.Init
    assert z3[0]["paths"] == ["additive"] and z3[0]["blocks"] == z3[1]["blocks"] and z3[0]["deltas"] == z3[1]["deltas"]
    base_bytes = 4 * sum(p.numel() for p in ARCHS["llama"]().parameters())
    assert all(r["resume_exact"] for r in z3) and z3[0]["checkpoint_bytes"] < base_bytes / 2, z3[0]["checkpoint_bytes"]  # with the base: > base_bytes
    for r in ranks:                                                            # ZeRO-1/2: the in-place path and loads into the engine
        assert "switch_path(model, 'reference')" in r["zero2_refusals"]["inplace"], r["zero2_refusals"]
        assert "before deepspeed.initialize" in r["zero2_refusals"]["load"], r["zero2_refusals"]
    assert "differ from" in ranks[0]["trainer_other_blocks"], ranks[0]["trainer_other_blocks"]  # refused, not trained on other blocks
    assert all("load it into an unpartitioned model" in r["merge_refusal"] for r in z3)  # no write into a partitioned weight
    for stage in (1, 2, 3):
        report = [r[f"zero{stage}"] for r in ranks]
        assert report[0]["blocks"] == report[1]["blocks"]                   # every rank selects the same blocks
        assert all(r["resume_exact"] for r in report)                        # resumed from step 2: the same deltas, bit for bit
        assert report[0]["checkpoint_bytes"] < base_bytes / 2, report[0]     # the deltas and their AdamW state, not the base
        data = w.batches(0, 1)                                               # one process, the combined batches, torch's AdamW
        base = ARCHS["llama"]()
        if stage == 3: base.load_state_dict(torch.load(tmp_path / "zero3_initial.pt"))  # the weights zero.Init drew
        single = prepare_smt(base, w.config(), dataloader=data[:3])
        assert report[0]["blocks"] == {n: b.tolist() for n, b in single.smt_selection.blocks.items()}
        opt = torch.optim.AdamW([l.smt_delta for l in smt_layers(single).values()], lr=w.LR, weight_decay=0.0)
        for b in data:
            single(**b).loss.backward(); opt.step(); opt.zero_grad()
        trained = ({n: torch.tensor(d) for n, d in report[0]["deltas"].items()} if stage == 3 else
                   torch.load(tmp_path / f"zero{stage}_deltas.pt"))
        plain = ARCHS["llama"]()
        if stage == 3: plain.load_state_dict(torch.load(tmp_path / "zero3_initial.pt"))
        loaded = load_smt(plain, tmp_path / f"zero{stage}_adapter")              # the adapter every rank saved, on a plain model
        for n, l in smt_layers(single).items():
            want = l.smt_delta.detach()
            assert ((trained[n] - want).norm() / want.norm()).item() < 1e-5, (stage, n)
            assert torch.equal(smt_layers(loaded)[n].smt_delta.detach(), trained[n]), (stage, n)
    # SMTTrainer(args=TrainingArguments(deepspeed=ZeRO-2/3 config)): DeepSpeed checkpoints without the frozen base, an exact resume
    for stage in (2, 3):
        straight, resumed = ranks[0][f"trainer{stage}_straight"], ranks[0][f"trainer{stage}_resumed"]
        assert straight["deepspeed"] and resumed["deepspeed"]
        assert straight["paths"] == (["additive"] if stage == 3 else ["reference"]), straight["paths"]  # the trainer moved the in-place layers
        assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.json"} <= set(straight["checkpoint"]), straight
        model_states = [size for name, size in straight["engine_files"].items() if "model_states" in name]
        assert model_states and max(model_states) < base_bytes / 4, straight["engine_files"]  # the deltas, not the base
        assert straight["deltas"] == resumed["deltas"], stage                                  # resumed from checkpoint-2: bit for bit
        assert any(torch.tensor(d).abs().sum() > 0 for d in straight["deltas"].values())        # and it trained
