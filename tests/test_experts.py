"""SMT on the fused expert weights of the MoE decoders of transformers 5 (`target_parameters`), each built tiny from its own config
class: GW picks blocks in experts that got tokens, one SGD step equals the dense step masked to the trained blocks (2-D targets and
experts), nothing else moves, save → load is bitwise, merge and unload are exact."""
import pytest
import torch

from smt_nb.core import SMTConfig, default_targets, load_smt, merge_and_unload, prepare_smt, smt_layers, switch_path, unload
from smt_nb.experts import expert_parameters, smt_experts
from smt_nb.train import smt_parameters

from test_architectures import batch, build, check_step_equals_masked_dense
from conftest import run_in_triton_interpreter

MOE = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "phimoe", "gpt_oss", "llama4_text", "deepseek_v2", "deepseek_v3"]
EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]


def prepared(model_type):
    model = build(model_type)
    config = SMTConfig(block_size=16, sparsity=0.1, method="gw", warmup_steps=1, target_modules=default_targets(model),
                       target_parameters=EXPERTS, budget="per_type")  # each type its share: experts and attention both train
    return prepare_smt(model, config, dataloader=[batch(model_type)])


@pytest.mark.parametrize("model_type", MOE)
def test_experts_end_to_end(model_type, tmp_path):
    data = batch(model_type)
    model = prepared(model_type)
    sel, layers, experts = model.smt_selection, smt_layers(model), smt_experts(model)
    assert {n.rsplit(".", 1)[-1] for n in experts} == {"gate_up_proj", "down_proj"}, "both expert weights train"
    assert set(experts) <= set(expert_parameters(model, EXPERTS))
    expert_names = [n for n in sel.blocks if n not in dict(model.named_modules())]
    chosen = [n for n in expert_names if len(sel.blocks[n])]
    assert chosen, "GW chose no expert block"
    for n in chosen:  # experts that got no token have all-zero GW scores: the chosen ones received tokens
        assert (sel.scores[n][sel.blocks[n][:, 0], sel.blocks[n][:, 1]] > 0).all(), n

    base = {n: p.detach().clone() for n, p in build(model_type).named_parameters()}
    masks = check_step_equals_masked_dense(model_type, model, data)
    trained = {}
    for n, mask in masks.items():
        now = model.get_parameter(n).detach()
        assert torch.equal(now[~mask], base[n][~mask]), f"{n}: values outside the blocks moved"
        trained[n] = now.clone()
    for n, p in model.named_parameters():  # nothing else moved (2-D targets hold their base: the in-place path writes them)
        if n in base and n not in experts and not any(n == f"{l}.weight" for l in layers):
            assert torch.equal(p.detach(), base[n]), n

    with torch.no_grad(): logits = model(**data).logits
    model.save_pretrained(tmp_path)
    loaded = load_smt(build(model_type), tmp_path)
    for n, m in smt_experts(loaded).items():
        assert torch.equal(m.smt_delta, experts[n].smt_delta) and torch.equal(loaded.get_parameter(n), trained[n]), n
    assert all(torch.equal(a.smt_delta, b.smt_delta) for a, b in zip(layers.values(), smt_layers(loaded).values()))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**data).logits, logits)
        merged = merge_and_unload(loaded)
        assert not smt_experts(merged) and not smt_layers(merged)
        for n in experts: assert torch.equal(merged.get_parameter(n), trained[n]), n  # base + Δ, as trained
        torch.testing.assert_close(merged(**data).logits, logits, rtol=1e-4, atol=1e-5)
        plain = unload(load_smt(build(model_type), tmp_path))
        assert all(torch.equal(p, base[n]) for n, p in plain.named_parameters()), "unload gives the base back"


def mixtral(**kw):
    config = dict(block_size=16, sparsity=0.1, method="gw", warmup_steps=1, target_modules=["q_proj", "v_proj"],
                  target_parameters=EXPERTS, budget="per_type")
    config.update(kw)
    return prepare_smt(build("mixtral"), SMTConfig(**config), dataloader=[batch("mixtral")])


def test_disable_adapter_gives_the_base_and_trains_nothing():
    data = batch("mixtral")
    model = mixtral(init_std=0.05)
    with torch.no_grad(): base_logits = build("mixtral")(**data).logits
    with model.disable_adapter():
        with torch.no_grad(): torch.testing.assert_close(model(**data).logits, base_logits, rtol=0, atol=0)
        assert not model(**data).loss.requires_grad  # no Δ takes part: nothing to train
    with torch.no_grad(): assert not torch.equal(model(**data).logits, base_logits)  # the deltas are back


