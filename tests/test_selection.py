"""Block scorers: hook-based GW equals dense autograd for every statistic; AW/MW/GW through prepare_smt; budgets; selections as data."""
from types import SimpleNamespace

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from smt_nb.blocks import STATISTICS, block_reduce
from smt_nb.core import SMTConfig, prepare_smt, find_targets, make_grids, smt_layers
from smt_nb.selection import score_gw, score_aw, save_selection, load_selection, selection_overlap
from conftest import ARCHS, ALL_LINEAR, batches


def rel_err(a, b): return ((a - b).norm() / b.norm()).item()


def dense_gradient_sum(model, targets, data, accum):
    "Reference: autograd weight gradients summed over the warm-up micro-batches, in the logical (out, in) orientation."
    model.requires_grad_(False)
    for m in targets.values(): m.weight.requires_grad_(True)
    for b in data: (model(**b).loss / accum).backward()
    grads = {n: (m.weight.grad.t() if isinstance(m, Conv1D) else m.weight.grad).clone() for n, m in targets.items()}
    model.requires_grad_(False)
    for m in targets.values(): m.weight.grad = None
    return grads


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("statistic", STATISTICS)
def test_gw_equals_dense_autograd(arch, statistic):
    model = ARCHS[arch]()
    targets = find_targets(model, ALL_LINEAR[arch])
    grids = make_grids(targets, 32)  # hidden 48: ragged blocks
    data = batches(4, seed=3)
    cfg = SimpleNamespace(statistic=statistic, warmup_steps=2, gradient_accumulation_steps=2)
    hooked = score_gw(model, targets, grids, data, cfg)
    ref = dense_gradient_sum(model, targets, data, accum=2)
    for n in targets:
        expected = block_reduce(ref[n], grids[n], statistic)
        assert rel_err(hooked[n], expected) < 1e-5, n
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method", ["gw", "aw", "mw", "random"])
def test_methods_through_prepare_smt_are_deterministic(method):
    def run():
        cfg = SMTConfig(block_size=16, sparsity=0.1, method=method, warmup_steps=3, target_modules=ALL_LINEAR["llama"])
        return prepare_smt(ARCHS["llama"](), cfg, dataloader=batches(3, seed=1)).smt_selection
    a, b = run(), run()
    assert a.meta["method"] == method
    assert {n: t.tolist() for n, t in a.blocks.items()} == {n: t.tolist() for n, t in b.blocks.items()}
    assert 0 < a.n_trainable <= 0.1 * a.n_target_values


def test_gw_and_aw_need_data():
    for method in ("gw", "aw"):
        with pytest.raises(ValueError, match=f"method='{method}' needs warm-up data"):
            prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, method=method))


def test_short_and_empty_dataloaders():
    cfg = SMTConfig(block_size=16, sparsity=0.1, warmup_steps=5)
    with pytest.warns(UserWarning, match="ran out after 2 of 5 micro-batches"):
        prepare_smt(ARCHS["llama"](), cfg, dataloader=batches(2))
    with pytest.raises(ValueError, match="yielded no batches"):
        prepare_smt(ARCHS["llama"](), cfg, dataloader=[])


def test_per_type_budget_only_v():
    cfg = SMTConfig(block_size=16, sparsity=0.05, method="mw", budget="per_type", type_shares={"v_proj": 1.0})
    model = prepare_smt(ARCHS["llama"](), cfg)
    assert model.smt_selection.n_blocks > 0
    assert all(n.endswith("v_proj") for n in smt_layers(model))


def test_selection_json_round_trip_and_reuse(tmp_path):
    sel = prepare_smt(ARCHS["gpt2"](), SMTConfig(block_size=16, sparsity=0.1, warmup_steps=2), dataloader=batches(2)).smt_selection
    save_selection(sel, tmp_path / "sel.json")
    back = load_selection(tmp_path / "sel.json")
    assert selection_overlap(sel, back)["jaccard"] == 1.0
    model = prepare_smt(ARCHS["gpt2"](), selection=back)
    assert {n: l.blocks.tolist() for n, l in smt_layers(model).items()} == {n: b.tolist() for n, b in sel.blocks.items() if len(b)}


