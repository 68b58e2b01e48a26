"""Bad inputs fail clearly; round trips are exact; checkpointing, half precision, resuming and DDP (2 CPU processes) work."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from smt_nb.core import SMTConfig, prepare_smt, smt_layers, save_smt, load_smt
from smt_nb.layers import SMTLinear
from smt_nb.selection import save_selection, load_selection, selection_to_dict, selection_from_dict
from smt_nb.train import counting_batches, evaluate_loss, resume_smt, train_smt
from conftest import ARCHS, VOCAB, batches

TESTS = Path(__file__).parent


def mw(**kw): return SMTConfig(block_size=16, sparsity=0.1, method="mw", **kw)


# ---------------------------------------------------------------- bad inputs: one clear message each
@pytest.mark.parametrize("kwargs,message", [
    (dict(sparsity=0), "sparsity must be in (0, 1]"),
    (dict(sparsity=-0.1), "sparsity must be in (0, 1]"),
    (dict(sparsity=1.01), "sparsity must be in (0, 1]"),
    (dict(block_size=0), "block_size must be a positive integer"),
    (dict(block_size=-8), "block_size must be a positive integer"),
    (dict(n_blocks=0), "n_blocks must be a positive integer"),
    (dict(method="magnitude"), "choose one of"),
    (dict(statistic="max"), "choose one of"),
    (dict(budget="per_layer"), "choose one of"),
    (dict(warmup_steps=-1), "warmup_steps must be an integer"),
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps must be an integer"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        SMTConfig(**kwargs)


def test_block_size_larger_than_every_target():
    with pytest.raises(ValueError, match="larger than every target matrix.*full fine-tuning"):
        prepare_smt(ARCHS["llama"](), SMTConfig(block_size=512, method="mw"))


def test_targets_that_match_nothing_or_cannot_be_wrapped():
    with pytest.raises(ValueError, match="matched no module. Linear layers in this model"):
        prepare_smt(ARCHS["llama"](), mw(target_modules=["query"]))
    with pytest.raises(TypeError, match="is a LlamaRMSNorm; SMT can wrap"):
        prepare_smt(ARCHS["llama"](), mw(target_modules=["input_layernorm"]))


@pytest.mark.parametrize("method", ["gw", "aw"])
def test_data_driven_methods_need_data(method):
    with pytest.raises(ValueError, match=f"method='{method}' needs warm-up data"):
        prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, method=method))
    with pytest.raises(ValueError, match="yielded no batches"):
        prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, method=method), dataloader=iter([]))


def test_short_dataloader_says_what_happens():
    with pytest.warns(UserWarning, match="ran out after 2 of 6 micro-batches; the scores use those 2"):
        prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, warmup_steps=3, gradient_accumulation_steps=2), dataloader=batches(2))


def test_batches_without_labels():
    data = [{"input_ids": b["input_ids"]} for b in batches(2)]
    with pytest.raises(ValueError, match="warm-up batches need `labels`"):
        prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, warmup_steps=2), dataloader=data)


def test_nan_loss_during_warmup():
    model = ARCHS["llama"]()
    with torch.no_grad(): model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="Warm-up loss is nan"):
        prepare_smt(model, SMTConfig(block_size=16, warmup_steps=2), dataloader=batches(2))


def test_inf_gradients_with_finite_loss():
    model = ARCHS["llama"]()
    def blow_up(module, args, out): out.register_hook(lambda g: g * float("inf"))
    model.model.layers[1].self_attn.o_proj.register_forward_hook(blow_up)
    with pytest.raises(ValueError, match="Non-finite warm-up gradients in model.layers.[01].self_attn"):
        prepare_smt(model, SMTConfig(block_size=16, warmup_steps=2), dataloader=batches(2))


def test_selection_that_does_not_fit(tmp_path):
    sel = prepare_smt(ARCHS["llama"](), mw()).smt_selection
    with pytest.raises(ValueError, match="does not have: was it made for another model"):
        prepare_smt(ARCHS["gpt2"](), selection=sel)
    d = selection_to_dict(sel)
    name = next(iter(d["modules"]))
    d["modules"][name]["shape"] = [64, 64]
    save_selection(selection_from_dict(d), tmp_path / "edited.json")
    with pytest.raises(ValueError, match="expects .* to be 64×64, the model has"):
        prepare_smt(ARCHS["llama"](), selection=load_selection(tmp_path / "edited.json"))


def test_adapter_on_other_base_or_other_architecture(tmp_path):
    model = prepare_smt(ARCHS["llama"](), mw(init_std=0.05))
    save_smt(model, tmp_path)
    with pytest.raises(ValueError, match="not the base the adapter was trained on"):
        load_smt(ARCHS["llama"](seed=3), tmp_path)
    with pytest.raises(ValueError, match="another model"):
        load_smt(ARCHS["gpt2"](), tmp_path)


def test_mixed_dtypes_and_devices():
    layer = SMTLinear(nn.Linear(32, 32).to(torch.bfloat16), torch.tensor([[0, 0]]), 16)
    with pytest.raises(TypeError, match="cast the model and inputs to one dtype"):
        layer(torch.randn(2, 32))
    meta = SMTLinear(nn.Linear(32, 32, device="meta"), torch.tensor([[0, 0]]), 16)
    with pytest.raises(RuntimeError, match="move the batch \\(or the model\\) to one device"):
        meta(torch.randn(2, 32))


def test_training_without_smt_layers():
    with pytest.raises(ValueError, match="call prepare_smt"):
        train_smt(ARCHS["llama"](), batches(1), steps=1)


# ---------------------------------------------------------------- round trips and determinism
def test_save_load_bitwise(tmp_path):
    model = prepare_smt(ARCHS["mistral"](), mw(init_std=0.1))
    train_smt(model, batches(2), steps=2, lr=1e-2, progress=False)
    save_smt(model, tmp_path)
    back = load_smt(ARCHS["mistral"](), tmp_path)
    for a, b in zip(smt_layers(model).values(), smt_layers(back).values()):
        assert torch.equal(a.smt_delta, b.smt_delta) and a.smt_delta.dtype == b.smt_delta.dtype


def test_merge_unmerge_restores_every_weight():
    model = prepare_smt(ARCHS["qwen2"](), mw(init_std=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for l in smt_layers(model).values(): l.merge()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    for l in smt_layers(model).values(): l.unmerge()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_resumed_training_matches_uninterrupted(tmp_path):
    data = counting_batches(5, VOCAB, seed=2)
    def fresh(): return prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, sparsity=0.1, warmup_steps=2), dataloader=data)
    straight = fresh()
    train_smt(straight, data, steps=6, lr=1e-2, progress=False)
    first = fresh()
    train_smt(first, data, steps=4, lr=1e-2, progress=False, checkpoint_dir=tmp_path, save_every=2)
    model, opt, step = resume_smt(ARCHS["llama"](), tmp_path / "step-4", lr=1e-2)
    assert step == 4
    train_smt(model, data, steps=6, optimizer=opt, start_step=step, progress=False)
    for a, b in zip(smt_layers(straight).values(), smt_layers(model).values()):
        assert torch.equal(a.smt_delta, b.smt_delta)


# ---------------------------------------------------------------- checkpointing and half precision
def test_activation_checkpointing_same_gradients_and_scores():
    data = batches(2)
    plain = prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, sparsity=0.1, warmup_steps=2), dataloader=data)
    ckpt_model = ARCHS["llama"]()
    ckpt_model.activation_checkpointing_enable()
    ckpt_model.train()
    ckpt = prepare_smt(ckpt_model, SMTConfig(block_size=16, sparsity=0.1, warmup_steps=2), dataloader=data)
    for n in plain.smt_selection.scores:  # GW hooks count each micro-batch once even though checkpointing reruns forwards
        torch.testing.assert_close(ckpt.smt_selection.scores[n], plain.smt_selection.scores[n], rtol=1e-5, atol=1e-12)
    plain.train()
    for m in (plain, ckpt): m(**data[0]).loss.backward()
    for a, b in zip(smt_layers(plain).values(), smt_layers(ckpt).values()):
        torch.testing.assert_close(b.smt_delta.grad, a.smt_delta.grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_train(dtype):
    train, held = counting_batches(6, VOCAB, seed=1), counting_batches(2, VOCAB, seed=9)
    model = ARCHS["llama"]().to(dtype)
    model = prepare_smt(model, SMTConfig(block_size=16, sparsity=0.2, warmup_steps=2), dataloader=train)
    assert all(l.smt_delta.dtype == torch.float32 for l in smt_layers(model).values())
    before = evaluate_loss(model, held)
    train_smt(model, train, steps=25, lr=1e-2, progress=False)
    after = evaluate_loss(model, held)
    assert after == after and after < before - 0.1  # finite, and lower


# ---------------------------------------------------------------- DDP over two CPU processes
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    import ddp_worker as w
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", str(TESTS / "ddp_worker.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    blocks = [json.loads((tmp_path / f"blocks_rank{r}.json").read_text()) for r in (0, 1)]
    assert blocks[0] == blocks[1]                                    # every rank selects the same blocks
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)

    # single process on the combined batches
    data = w.full_batches()
    single = prepare_smt(ARCHS["llama"](), w.config(), dataloader=data)
    assert blocks[0] == {n: b.tolist() for n, b in single.smt_selection.blocks.items()}
    for n, s in single.smt_selection.scores.items():                # ranks sum their per-half mean-loss gradients: 2× the whole-batch one
        torch.testing.assert_close(ddp["scores"][n] / ddp["world"], s, rtol=1e-5, atol=1e-12)
    opt = torch.optim.SGD([l.smt_delta for l in smt_layers(single).values()], lr=w.LR)
    for b in data:
        single(**b).loss.backward(); opt.step(); opt.zero_grad()
    for n, l in smt_layers(single).items():
        torch.testing.assert_close(ddp["deltas"][n], l.smt_delta.detach(), rtol=1e-5, atol=1e-7)