@pytest.mark.parametrize("method", ["aw", "mw", "random"])
def test_other_scorers_and_experts_alone(method):
    model = mixtral(method=method, target_modules=None)  # target_parameters alone: no 2-D module is adapted (PEFT's rule)
    assert not smt_layers(model) and smt_experts(model)
    assert model.smt_selection.meta["method"] == method
    opt = torch.optim.SGD(smt_parameters(model), lr=0.1)
    model(**batch("mixtral")).loss.backward(); opt.step()
    assert any(m.smt_delta.abs().sum() > 0 for m in smt_experts(model).values())


def test_selection_reuse_state_dict_and_refusals(tmp_path):
    model = mixtral(init_std=0.05)
    again = prepare_smt(build("mixtral"), selection=model.smt_selection)  # the same blocks on a fresh base
    assert again.smt_config.target_parameters == sorted(smt_experts(model))
    assert all(torch.equal(a.blocks, b.blocks) for a, b in zip(smt_experts(model).values(), smt_experts(again).values()))
    again.load_state_dict(model.state_dict())  # a loaded Δ is written into the expert weights at once
    for n in smt_experts(model): assert torch.equal(again.get_parameter(n), model.get_parameter(n)), n
    with pytest.raises(NotImplementedError, match="not 'additive'"): model.switch_path("additive")
    with pytest.raises(ValueError, match="already has SMT layers"): prepare_smt(model, target_parameters=EXPERTS, method="mw")
    model.save_pretrained(tmp_path)
    other = build("mixtral", seed=1)
    before = {n: p.detach().clone() for n, p in other.named_parameters()}
    with pytest.raises(ValueError, match="not the base the adapter was trained on"): load_smt(other, tmp_path)
    assert not smt_experts(other) and all(torch.equal(p, before[n]) for n, p in other.named_parameters())  # left untouched
    with pytest.raises(ValueError, match="custom scoring function"):
        prepare_smt(build("mixtral"), SMTConfig(target_parameters=EXPERTS, method=lambda *a: {}))
    with pytest.raises(ValueError, match="warmup_lr"):
        prepare_smt(build("mixtral"), SMTConfig(target_parameters=EXPERTS, warmup_lr=1e-3), dataloader=[batch("mixtral")])
    given = prepare_smt(build("mixtral"), SMTConfig(warmup_lr=1e-3), selection=model.smt_selection)  # a given selection is not rescored
    assert len(smt_experts(given)) == len(smt_experts(model))
    with pytest.raises(TypeError, match="list of parameter names"): SMTConfig(target_parameters="mlp.experts.down_proj")


def test_smt_trainer_bf16_checkpoints_resume_exactly(tmp_path):
    from transformers import TrainingArguments
    from smt_nb.train import SMTTrainer
    g = torch.Generator().manual_seed(5)
    rows = [{"input_ids": (ids := torch.randint(3, 128, (12,), generator=g)), "labels": ids} for _ in range(16)]
    def trainer(model, max_steps):
        args = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, max_steps=max_steps, save_steps=2,
                                 per_device_train_batch_size=4, learning_rate=1e-2, report_to=[], disable_tqdm=True, seed=0)
        return SMTTrainer(model=model, args=args, train_dataset=rows)
    straight = mixtral()
    trainer(straight, 4).train()
    resumed = mixtral()
    trainer(resumed, 4).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    a, b = smt_experts(straight), smt_experts(resumed)
    assert all(torch.equal(a[n].smt_delta, b[n].smt_delta) for n in a)  # bit-exact
    assert all(a[n].smt_delta.abs().sum() > 0 for n in a)
    for n in a: assert torch.equal(straight.get_parameter(n), resumed.get_parameter(n))


def test_a_router_that_subclasses_linear_is_not_a_linear_target():
    "PhiMoE's router is an nn.Linear whose forward returns (logits, chosen experts): 'all-linear' leaves it out, naming it raises."
    from smt_nb.core import find_targets
    model = build("phimoe")
    assert not any(n.endswith("mlp.router") for n in find_targets(model, "all-linear"))
    with pytest.raises(TypeError, match="forward of its own"): find_targets(model, ["mlp.router"])