def test_aw_matches_definition():
    model = ARCHS["llama"]()
    targets = find_targets(model, ["v_proj"])
    grids = make_grids(targets, 16)
    data = batches(2)
    scores = score_aw(model, targets, grids, data, SimpleNamespace(warmup_steps=2))
    inputs = {n: [] for n in targets}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: inputs[n].append(a[0].reshape(-1, a[0].shape[-1]))) for n, m in targets.items()]
    with torch.no_grad():
        for b in data: model(**b)
    for h in hooks: h.remove()
    for n, m in targets.items():
        norms = torch.cat(inputs[n]).norm(dim=0)
        expected = block_reduce(m.weight.abs() * norms[None, :], grids[n], "abs_mean")
        assert rel_err(scores[n], expected.detach()) < 1e-5


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_gw_reaches_encoder_and_decoder(arch):
    "Encoder-decoders embed encoder and decoder tokens in two modules sharing one weight: the warm-up must start backward from both."
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration
    torch.manual_seed(0)
    if arch == "t5":
        model, targets = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                                             decoder_start_token_id=0)), ["q", "k", "v"]
    else:
        model, targets = BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1,
                                                                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                                                 decoder_ffn_dim=64, max_position_embeddings=64)), ["q_proj", "k_proj", "v_proj"]
    g = torch.Generator().manual_seed(0)
    warm = [dict(input_ids=torch.randint(2, 64, (2, 10), generator=g), labels=torch.randint(2, 64, (2, 6), generator=g)) for _ in range(2)]
    sel = prepare_smt(model, SMTConfig(block_size=8, sparsity=0.1, warmup_steps=2, target_modules=targets, budget="per_matrix"),
                      dataloader=warm).smt_selection
    assert all(s.abs().sum() > 0 for s in sel.scores.values())  # every target, encoder and decoder, got a gradient
    assert any(len(b) for n, b in sel.blocks.items() if n.startswith("encoder.") or ".encoder." in n)
    assert any(len(b) for n, b in sel.blocks.items() if n.startswith("decoder.") or ".decoder." in n)


def test_warmup_optimizer_options_match_a_plain_loop():
    "warmup_lr with every optimizer option (β1, β2, decoupled decay off biases/norms, clipping, linear ramp) and gradient accumulation."
    from smt_nb.selection import NO_DECAY
    data = batches(6, seed=4)
    cfg = SMTConfig(block_size=16, sparsity=0.2, statistic="l1", target_modules=["q_proj", "v_proj"], warmup_steps=3, gradient_accumulation_steps=2,
                    warmup_lr=3e-3, warmup_adam_beta1=0.8, warmup_adam_beta2=0.95, warmup_weight_decay=0.1, warmup_max_grad_norm=0.5,
                    warmup_schedule="linear_ramp")
    ours = prepare_smt(ARCHS["qwen2"](), cfg, dataloader=data).smt_selection
    assert ours.meta["warmup_schedule"] == "linear_ramp" and ours.meta["warmup_max_grad_norm"] == 0.5
    model = ARCHS["qwen2"]()  # qwen2: q/k/v carry biases, which take no decay
    named = list(model.named_parameters())
    no_decay = [p for n, p in named if any(k in n.lower() for k in NO_DECAY)]
    assert any(n.endswith("q_proj.bias") for n, p in named if any(p is q for q in no_decay))
    opt = torch.optim.AdamW([dict(params=[p for n, p in named if not any(k in n.lower() for k in NO_DECAY)], weight_decay=0.1),
                             dict(params=no_decay, weight_decay=0.0)], lr=3e-3, betas=(0.8, 0.95))
    targets = {n: m for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj"))}
    sums = {n: 0 for n in targets}
    for step in range(3):
        for b in data[2 * step:2 * step + 2]:
            (model(**b).loss / 2).backward()
        for n, m in targets.items(): sums[n] = sums[n] + m.weight.grad  # the step's (unclipped) gradient
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        for g in opt.param_groups: g["lr"] = 3e-3 * step / 3
        opt.step(); opt.zero_grad()
    for n, g in sums.items():
        assert rel_err(ours.scores[n], block_reduce(g.float(), ours.grids[n], "l1")) < 1e-5, n
