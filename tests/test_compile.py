"""torch.compile on SMT models: one graph without breaks on every layer path, the same gradients and training as eager,
blocks written by optimizer steps (not by the compiled forward), and Trainer(torch_compile=True)."""
import copy

import pytest
import torch
import torch.nn as nn
from transformers import Trainer, TrainingArguments

from smt_nb.core import SMTConfig, prepare_smt, smt_layers, unload
from smt_nb.layers import SMTLinear, logical_weight, sync_blocks
from smt_nb.blocks import gather_blocks, scatter_blocks
from smt_nb.train import smt_parameters

from conftest import ARCHS, batches

CONFIG = dict(block_size=16, sparsity=0.2, method="random", seed=0, target_modules="all-linear")


def smt_model(arch="llama", path="reference"):
    "A tiny SMT model whose layers take `path`, with random non-zero deltas (zero deltas would hide wrong blocks)."
    model = prepare_smt(ARCHS[arch](), SMTConfig(**CONFIG))
    torch.manual_seed(1)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SMTLinear):
                setattr(parent, name, SMTLinear(child.base_layer, child.blocks, child.grid.block_size, init_std=0.02, path=path))
    return model


def relative(a, b): return ((a - b).norm() / b.norm()).item()


def test_block_gradients_operator_passes_opcheck():
    "The registered operator: fake implementation, schema and autograd registration agree with the real one (ragged and strips)."
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        g2, x = torch.randn(7, 45, generator=g).to(dtype), torch.randn(7, 70, generator=g).to(dtype)
        rows, cols = torch.tensor([0, 2, 1]), torch.tensor([4, 0, 2])
        torch.library.opcheck(torch.ops.smt_nb.block_gradients.default, (g2, x, rows, cols, 16))
        out = torch.ops.smt_nb.block_gradients(g2, x, rows, cols, 16)
        assert out.shape == (3, 16, 16) and out.dtype == torch.float32