def test_torch_compile_breaks_the_graph_around_experts_and_trains_as_eager():
    "torch.compile runs the experts modules between graphs (their routing hooks and mode): two steps equal eager's; fullgraph refuses."
    import torch._dynamo
    deltas, weights = {}, {}
    for compiled in (False, True):
        torch._dynamo.reset()
        model = mixtral()
        opt = torch.optim.SGD(smt_parameters(model), lr=0.1)
        run = torch.compile(model) if compiled else model
        for _ in range(2): run(**batch("mixtral")).loss.backward(); opt.step(); opt.zero_grad()
        deltas[compiled] = {n: m.smt_delta.detach().clone() for n, m in smt_experts(model).items()}
        weights[compiled] = {n: model.get_parameter(n).detach().clone() for n in deltas[compiled]}
    for n in deltas[False]:
        assert deltas[False][n].abs().max() > 0
        torch.testing.assert_close(deltas[True][n], deltas[False][n], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(weights[True][n], weights[False][n], rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="without torch.compile"):
        torch.compile(mixtral(), fullgraph=True)(**batch("mixtral"))


def test_groups_budget_names_expert_types_and_refuses_their_own_statistic():
    groups = {"attention": {"types": ["q_proj", "v_proj"], "n_blocks": 2},
              "experts": {"types": ["gate_up_proj", "down_proj"], "n_blocks": 6}}
    model = mixtral(budget="groups", groups=groups)
    chosen = {n: len(b) for n, b in model.smt_selection.blocks.items() if len(b)}
    assert sum(k for n, k in chosen.items() if "experts" in n) == 6 and sum(k for n, k in chosen.items() if "self_attn" in n) == 2
    groups["experts"]["statistic"] = "l2"
    with pytest.raises(ValueError, match="statistic of its own"): mixtral(budget="groups", groups=groups)


def test_review_cases_device_hand_edits_unload_in_disable_half_prepare_names_and_exclusions():
    "Cases a review found: each must hold (they failed before the fixes)."
    data = batch("mixtral")
    with torch.no_grad(): base_logits = build("mixtral")(**data).logits
    # the kernels' block tables follow the model to another device (here: meta) as Δ does
    moved = mixtral().to("meta")
    assert all(t.device.type == "meta" for m in smt_experts(moved).values() for t in (m.block_experts, m.rows, m.cols, m.base_samples))
    # a Δ changed by hand is written into the weight before the next forward reads it
    model = mixtral(init_std=0.05)
    with torch.no_grad():
        for m in smt_experts(model).values(): m.smt_delta.zero_()
        for l in smt_layers(model).values(): l.smt_delta.zero_()
        torch.testing.assert_close(model(**data).logits, base_logits, rtol=0, atol=0)
    # unload() inside disable_adapter(): the base, bit for bit, after the block too
    base = {n: p.detach().clone() for n, p in build("mixtral").named_parameters()}
    model = mixtral(init_std=0.05)
    with model.disable_adapter(): plain = unload(model)
    assert all(torch.equal(p, base[n]) for n, p in plain.named_parameters())
    # a refusal while installing leaves no SMT layer behind, and the model can be prepared again
    refused = build("mixtral"); refused.set_experts_implementation("batched_mm")
    with pytest.raises(ValueError, match="experts_implementation"):
        prepare_smt(refused, SMTConfig(block_size=16, method="mw", target_modules=["q_proj"], target_parameters=EXPERTS))
    assert not smt_layers(refused) and not smt_experts(refused) and all(p.requires_grad for p in refused.parameters())
    refused.set_experts_implementation("grouped_mm")
    assert smt_experts(prepare_smt(refused, SMTConfig(block_size=16, method="mw", target_modules=["q_proj"], target_parameters=EXPERTS)))
    # an expert spelled with a leading zero names no expert
    sel = mixtral().smt_selection
    renamed = {n.replace("experts.3.", "experts.03."): b for n, b in sel.blocks.items()}
    from smt_nb.selection import Selection
    odd = Selection(renamed, {n.replace("experts.3.", "experts.03."): g for n, g in sel.grids.items()}, {}, sel.meta)
    with pytest.raises(ValueError, match="does not have"): prepare_smt(build("mixtral"), selection=odd)
    # exclude_modules applies to expert weights (by the experts module's name or the weight's)
    kept = mixtral(method="mw", exclude_modules=["model.layers.0.mlp.experts"])
    assert sorted(smt_experts(kept)) == ["model.layers.1.mlp.experts.down_proj", "model.layers.1.mlp.experts.gate_up_proj"]
    with pytest.raises(ValueError, match="matched nothing once exclude_modules"): mixtral(method="mw", target_modules=None, exclude_modules=r".*experts.*")


@pytest.mark.parametrize("implementation", ["grouped_mm", "eager"])
def test_reference_path_trains_as_in_place_and_keeps_the_base(implementation):
    "FSDP2's path: each call computes with a copy holding base + Δ; the deltas, the logits and (after switching back) the weights equal in place's."
    data = batch("mixtral")
    def trained(path):
        torch.manual_seed(0)
        model = mixtral(init_std=0.05)                     # Δ ≠ 0 from the start: the copies must hold it
        model.set_experts_implementation(implementation)
        switch_path(model, path)
        opt = torch.optim.SGD(smt_parameters(model), lr=0.1)
        for _ in range(2): model(**data).loss.backward(); opt.step(); opt.zero_grad()
        with torch.no_grad(): return model, model(**data).logits
    (inplace, logits), (reference, ref_logits) = trained("inplace"), trained("reference")
    for n, m in smt_experts(inplace).items():
        assert torch.equal(m.smt_delta, smt_experts(reference)[n].smt_delta) and m.smt_delta.abs().sum() > 0, n
    torch.testing.assert_close(ref_logits, logits, rtol=0, atol=0)
    base = build("mixtral")
    for n, m in smt_experts(reference).items():
        assert m.path == "reference" and torch.equal(reference.get_parameter(n), base.get_parameter(n)), n  # the weight kept the base
    switch_path(reference, "inplace")                       # back: base + Δ written, as the in-place run holds it
    for n in smt_experts(reference): assert torch.equal(reference.get_parameter(n), inplace.get_parameter(n)), n


def test_a_gathered_input_changed_in_place_is_kept_as_it_is():
    "Backward gathers `source[index]` again only while neither changed since the gather; after an in-place op the call keeps x itself."
    from smt_nb.experts import ExpertCalls, _unchanged_rows_of
    source, index = torch.randn(4, 3), torch.tensor([0, 0, 2, 3])
    with ExpertCalls({"w": torch.randn(2, 3, 5)}, lambda *call: None):
        x, y = source[index], source[index]
    assert _unchanged_rows_of(x) == (source, index, ())
    x.mul_(3)                                                  # the gathered rows changed
    source.add_(1)                                             # and so did the source
    assert _unchanged_rows_of(x) is None and _unchanged_rows_of(y) is None


def test_a_masked_fill_of_gathered_rows_is_replayed_in_backward():
    "transformers 5.17 zeroes expert-parallel sentinel rows of the gathered input in place: the recipe records the fill and replays it."
    from smt_nb.experts import ExpertCalls, _remade, _unchanged_rows_of
    source, index = torch.randn(4, 3), torch.tensor([0, 0, 2, 3, 1])
    mask = torch.tensor([[False], [True], [False], [False], [True]])
    with ExpertCalls({"w": torch.randn(2, 3, 5)}, lambda *call: None):
        x = source[index]
        x.masked_fill_(mask, 0.0)
    src, idx, fills = _unchanged_rows_of(x)
    assert src is source and idx is index and len(fills) == 1 and fills[0][0] is mask
    again = _remade("rows", tuple(v for _, v, _ in fills), [src, idx, *(m for m, _, _ in fills)])
    assert torch.equal(again, x) and again[1].abs().sum() == 0
    mask.logical_not_()                                        # the mask changed after the fill: keep x itself
    assert _unchanged_rows_of(x) is None


def test_the_down_projections_input_is_remade_from_autograds_own_factors_and_kept_whole_otherwise():
    "`act(gate) * up` made inside an experts forward is kept as its two factors (saved by the product anyway) and multiplied again."
    from smt_nb.experts import ExpertCalls, _product_factors
    a, b = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    act = torch.nn.functional.silu(a)
    hooks = lambda: torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t)  # offloading, compression: copies
    with ExpertCalls({"w": torch.randn(2, 4, 5)}, lambda *call: None):
        x, y, z, c = act * b, act * b, act * b, torch.randn(6, 4, requires_grad=True)
        w, s, t = act * c, act + b, act * 2.0
        broadcast, no_graph = act * b[:1], torch.randn(6, 4) * torch.randn(6, 4)
        with hooks(): packed = act * b                          # factors saved through hooks: maybe not the same tensors
    outside = act * b                                           # not made in an experts forward
    kept = _product_factors(x)
    assert kept is not None and kept[0].data_ptr() == act.data_ptr() and kept[1].data_ptr() == b.data_ptr()
    assert torch.equal(kept[0] * kept[1], x)
    with hooks(): assert _product_factors(z) is None            # hooks at the call (checkpointing): keep x itself
    assert _product_factors(packed) is None and _product_factors(outside) is None
    assert _product_factors(s) is None and _product_factors(t) is None  # not a product of two tensors
    assert _product_factors(broadcast) is None and _product_factors(no_graph) is None
    with torch.no_grad(): y.add_(1)                             # x changed after the product
    assert _product_factors(y) is None
    with torch.no_grad(): c.add_(1)                             # a factor changed after the product
    assert _product_factors(w) is None and _product_factors(z) is not None


