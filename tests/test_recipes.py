"""Selection as the public implementations make it, checked against a small reference of the official procedure; selection algebra."""
import heapq
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, get_scheduler

from smt_nb.core import SMTConfig, prepare_smt, smt_layers
from smt_nb.recipes import ATTENTION_TYPES, CONSTANT_RATE_WARMUP, MLP_TYPES, official_smt_config, smft_config
from smt_nb.selection import (Selection, difference, intersection, load_selection, rebudget, restrict, save_selection,
                              selection_from_dict, selection_overlap, selection_to_dict, union, warmup_lr_at)
from smt_nb.train import counting_batches

B = 16


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2))


STATS = {  # the official code's statistics, on a (R, b, C, b) view of the summed gradient
    "mean_abs": lambda g: g.mean(dim=(1, 3)).abs(),
    "abs_mean": lambda g: g.abs().mean(dim=(1, 3)),
    "l1": lambda g: g.abs().sum(dim=(1, 3)),
    "l2": lambda g: torch.sqrt((g.abs() ** 2).sum(dim=(1, 3))),
}


def official_reference(model, batches, lr, n_attention, n_mlp, mlp_statistic, official=True, return_sums=False):
    """The official procedure, written out from deepspeed/fine_tune.py: full fine-tuning warm-up, per micro-batch backward, add each
    weight's (unclipped) gradient to a float32 sum, then DeepSpeed's step: clip the global gradient norm to 1.0 (gradient_clipping in
    helpers/deepspeed_helpers.py), AdamW step with betas (0.9, 0.95), weight decay 0, then the linear schedule's step (get_scheduler
    'linear', num_warmup_steps = the warm-up length: the first step takes lr 0). `official=False`: plain AdamW at a constant `lr`.
    Then per group the top blocks by its statistic from a min-heap of (score, ((type, layer), row, col))."""
    model.requires_grad_(True)
    if official:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
        sched = get_scheduler("linear", opt, num_warmup_steps=len(batches), num_training_steps=3 * len(batches))
    else:
        opt, sched = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0), None
    sums = {}
    for batch in batches:
        model(**batch).loss.backward()
        for name, p in model.named_parameters():
            kind = name.split(".")[-2]
            if kind in ATTENTION_TYPES + MLP_TYPES:
                sums[(kind, int(name.split(".")[2]))] = sums.get((kind, int(name.split(".")[2])), 0) + p.grad.detach().float()
        if official: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if sched is not None: sched.step()
        opt.zero_grad()
    chosen = {}
    for types, n, stat in ((ATTENTION_TYPES, n_attention, "mean_abs"), (MLP_TYPES, n_mlp, mlp_statistic)):
        heap = []
        for key, g in sums.items():
            if key[0] not in types: continue
            scores = STATS[stat](g.reshape(g.shape[0] // B, B, g.shape[1] // B, B))
            for i in range(scores.shape[0]):
                for j in range(scores.shape[1]):
                    item = (scores[i, j].item(), (key, i, j))
                    heapq.heappush(heap, item) if len(heap) < n else heapq.heappushpop(heap, item)
        for _, (key, i, j) in heap: chosen.setdefault(key, set()).add((i, j))
    return (chosen, sums) if return_sums else chosen


def jaccard(got, ref):
    inter = sum(len(got.get(k, set()) & ref.get(k, set())) for k in set(got) | set(ref))
    return inter / sum(len(got.get(k, set()) | ref.get(k, set())) for k in set(got) | set(ref))


def as_official_keys(sel: Selection):
    return {(n.split(".")[-1], int(n.split(".")[2])): {tuple(b) for b in blocks.tolist()} for n, blocks in sel.blocks.items() if len(blocks)}


@pytest.mark.parametrize("lr,mlp_statistic", [(1e-3, "l1"), (1e-2, "mean_abs"), (1e-4, "l2")])
def test_constant_rate_warmup_selects_the_same_blocks(lr, mlp_statistic):
    batches = counting_batches(6, 64, batch_size=4, seq_len=16, seed=3)
    ref = official_reference(tiny_llama(), batches, lr, 5, 7, mlp_statistic, official=False)
    ours = prepare_smt(tiny_llama(), official_smt_config(5, 7, mlp_statistic, block_size=B, warmup_steps=6, warmup_lr=lr, **CONSTANT_RATE_WARMUP),
                       dataloader=batches).smt_selection
    assert jaccard(as_official_keys(ours), ref) == 1.0


@pytest.mark.parametrize("lr,mlp_statistic", [(1e-5, "l1"), (1e-4, "abs_mean"), (1e-3, "l2")])
def test_official_warmup_selects_the_official_blocks_and_scores(lr, mlp_statistic):
    """Acceptance for issue 31: official_smt_config's default warm-up (β2 0.95, clip 1.0, linear ramp from 0) = the official loop."""
    batches = counting_batches(12, 64, batch_size=4, seq_len=16, seed=3)
    ref, sums = official_reference(tiny_llama(), batches, lr, 5, 7, mlp_statistic, return_sums=True)
    cfg = official_smt_config(5, 7, mlp_statistic, block_size=B, warmup_steps=12, warmup_lr=lr)
    assert (cfg.warmup_adam_beta2, cfg.warmup_max_grad_norm, cfg.warmup_schedule) == (0.95, 1.0, "linear_ramp")
    ours = prepare_smt(tiny_llama(), cfg, dataloader=batches).smt_selection
    assert jaccard(as_official_keys(ours), ref) == 1.0
    for n, s in ours.scores.items():
        kind, layer = n.split(".")[-1], int(n.split(".")[2])
        g = sums[(kind, layer)]
        want = STATS["mean_abs" if kind in ATTENTION_TYPES else mlp_statistic](g.reshape(g.shape[0] // B, B, g.shape[1] // B, B))
        assert ((s - want).norm() / want.norm()).item() < 1e-5, n
    if lr == 1e-3:  # the settings matter: the constant-rate warm-up's gradient sums are not the official ones
        _, plain = official_reference(tiny_llama(), batches, lr, 5, 7, mlp_statistic, official=False, return_sums=True)
        assert max(((plain[k] - g).norm() / g.norm()).item() for k, g in sums.items()) > 1e-2


def test_linear_ramp_is_transformers_linear_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    sched = get_scheduler("linear", opt, num_warmup_steps=7, num_training_steps=100)
    for k in range(7):
        assert warmup_lr_at(3e-4, k, 7, "linear_ramp") == opt.param_groups[0]["lr"]
        opt.step(); sched.step()
    assert warmup_lr_at(3e-4, 0, 7, "linear_ramp") == 0.0 and warmup_lr_at(3e-4, 5, 7, "constant") == 3e-4


def test_official_warmup_options_need_steps():
    assert official_smt_config(2, 2, warmup_lr=None).warmup_schedule == "constant"  # no steps: no optimizer options
    with pytest.raises(ValueError, match="set warmup_lr"):
        SMTConfig(warmup_max_grad_norm=1.0)
    with pytest.raises(ValueError, match="warmup_schedule"):
        official_smt_config(2, 2, warmup_schedule="cosine")


def test_warmup_steps_leave_the_base_as_it_was():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    cfg = official_smt_config(3, 3, block_size=B, warmup_steps=3, warmup_lr=1e-2)
    prepare_smt(model, cfg, dataloader=counting_batches(3, 64, batch_size=4, seq_len=16)).unload()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    kept = prepare_smt(tiny_llama(), official_smt_config(3, 3, block_size=B, warmup_steps=3, warmup_lr=1e-2, warmup_keep_updates=True),
                       dataloader=counting_batches(3, 64, batch_size=4, seq_len=16)).unload()
    assert not all(torch.equal(v, before[k]) for k, v in kept.state_dict().items())


def test_smft_accumulation_differs_from_the_paper_only_across_steps():
    one = counting_batches(1, 64, batch_size=4, seq_len=16, seed=5)
    smft = prepare_smt(tiny_llama(), smft_config(0.1, block_size=B, warmup_steps=1), dataloader=one).smt_selection
    paper = prepare_smt(tiny_llama(), SMTConfig(block_size=B, sparsity=0.1, statistic="abs_mean", warmup_steps=1), dataloader=one).smt_selection
    assert selection_overlap(smft, paper)["jaccard"] == 1.0
    many = counting_batches(8, 64, batch_size=4, seq_len=16, seed=5)
    smft8 = prepare_smt(tiny_llama(), smft_config(0.1, block_size=B, warmup_steps=8), dataloader=many).smt_selection
    # the reference for SMFT: |per-step gradient| summed, then block means
    model = tiny_llama()
    targets = {n: m for n, m in model.named_modules() if n.endswith(tuple(ATTENTION_TYPES))}
    model.requires_grad_(False)
    for m in targets.values(): m.weight.requires_grad_(True)
    sums = {n: 0 for n in targets}
    for b in many:
        model(**b).loss.backward()
        for n, m in targets.items(): sums[n] = sums[n] + m.weight.grad.abs(); m.weight.grad = None
    ref = {n: STATS["abs_mean"](s.reshape(s.shape[0] // B, B, s.shape[1] // B, B)) for n, s in sums.items()}
    for n in targets: torch.testing.assert_close(smft8.scores[n], ref[n], rtol=1e-4, atol=1e-9)


def test_selection_algebra_round_trips_through_json_and_prepare_smt(tmp_path):
    warm = counting_batches(2, 64, batch_size=4, seq_len=16)
    a = prepare_smt(tiny_llama(), SMTConfig(block_size=B, sparsity=0.1, method="mw", target_modules=ATTENTION_TYPES)).smt_selection
    b = prepare_smt(tiny_llama(), SMTConfig(block_size=B, sparsity=0.1, warmup_steps=2, target_modules=ATTENTION_TYPES),
                    dataloader=warm).smt_selection
    for op, sel in (("union", a | b), ("intersection", a & b), ("difference", a - b)):
        save_selection(sel, tmp_path / f"{op}.json")
        back = load_selection(tmp_path / f"{op}.json")
        assert {n: x.tolist() for n, x in back.blocks.items()} == {n: x.tolist() for n, x in sel.blocks.items()} and back.meta["method"] == op
        if back.n_blocks == 0: continue
        model = prepare_smt(tiny_llama(), selection=back)
        assert {n: l.blocks.tolist() for n, l in smt_layers(model).items()} == {n: x.tolist() for n, x in back.blocks.items() if len(x)}
    sa, sb = ({(n, tuple(x)) for n, bl in s.blocks.items() for x in bl.tolist()} for s in (a, b))
    assert {(n, tuple(x)) for n, bl in union(a, b).blocks.items() for x in bl.tolist()} == sa | sb
    assert {(n, tuple(x)) for n, bl in intersection(a, b).blocks.items() for x in bl.tolist()} == sa & sb
    assert {(n, tuple(x)) for n, bl in difference(a, b).blocks.items() for x in bl.tolist()} == sa - sb
    v_only = restrict(a, ["v_proj"])
    assert all(n.endswith("v_proj") for n in v_only.grids) and rebudget(a, n_blocks=1).n_blocks == 1
    with pytest.raises(ValueError, match="Block sizes differ"):
        union(a, prepare_smt(tiny_llama(), SMTConfig(block_size=32, sparsity=0.2, method="mw")).smt_selection)
