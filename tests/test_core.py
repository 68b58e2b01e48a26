"""prepare_smt across architectures: SMT training equals masked dense training; save/load and merge round trips."""
import pytest
import torch
import torch.nn as nn

from smt_nb.blocks import block_mask
from smt_nb.core import SMTConfig, prepare_smt, smt_layers, load_smt, save_smt, merge_and_unload, trainable_report
from smt_nb.layers import SMTLinear, logical_weight
from conftest import ARCHS, ALL_LINEAR, batches


def smt_config(arch, **kw):
    return SMTConfig(block_size=32, sparsity=0.15, method="random", target_modules=ALL_LINEAR[arch], **kw)

def rel_err(a, b): return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_training_equals_masked_dense(arch, opt):
    k = 3
    smt = prepare_smt(ARCHS[arch](), smt_config(arch))
    dense = ARCHS[arch]()
    layers = smt_layers(smt)
    assert layers, "nothing was selected"
    # dense reference: the same target weights trainable, their gradients masked to the selected blocks
    dense.requires_grad_(False)
    targets = {n: dense.get_submodule(n).weight.requires_grad_() for n in layers}
    masks = {n: block_mask(l.grid, l.blocks) for n, l in layers.items()}
    base_before = {n: l.base_layer.weight.detach().clone() for n, l in layers.items()}

    def make_opt(params):
        return torch.optim.SGD(params, lr=0.5) if opt == "sgd" else torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    opt_s = make_opt([l.smt_delta for l in layers.values()])
    opt_d = make_opt(list(targets.values()))
    for batch in batches(k):
        ls = smt(**batch).loss; ls.backward(); opt_s.step(); opt_s.zero_grad()
        ld = dense(**batch).loss; ld.backward()
        for n, w in targets.items():
            m = masks[n].t() if arch == "gpt2" else masks[n]   # Conv1D stores (in, out)
            w.grad.mul_(m)
        opt_d.step(); opt_d.zero_grad()
        assert abs(ls.item() - ld.item()) < 1e-5 * abs(ld.item())

    for n, l in layers.items():
        assert torch.equal(l.base_layer.weight, base_before[n])               # the base is never written while training
        trained = logical_weight(l.base_layer).detach() + l.delta_weight()
        assert rel_err(trained, logical_weight(dense.get_submodule(n)).detach()) < 1e-5
    merged = merge_and_unload(smt)
    for n in layers:
        w, w0 = logical_weight(merged.get_submodule(n)).detach(), base_before[n]
        w0 = w0.t() if arch == "gpt2" else w0
        assert torch.equal(w[~masks[n]], w0[~masks[n]])                        # outside the blocks: bit-identical


def test_only_deltas_train(arch):
    model = prepare_smt(ARCHS[arch](), smt_config(arch))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("smt_delta") for n in trainable)
    r = trainable_report(model)
    assert r["trainable"] == model.smt_selection.n_trainable
    assert 0 < r["trainable"] <= 0.15 * model.smt_selection.n_target_values
    if arch == "qwen2":  # biases are kept (the official SMT layer drops them)
        q = next(l for n, l in smt_layers(model).items() if n.endswith("q_proj"))
        assert q.bias is not None


def test_save_load_and_merge(arch, tmp_path):
    model = prepare_smt(ARCHS[arch](), smt_config(arch, init_std=0.05))
    ids = batches(1)[0]["input_ids"]
    logits = model(ids).logits.detach()
    model.save_smt(tmp_path)                                   # bound method
    fresh = load_smt(ARCHS[arch](), tmp_path)
    assert torch.equal(fresh(ids).logits, logits)
    for (n, a), (m, b) in zip(smt_layers(model).items(), smt_layers(fresh).items()):
        assert n == m and torch.equal(a.smt_delta, b.smt_delta) and torch.equal(a.blocks, b.blocks)
    plain = fresh.merge_and_unload()
    assert not any(isinstance(m, SMTLinear) for m in plain.modules())
    torch.testing.assert_close(plain(ids).logits, logits, rtol=1e-5, atol=1e-5)


def test_load_onto_other_base_fails(tmp_path):
    model = prepare_smt(ARCHS["llama"](), smt_config("llama", init_std=0.05))
    save_smt(model, tmp_path)
    with pytest.raises(ValueError, match="not the base the adapter was trained on"):
        load_smt(ARCHS["llama"](seed=1), tmp_path)


def test_adapter_and_checkpoint_files_are_readable_by_others(tmp_path):
    "Under umask 022 the adapter's files are 0644 and a checkpoint's folder 0755, as plain open()/mkdir would make them, not mkstemp's 0600."
    import os, stat
    from smt_nb.train import make_optimizer, save_checkpoint
    old = os.umask(0o022)
    try:
        model = prepare_smt(ARCHS["llama"](), smt_config("llama", init_std=0.05))
        save_smt(model, tmp_path / "adapter")
        save_checkpoint(model, make_optimizer(model, lr=1e-3), 3, tmp_path / "ckpt")
    finally: os.umask(old)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert {k: v for k, v in modes.items() if (tmp_path / k).is_file()} and all(
        v == (0o755 if (tmp_path / k).is_dir() else 0o644) for k, v in modes.items()), modes
    assert any(k.startswith("ckpt/") for k in modes) and "adapter/adapter_model.safetensors" in modes


def test_selection_is_reusable():
    a = prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, sparsity=0.05, method="mw"))
    b = prepare_smt(ARCHS["llama"](), selection=a.smt_selection)
    assert {n: l.blocks.tolist() for n, l in smt_layers(a).items()} == {n: l.blocks.tolist() for n, l in smt_layers(b).items()}
    with pytest.raises(ValueError, match="another model"):
        prepare_smt(ARCHS["gpt2"](), selection=a.smt_selection)


def test_targets_whose_weight_is_read_outside_forward_are_refused():
    "Mamba's CUDA path reads dt_proj.weight without calling dt_proj: wrapping it would leave its blocks untrained, so prepare_smt refuses."
    from smt_nb.config import weights_read_outside_forward

    class ReadsWeight(nn.Module):
        dummy_inputs = {"x": torch.ones(2, 8)}
        def __init__(self):
            super().__init__()
            self.proj, self.other, self.unused = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        def forward(self, x): return self.other(x) @ self.proj.weight.t()

    model = ReadsWeight()
    rng = torch.get_rng_state()
    assert weights_read_outside_forward(model, dict(proj=model.proj, other=model.other, unused=model.unused)) == ["proj"]
    assert torch.equal(torch.get_rng_state(), rng) and all(p.grad is None for p in model.parameters())  # no side effects
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="never called by the model"):
        prepare_smt(ReadsWeight(), SMTConfig(block_size=4, sparsity=0.5, method="random", target_modules=["proj"]))
    ok = prepare_smt(ReadsWeight(), SMTConfig(block_size=4, sparsity=0.5, method="random", target_modules=["other", "unused"]))
    assert sorted(smt_layers(ok)) == ["other", "unused"]  # never routed to is not an error