@pytest.mark.parametrize("implementation", [None, "eager"])
def test_remade_inputs_give_the_gradients_of_inputs_kept_whole(implementation):
    "With saved-tensor hooks in force every call keeps its input as it is: the block gradients are the same bits either way."
    model = build("mixtral")
    if implementation: model.set_experts_implementation(implementation)
    config = SMTConfig(block_size=16, sparsity=0.2, method="random", target_modules=["q_proj"], target_parameters=EXPERTS)
    model = prepare_smt(model, config)
    def grads(hooks):
        model.zero_grad(set_to_none=True)
        if hooks:
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t): loss = model(**batch("mixtral")).loss
        else: loss = model(**batch("mixtral")).loss
        loss.backward()
        return {n: m.smt_delta.grad.clone() for n, m in smt_experts(model).items()}
    remade, whole = grads(False), grads(True)
    assert remade.keys() == whole.keys() and any(g.abs().sum() > 0 for g in remade.values())
    for n in remade: assert torch.equal(remade[n], whole[n]), n


GROUPED_EXPERT_WRITE = """
import torch
from transformers import MixtralConfig, MixtralForCausalLM
from smt_nb.experts import expert_parameters, expert_grids, install_experts, _expert_table, _aligned
from smt_nb.kernels import write_blocks_triton
dtype = getattr(torch, {dtype!r})
torch.manual_seed(0)
cfg = MixtralConfig(vocab_size=64, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64)
model = MixtralForCausalLM(cfg).to(dtype)
params = expert_parameters(model, ["experts.gate_up_proj", "experts.down_proj"])
grids = expert_grids(params, 32)
g = torch.Generator().manual_seed(1)
blocks = {{n: torch.stack([torch.randint(0, gr.n_rows, (2,), generator=g), torch.randint(0, gr.n_cols, (2,), generator=g)], 1).unique(dim=0)
          for n, gr in grids.items()}}
modules = list(install_experts(model, params, blocks, 32).values())
expected = []
for m in modules:
    with torch.no_grad(): m.smt_delta.normal_(0, 0.05)
    m.write(); expected.append(m.weight.detach().clone())   # PyTorch's scatter, weight by weight
    m.write(delta=False)                                     # the original values back
table, n = _expert_table(modules)
write_blocks_triton(table, n, 32, dtype)                    # one launch for every expert block of the model (down_proj ragged: 80 = 2.5 x 32)
general = all(torch.equal(m.weight.detach(), e) for m, e in zip(modules, expected))
aligned = [(m, e) for m, e in zip(modules, expected) if _aligned(m)]
assert len(aligned) == 2, "the gate_up_proj weights have whole blocks and row-major rows"
for m, _ in aligned: m.write(delta=False)
table, n = _expert_table([m for m, _ in aligned])
write_blocks_triton(table, n, 32, dtype, aligned=True)      # the vectorised form
print(general and all(torch.equal(m.weight.detach(), e) for m, e in aligned))
"""


@pytest.mark.parametrize("dtype", ["float32", "float16"])  # bf16: the interpreter truncates float32 -> bf16 (the GPU rounds; check_cuda checks it)
def test_grouped_expert_write_matches_pytorch_in_interpreter(dtype):
    "The one-launch write of every expert block after an optimizer step, in Triton's CPU interpreter: PyTorch's scatter, bit for bit."
    assert run_in_triton_interpreter(GROUPED_EXPERT_WRITE.format(dtype=dtype)) == "True"
