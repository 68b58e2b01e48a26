"""SMT on bitsandbytes 4-bit and 8-bit models (CPU): no dense float copies, training, round trips, merging to float."""

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from smt_nb.core import SMTConfig, prepare_smt, smt_layers, save_smt, load_smt, merge_and_unload
from smt_nb.layers import is_bnb_quantized
from smt_nb.train import counting_batches, evaluate_loss, train_smt
from conftest import ALL_LINEAR, VOCAB, batches

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # sizes that are multiples of 32: bitsandbytes' CPU inference repacking (the trap tested below) asserts on others
    d = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2)).save_pretrained(d)
    return d


def load(model_dir, bits):
    q = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32) if bits == 4
         else BitsAndBytesConfig(load_in_8bit=True))
    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=q, dtype=torch.float32)


def config(**kw):
    return SMTConfig(block_size=16, sparsity=0.1, warmup_steps=3, target_modules=ALL_LINEAR["llama"], **kw)


def test_no_float_copy_of_quantized_weights(model_dir):
    model = prepare_smt(load(model_dir, 4), config(), dataloader=batches(3))
    quantized = [m for m in model.modules() if is_bnb_quantized(m)]
    assert len(quantized) == 14 and len(smt_layers(model)) > 0
    shapes = {(m.out_features, m.in_features) for m in quantized} | {(m.in_features, m.out_features) for m in quantized}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point():
            assert tuple(t.shape) not in shapes, f"{name} {tuple(t.shape)} is a dense float copy of a quantized weight"
    for m in quantized: assert not m.weight.is_floating_point()


def test_training_4bit_reduces_loss_even_after_an_eval_pass(model_dir):
    model = load(model_dir, 4)
    train, held_out = counting_batches(8, VOCAB, seed=1), counting_batches(2, VOCAB, seed=9)
    evaluate_loss(model, held_out)  # an eval forward without gradients (bitsandbytes may repack weights here)
    model = prepare_smt(model, config(), dataloader=train)
    before = evaluate_loss(model, held_out)
    train_smt(model, train, steps=30, lr=1e-2, progress=False)
    assert evaluate_loss(model, held_out) < before - 0.2
    assert all(l.smt_delta.abs().sum() > 0 for l in smt_layers(model).values())