@pytest.mark.parametrize("path", ["reference", "inplace", "additive"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decoder_layer_compiles_in_one_graph_with_eager_gradients(arch, path):
    model = smt_model(arch, path)
    ids = batches(1, bs=2, seq=10)[0]["input_ids"]
    x = model.get_input_embeddings()(ids).detach().requires_grad_()
    block = (model.model.layers if arch == "llama" else model.transformer.h)[0]
    extra = dict(position_embeddings=model.model.rotary_emb(x, torch.arange(10)[None])) if arch == "llama" else {}

    def grads(fn):
        trained = smt_parameters(block)
        for p in trained: p.grad = None
        x.grad = None
        out = fn(x, **extra)
        (out[0] if isinstance(out, tuple) else out).square().sum().backward()
        return [x.grad.clone()] + [p.grad.clone() for p in trained]

    eager = grads(block)
    torch._dynamo.reset()
    compiled = grads(torch.compile(block, backend="aot_eager", fullgraph=True))  # fullgraph: any graph break raises
    assert len(eager) == len(compiled) > 1
    for e, c in zip(eager, compiled): assert relative(c, e) < 1e-6


def test_compiled_model_takes_two_tensors_per_inplace_layer():
    """A compiled graph checks and takes every tensor it reads before each call (host time the GPU waits for at the start of a
    step): an in-place SMT layer adds its delta and its index plan to what the frozen model's graph takes, nothing else."""
    def graph_inputs(model, ids):
        counts = []
        def count(gm, example_inputs): counts.append(len(example_inputs)); return gm.forward
        torch._dynamo.reset()
        torch.compile(model, backend=count, fullgraph=True)(input_ids=ids)
        return counts[0]
    ids = batches(1, bs=2, seq=10)[0]["input_ids"]
    model = smt_model("llama", "inplace")
    smt = graph_inputs(model, ids)
    n_layers = len(smt_layers(model))
    frozen = graph_inputs(unload(model), ids)
    assert n_layers > 1 and smt - frozen == 2 * n_layers


@pytest.mark.parametrize("path", ["reference", "inplace"])
def test_compiled_training_matches_eager(path):
    "Three AdamW steps, eager against compiled (aot_eager), from the same start: the same deltas; in-place weights hold base + Δ."
    start = smt_model("llama", path)
    data = batches(3, seed=1)
    def train(model, fn):
        opt = torch.optim.AdamW(smt_parameters(model), lr=1e-2)
        for b in data:
            fn(**b).loss.backward(); opt.step(); opt.zero_grad()
        return {n: l.smt_delta.detach().clone() for n, l in smt_layers(model).items()}
    eager_model, compiled_model = copy.deepcopy(start), copy.deepcopy(start)
    eager = train(eager_model, eager_model)
    torch._dynamo.reset()
    writes, original = [], SMTLinear._write_blocks
    def counted(self): writes.append(self); return original(self)
    SMTLinear._write_blocks = counted
    try: compiled = train(compiled_model, torch.compile(compiled_model, backend="aot_eager"))
    finally: SMTLinear._write_blocks = original
    if path == "inplace":  # every write came from the step hook: one per layer per step, none from a forward
        assert len(writes) == len(data) * len(smt_layers(compiled_model))
    for n in eager: assert relative(compiled[n], eager[n]) < 1e-5, n
    if path == "inplace":  # the optimizer step hook wrote the blocks; the compiled forward never wrote
        before = smt_layers(start)
        for n, layer in smt_layers(compiled_model).items():
            w = logical_weight(layer.base_layer).detach()
            in_blocks = scatter_blocks(torch.ones_like(layer.base_blocks), layer.grid, layer.blocks).bool()
            assert torch.equal(gather_blocks(w, layer.grid, layer.blocks), layer.base_blocks + layer.smt_delta.detach()), n
            assert torch.equal(w[~in_blocks], logical_weight(before[n].base_layer).detach()[~in_blocks]), n


def test_hand_edits_reach_the_weight_eagerly_and_through_sync_blocks():
    "Eager forwards notice a delta changed by hand (version counter); compiled ones do not look, and sync_blocks writes it."
    model = smt_model("llama", "inplace")
    ids = batches(1)[0]["input_ids"]
    layer = next(iter(smt_layers(model).values()))
    with torch.no_grad(): layer.smt_delta.mul_(3)
    model(input_ids=ids)  # eager: rewritten on the way
    assert torch.equal(gather_blocks(logical_weight(layer.base_layer).detach(), layer.grid, layer.blocks),
                       layer.base_blocks + layer.smt_delta.detach())
    with torch.no_grad(): layer.smt_delta.mul_(2)
    assert sync_blocks(model) == 1 and sync_blocks(model) == 0
    assert torch.equal(gather_blocks(logical_weight(layer.base_layer).detach(), layer.grid, layer.blocks),
                       layer.base_blocks + layer.smt_delta.detach())


def test_trainer_with_torch_compile_trains_like_eager(tmp_path):
    "Trainer(torch_compile=True) with the default backend (inductor, compiling C++ on this CPU) against the same run in eager mode."
    from smt_nb.train import SMTTrainer
    rows = [{"input_ids": b["input_ids"][0], "labels": b["labels"][0]} for b in batches(8, seed=2, bs=1, seq=12)]
    def run(compile_):
        model = prepare_smt(ARCHS["llama"](), SMTConfig(**CONFIG))
        args = TrainingArguments(output_dir=str(tmp_path / str(compile_)), use_cpu=True, max_steps=3, per_device_train_batch_size=4,
                                 learning_rate=1e-2, save_strategy="no", report_to=[], disable_tqdm=True, torch_compile=compile_)
        out = SMTTrainer(model=model, args=args, train_dataset=rows).train()
        return out, {n: l.smt_delta.detach().clone() for n, l in smt_layers(model).items()}
    from torch._dynamo.utils import counters
    torch._dynamo.reset(); counters.clear()
    (eager_out, eager), (compiled_out, compiled) = run(False), run(True)
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"], dict(counters["graph_break"])  # compiled, no breaks
    assert compiled_out.global_step == 3 and abs(compiled_out.training_loss - eager_out.training_loss) < 1e-4
    for n in eager: assert relative(compiled[n], eager[n]) < 1e-4, n


# ---------------------------------------------------------------- in-place bookkeeping: the weight always holds base + Δ
def inplace_layer(seed=0):
    torch.manual_seed(seed)
    return SMTLinear(nn.Linear(70, 45), torch.tensor([[0, 0], [2, 4], [1, 2]]), 16, init_std=0.1, path="inplace")


def holds(layer) -> bool:
    "Does the weight hold base + Δ in every block?"
    w = logical_weight(layer.base_layer).detach()
    return torch.equal(gather_blocks(w, layer.grid, layer.blocks), layer.base_blocks + layer.smt_delta.detach() * layer_padding(layer))


def layer_padding(layer):
    from smt_nb.layers import padding_mask
    return padding_mask(layer.grid, layer.blocks)


def test_copies_and_pickles_write_their_own_delta(tmp_path):
    layer = inplace_layer()
    with torch.no_grad(): layer.smt_delta.mul_(2)          # by hand, no forward since: the weight still holds the old Δ
    copy_ = copy.deepcopy(layer)
    assert holds(copy_)                                     # the copy wrote its Δ
    torch.save(layer, tmp_path / "layer.pt")                # the load hook must pickle (a module-level function, no lambda)
    loaded = torch.load(tmp_path / "layer.pt", weights_only=False)
    assert holds(loaded)
    opt = torch.optim.SGD([loaded.smt_delta], lr=0.5)
    loaded(torch.randn(4, 70)).square().sum().backward(); opt.step()
    assert holds(loaded)                                    # registered for the step hook


def test_load_state_dict_always_rewrites():
    layer, other = inplace_layer(0), inplace_layer(1)
    layer.load_state_dict({"smt_delta": other.smt_delta.detach().clone() * 3}, strict=False, assign=True)  # a new tensor, version 0
    assert holds(layer)
    fresh = nn.Linear(70, 45).weight.detach()
    layer.load_state_dict({"base_layer.weight": fresh}, strict=False)  # the weight replaced: the blocks are written on it again
    assert holds(layer)


def test_unmerge_then_compiled_steps_write_delta_again():
    layer = inplace_layer()
    layer.merge(); layer.unmerge()                          # the original blocks are back in the weight
    assert not holds(layer) and sync_blocks(layer) == 1 and holds(layer)
    layer.unmerge()
    opt = torch.optim.SGD([layer.smt_delta], lr=0.1)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager")
    compiled(torch.randn(4, 70)).square().sum().backward(); opt.step()
    assert holds(layer)                                     # the step hook rewrote it; the compiled forward never looks


def test_disabled_layers_stay_base_through_steps_and_path_switches():
    from smt_nb.core import switch_path
    layer = inplace_layer()
    w0 = logical_weight(layer.base_layer).detach().clone()
    layer.unmerge(); original = logical_weight(layer.base_layer).detach().clone()
    layer.enable_adapters(False)
    holder = nn.Sequential(layer)
    switch_path(holder, "inplace")                          # must not write Δ into a disabled layer
    torch.optim.SGD([layer.smt_delta], lr=0.1).step()       # nor may a step (no gradient: nothing moves, the hook still runs)
    assert sync_blocks(holder) == 0
    assert torch.equal(logical_weight(layer.base_layer).detach(), original)
    layer.enable_adapters(True)
    assert holds(layer) and not torch.equal(w0, original)


@pytest.mark.parametrize("path", ["reference", "additive"])
def test_switching_away_from_inplace_stops_the_writes(path):
    "The step hook must leave a layer alone once it left the in-place path: its forward adds Δ itself (else Δ counts twice)."
    from smt_nb.core import switch_path
    layer = inplace_layer()
    holder = nn.Sequential(layer)
    switch_path(holder, path)
    original = logical_weight(layer.base_layer).detach().clone()
    x = torch.randn(5, 70)
    opt = torch.optim.SGD([layer.smt_delta], lr=0.1)
    layer(x).square().sum().backward(); opt.step()
    assert torch.equal(logical_weight(layer.base_layer).detach(), original)   # untouched by the step hook
    dense = layer.base_layer.weight.detach() + layer.delta_weight()
    torch.testing.assert_close(layer(x), x @ dense.T + layer.base_layer.bias)  # base + Δ once


def test_grouped_writes_only_take_float32_contiguous_deltas():
    from smt_nb.layers import groupable
    layer = SMTLinear(nn.Linear(70, 45).to(torch.bfloat16), torch.tensor([[0, 0]]), 16, path="inplace")
    assert groupable(layer)
    layer.smt_delta.data = layer.smt_delta.data.to(torch.bfloat16)  # what model.to(torch.bfloat16) does to an SMT model
    assert not groupable(layer)                             # the kernel reads float32 deltas: this layer is written by PyTorch ops