def test_save_load_identical_logits_4bit(model_dir, tmp_path):
    model = prepare_smt(load(model_dir, 4), config(init_std=0.05), dataloader=batches(3))
    ids = batches(1)[0]["input_ids"]
    save_smt(model, tmp_path)
    reloaded = load_smt(load(model_dir, 4), tmp_path)
    assert torch.equal(reloaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("bits", [4, 8])
def test_merge_and_unload_gives_float_model(model_dir, bits):
    model = prepare_smt(load(model_dir, bits), config(init_std=0.05), dataloader=batches(3))
    ids = batches(1)[0]["input_ids"]
    expected = model(ids).logits.detach()
    merged = merge_and_unload(model)
    assert not any(is_bnb_quantized(m) for m in merged.modules())
    rel = ((merged(ids).logits - expected).norm() / expected.norm()).item()
    # 4-bit: the bnb kernel and a float matmul with the dequantized weight agree closely; 8-bit: bnb also quantizes the inputs
    assert rel < (1e-4 if bits == 4 else 5e-2)


def test_8bit_trains(model_dir):
    model = prepare_smt(load(model_dir, 8), config(), dataloader=batches(3))
    loss = model(**batches(1)[0]).loss
    loss.backward()
    assert all(l.smt_delta.grad is not None and l.smt_delta.grad.abs().sum() > 0 for l in smt_layers(model).values())


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantized_bases_train_under_autocast(model_dir, bits, dtype):
    "The additive path over 4/8-bit bases under CPU autocast (Trainer's bf16/fp16): finite float32 block gradients, deltas move."
    model = prepare_smt(load(model_dir, bits), config(), dataloader=batches(3))
    opt = torch.optim.AdamW([l.smt_delta for l in smt_layers(model).values()], lr=1e-2)
    for b in batches(2, seed=4):
        with torch.autocast("cpu", dtype=dtype):
            loss = model(**b).loss
        loss.backward()
        grads = [l.smt_delta.grad for l in smt_layers(model).values()]
        assert all(g.dtype == torch.float32 and g.isfinite().all() and g.abs().sum() > 0 for g in grads)
        opt.step(); opt.zero_grad()
    assert loss.isfinite() and all(l.smt_delta.abs().sum() > 0 for l in smt_layers(model).values())


def test_smt_trainer_trains_a_4bit_model_in_bf16(model_dir, tmp_path):
    "transformers' Trainer refuses quantized models without adapters; an SMT model on a 4-bit base is one with adapters."
    from transformers import TrainingArguments
    from smt_nb.train import SMTTrainer
    model = prepare_smt(load(model_dir, 4), config(), dataloader=batches(3))
    before = {n: l.smt_delta.detach().clone() for n, l in smt_layers(model).items()}
    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, max_steps=2, save_steps=1, learning_rate=1e-2,
                             per_device_train_batch_size=2, report_to=[], disable_tqdm=True)
    rows = [{"input_ids": b["input_ids"][0], "labels": b["labels"][0]} for b in batches(4, bs=1)]
    SMTTrainer(model=model, args=args, train_dataset=rows).train()
    assert all(not torch.equal(l.smt_delta, before[n]) for n, l in smt_layers(model).items())
    assert not getattr(model, "_hf_peft_config_loaded", False)  # declared only while Trainer checks the model
    reloaded = load_smt(load(model_dir, 4), tmp_path / "checkpoint-2")
    assert all(torch.equal(a.smt_delta, b.smt_delta) for a, b in zip(smt_layers(model).values(), smt_layers(reloaded).values()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_4bit_routes_equal_the_dense_step_on_the_dequantized_weight(model_dir, dtype):
    "The 4-bit fast path (blocks written into the dequantized weight) and the single-token route (block product beside bitsandbytes'"
    "matrix-vector kernel) against a dense layer holding the dequantized base + Δ: output, input gradient and block gradients."
    import torch.nn.functional as F
    from smt_nb.blocks import gather_blocks, scatter_blocks
    from smt_nb.layers import dequantized_weight
    model = prepare_smt(load(model_dir, 4), config(method="random", init_std=0.05))
    layer = next(iter(smt_layers(model).values()))
    base = layer.base_layer
    base.compute_dtype = dtype                                          # bitsandbytes' compute dtype: the fast path follows it
    w = (dequantized_weight(base).double() + scatter_blocks(layer.smt_delta.detach().double(), layer.grid, layer.blocks)).requires_grad_()
    x = torch.randn(3, 7, layer.grid.in_features, requires_grad=True)
    assert layer.rides_on_dequantized(x)
    y = layer(x); gy = torch.randn_like(y); y.backward(gy)
    xr = x.detach().double().requires_grad_()
    F.linear(xr, w).backward(gy.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()
    assert y.dtype == x.dtype and rel(y, F.linear(xr, w)) < tol
    assert rel(x.grad, xr.grad) < tol
    assert rel(layer.smt_delta.grad, gather_blocks(w.grad, layer.grid, layer.blocks)) < tol
    with torch.no_grad():                                                # generation: one token, no gradients
        one = x[:1, :1].detach()
        assert not layer.rides_on_dequantized(one)
        assert rel(layer(one), F.linear(one.double(), w.detach())) < tol


def test_8bit_backward_is_one_matmul_with_the_dequantized_weight_and_blocks(model_dir):
    "LLM.int8: bitsandbytes' int8 forward plus the block product; backward one matmul with the dequantized base + Δ (no bitsandbytes"
    "backward in the graph): output, input gradient and block gradients against a dense layer holding the dequantized base + Δ."
    import torch.nn.functional as F
    from smt_nb.blocks import gather_blocks, scatter_blocks
    from smt_nb.layers import dequantized_weight
    model = prepare_smt(load(model_dir, 8), config(method="random", init_std=0.05))
    layer = next(iter(smt_layers(model).values()))
    w = (dequantized_weight(layer.base_layer).double() + scatter_blocks(layer.smt_delta.detach().double(), layer.grid, layer.blocks))
    w.requires_grad_()
    x = torch.randn(3, 7, layer.grid.in_features, requires_grad=True)
    assert layer.int8_backward_rides(x) and not layer.rides_on_dequantized(x)
    y = layer(x)
    nodes, todo = set(), [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or type(node).__name__ in nodes: continue
        nodes.add(type(node).__name__); todo += [f for f, _ in node.next_functions]
    assert "Int8SMTFunctionBackward" in nodes and not any("MatMul8bitLt" in n for n in nodes)
    gy = torch.randn_like(y); y.backward(gy)
    xr = x.detach().double().requires_grad_()
    yr = F.linear(xr, w, layer.base_layer.bias.double() if layer.base_layer.bias is not None else None); yr.backward(gy.double())
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()
    assert rel(y, yr) < 2e-2                                                    # int8 quantizes the input in forward
    assert rel(x.grad, xr.grad) < 1e-5                                          # backward: the dequantized weight, exactly
    assert rel(layer.smt_delta.grad, gather_blocks(w.grad, layer.grid, layer.blocks)) < 1e-5
    with torch.no_grad(): assert not layer.int8_backward_rides(x)             # inference: base(x) + the block product as before
    for dtype in (torch.bfloat16, torch.float16):                              # made in the compute dtype: the same bits, no float32 copy
        assert torch.equal(dequantized_weight(layer.base_layer, dtype), dequantized_weight(layer.base_layer).to(dtype))
