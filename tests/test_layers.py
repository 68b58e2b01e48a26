"""SMTLinear against a dense autograd reference: output, input gradient, block gradients, merge/unmerge."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from smt_nb.blocks import BlockGrid, gather_blocks, scatter_blocks, block_mask
from smt_nb.layers import SMTLinear, logical_weight

from conftest import run_in_triton_interpreter


def rel_err(a, b): return ((a - b).norm() / b.norm()).item()

def random_blocks(grid, n, gen):
    flat = torch.randperm(grid.n_blocks, generator=gen)[:n]
    return torch.stack([flat // grid.n_cols, flat % grid.n_cols], 1)

def make_base(kind, out_f, in_f):
    if kind == "linear": return nn.Linear(in_f, out_f)
    if kind == "linear_nobias": return nn.Linear(in_f, out_f, bias=False)
    return Conv1D(out_f, in_f)

CASES = [  # (out, in, block size, number of blocks)
    (64, 64, 16, 5),      # even grid
    (45, 70, 16, 7),      # ragged both ways
    (70, 45, 32, 2),      # ragged, few blocks (only some column strips: a copy of the strips is saved)
    (10, 300, 64, 3),     # smaller than b in one dimension
    (33, 17, 8, 15),      # many ragged blocks
]

@pytest.mark.parametrize("path", ["reference", "inplace", "additive"])
@pytest.mark.parametrize("kind", ["linear", "linear_nobias", "conv1d"])
@pytest.mark.parametrize("out_f,in_f,b,n", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_dense_reference(path, kind, out_f, in_f, b, n, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    base = make_base(kind, out_f, in_f)
    grid = BlockGrid(out_f, in_f, b)
    blocks = random_blocks(grid, min(n, grid.n_blocks), gen)
    w_orig = logical_weight(base).detach().clone()
    layer = SMTLinear(base, blocks, b, init_std=0.05, path=path)
    x = torch.randn(3, 4, in_f, requires_grad=True)
    y = layer(x)
    gy = torch.randn_like(y)
    y.backward(gy)

    w = (w_orig + scatter_blocks(layer.smt_delta.detach(), grid, layer.blocks)).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    yr = F.linear(xr, w, base.bias)
    yr.backward(gy)

    assert rel_err(y, yr) < 1e-5
    assert rel_err(x.grad, xr.grad) < 1e-5
    assert rel_err(layer.smt_delta.grad, gather_blocks(w.grad, grid, layer.blocks)) < 1e-5
    assert base.weight.grad is None
    if base.bias is not None: assert base.bias.grad is None


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merge_unmerge_exact(kind):
    torch.manual_seed(0)
    base = make_base(kind, 45, 70)
    layer = SMTLinear(base, torch.tensor([[0, 0], [2, 4], [1, 2]]), 16, init_std=0.1)
    w0 = base.weight.detach().clone()
    x = torch.randn(5, 70)
    y = layer(x).detach()
    layer.merge()
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-6)
    mask = block_mask(layer.grid, layer.blocks)
    wl, w0l = logical_weight(base).detach(), (w0.t() if kind == "conv1d" else w0)
    assert torch.equal(wl[~mask], w0l[~mask])
    assert torch.equal(wl, w0l + layer.delta_weight())
    layer.unmerge()
    assert torch.equal(base.weight, w0)


def test_no_loop_over_blocks_scales():
    "Hundreds of blocks in one layer run as one batched product (and still match the dense gradient)."
    torch.manual_seed(0)
    base = nn.Linear(512, 512)
    grid = BlockGrid(512, 512, 8)
    blocks = random_blocks(grid, 800, torch.Generator().manual_seed(0))
    layer = SMTLinear(base, blocks, 8, init_std=0.01)
    x = torch.randn(64, 512)
    layer(x).sum().backward()
    w = (base.weight.detach() + layer.delta_weight()).requires_grad_()
    F.linear(x, w, base.bias).sum().backward()
    assert rel_err(layer.smt_delta.grad, gather_blocks(w.grad, grid, layer.blocks)) < 1e-5


OPTIMIZERS = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1), "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0),
              # fused AdamW (Trainer's default on CUDA) updates the delta without bumping its version counter
              "adamw_fused": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0, fused=True),
              "adamw_for_loop": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0, foreach=False)}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_inplace_path_tracks_optimizer_steps(opt_name):
    "The in-place path rewrites the weight's blocks after every optimizer step (fused ones too) and matches the reference path step for step."
    torch.manual_seed(0)
    blocks = torch.tensor([[0, 1], [2, 3], [1, 0]])
    ref_base, in_base = nn.Linear(70, 45), nn.Linear(70, 45)
    in_base.load_state_dict(ref_base.state_dict())
    w0 = ref_base.weight.detach().clone()
    ref, fast = SMTLinear(ref_base, blocks, 16, path="reference"), SMTLinear(in_base, blocks, 16, path="inplace")
    o_ref, o_fast = OPTIMIZERS[opt_name]([ref.smt_delta]), OPTIMIZERS[opt_name]([fast.smt_delta])
    for _ in range(4):
        x = torch.randn(6, 70)
        for layer, opt in ((ref, o_ref), (fast, o_fast)):
            layer(x).square().sum().backward(); opt.step(); opt.zero_grad()
    x = torch.randn(6, 70)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.smt_delta, ref.smt_delta, rtol=1e-5, atol=1e-7)
    assert torch.equal(ref_base.weight, w0)                 # reference path: the base weight is never written
    mask = block_mask(fast.grid, fast.blocks)
    assert torch.equal(in_base.weight.detach()[~mask], w0[~mask])  # in-place path: only the blocks are
    fast.unmerge()
    assert torch.equal(in_base.weight, w0)


@pytest.mark.parametrize("case", [dict(), dict(T=300, splits_target=40), dict(b=32, n=3),
                                  dict(T=256, out_f=64, in_f=96, b=32, n=4, splits_target=8)])
def test_triton_kernel_matches_reference_in_interpreter(case):
    "The Triton SDDMM kernel, run by Triton's CPU interpreter in a fresh process, equals the PyTorch block gradients."
    assert float(run_in_triton_interpreter(f"from smt_nb.kernels import kernel_error\nprint(kernel_error(**{case!r}))")) < 1e-5


SPLITS_SUMMED_IN_KERNEL = """
import torch
from smt_nb.blocks import BlockGrid, sampled_block_grad, column_strips
from smt_nb.kernels import sddmm_blocks_triton, launch_plan, _SPLIT_SCRATCH
torch.manual_seed(0)
g, x, grid = torch.randn(2, 150, 45), torch.randn(2, 150, 70), BlockGrid(45, 70, 16)
rows, cols = torch.tensor([0, 2, 1]), torch.tensor([1, 3, 4])
ref = sampled_block_grad(g.reshape(300, 45), column_strips(x.reshape(300, 70), grid), rows, cols, grid)
split = sddmm_blocks_triton(g, x, rows, cols, 16, n_programs_target=40)  # (2, 150, features) as they come, tokens in splits
flat = sddmm_blocks_triton(g.reshape(300, 45), x.reshape(300, 70), rows, cols, 16, n_programs_target=40)
print(launch_plan(300, 3, 16, 45, 70, False, 40)[3], torch.equal(split, flat), float((split - ref).norm() / ref.norm()) < 1e-5,
      [int(c.count_nonzero()) for (_, _, dtype), c in _SPLIT_SCRATCH.items() if dtype == torch.int32])
"""


def test_kernel_sums_token_splits_itself_and_leaves_its_counters_at_zero():
    """Eager launches sum their token splits in the kernel (the split that counts in last adds the partial tiles in split order):
    equal to the reference, the same from (batch, seq, features) inputs as from flattened ones, and every counter back at zero."""
    splits, same, close, nonzero = run_in_triton_interpreter(SPLITS_SUMMED_IN_KERNEL).split(" ", 3)
    assert int(splits) > 1 and same == "True" and close == "True" and nonzero == "[0]"


GROUPED_WRITE = """
import torch, torch.nn as nn
from transformers.pytorch_utils import Conv1D
from smt_nb.blocks import BlockGrid
from smt_nb.layers import SMTLinear, _block_table, aligned_for_write, logical_weight
from smt_nb.kernels import write_blocks_triton
dtype = getattr(torch, {dtype!r})
torch.manual_seed(0)
layers = []
for base, b in ((nn.Linear(300, 100), 64), (nn.Linear(128, 128), 64), (Conv1D(192, 128), 64), (Conv1D(48, 40), 64)):
    base = base.to(dtype)
    grid = BlockGrid(*logical_weight(base).shape, b)
    flat = torch.randperm(grid.n_blocks)[:max(1, grid.n_blocks // 3)]
    layers.append(SMTLinear(base, torch.stack([flat // grid.n_cols, flat % grid.n_cols], 1), b, init_std=0.05, path="inplace"))
expected = []
for l in layers:
    with torch.no_grad(): l.smt_delta.mul_(1.7)
    l._write_blocks(); expected.append(logical_weight(l.base_layer).detach().clone())  # PyTorch's per-layer write
    l.unmerge()
table, n = _block_table(layers)
write_blocks_triton(table, n, 64, dtype)  # one launch for all four (ragged, square, Conv1D's transposed storage)
general = all(torch.equal(logical_weight(l.base_layer).detach(), e) for l, e in zip(layers, expected))
aligned = [(l, e) for l, e in zip(layers, expected) if aligned_for_write(l)]
assert [l.grid.in_features for l, _ in aligned] == [128], "only the square nn.Linear has whole blocks and row-major rows"
for l, _ in aligned: l.unmerge()
table, n = _block_table([l for l, _ in aligned])
write_blocks_triton(table, n, 64, dtype, aligned=True)  # the vectorised form: no masks, unit column stride
print(general and all(torch.equal(logical_weight(l.base_layer).detach(), e) for l, e in aligned))
"""


@pytest.mark.parametrize("dtype", ["float32", "float16"])  # bf16: the interpreter truncates float32 -> bf16 (the GPU rounds; check_cuda checks it)
def test_grouped_block_write_matches_pytorch_in_interpreter(dtype):
    "The one-launch block write of the optimizer step hook, in Triton's CPU interpreter: the same bits as PyTorch's per-layer write."
    assert run_in_triton_interpreter(GROUPED_WRITE.format(dtype=dtype)) == "True"


@pytest.mark.parametrize("path", ["reference", "inplace", "additive"])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_step_matches_dense_autocast(path, kind, dtype):
    "float32 weights, forward under CPU autocast, backward outside it (Trainer's bf16/fp16): block gradients as a dense autocast step's."
    torch.manual_seed(0)
    base = make_base(kind, 45, 70)
    w_orig = logical_weight(base).detach().clone()
    layer = SMTLinear(base, torch.tensor([[0, 0], [2, 4], [1, 2], [2, 1]]), 16, init_std=0.05, path=path)
    opt = torch.optim.SGD([layer.smt_delta], lr=0.5)
    for step in range(2):  # the second step runs on updated deltas (the in-place path rewrites its blocks)
        x = torch.randn(3, 8, 70, requires_grad=True)
        w = (w_orig + layer.delta_weight()).requires_grad_()
        xr = x.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            y, yr = layer(x), F.linear(xr, w, base.bias)
        y.float().square().sum().backward()
        yr.float().square().sum().backward()
        assert y.dtype == dtype and x.grad.dtype == torch.float32 and layer.smt_delta.grad.dtype == torch.float32
        assert rel_err(y.float(), yr.float()) < 2e-2 and rel_err(x.grad, xr.grad) < 2e-2
        assert rel_err(layer.smt_delta.grad, gather_blocks(w.grad, layer.grid, layer.blocks)) < 2e-2
        opt.step(); opt.zero_grad()
    assert layer.smt_delta.isfinite().all()


@pytest.mark.parametrize("path", ["reference", "inplace", "additive"])
def test_bf16_model_without_autocast(path):
    "A model stored in bf16 (no autocast) still trains: deltas stay float32, gradients arrive in float32."
    torch.manual_seed(0)
    base = nn.Linear(70, 45).to(torch.bfloat16)
    w0 = base.weight.detach().float().clone()  # the in-place path writes base + Δ into the weight
    layer = SMTLinear(base, torch.tensor([[0, 0], [2, 4]]), 16, init_std=0.05, path=path)
    x = torch.randn(4, 70, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    y.float().square().sum().backward()
    w = (w0 + layer.delta_weight()).requires_grad_()
    F.linear(x.detach().float(), w, base.bias.float()).square().sum().backward()
    assert y.dtype == torch.bfloat16 and layer.smt_delta.dtype == layer.smt_delta.grad.dtype == torch.float32
    assert rel_err(layer.smt_delta.grad, gather_blocks(w.grad, layer.grid, layer.blocks)) < 3e-2



def fake_gpu_launches(monkeypatch, stream: int):
    "smt_nb.kernels as on a GPU, without one: not interpreting, device 0, a driver whose current stream is `stream`, no bound launchers."
    import types
    from triton.runtime.driver import driver as triton_driver
    import smt_nb.kernels as K
    monkeypatch.setattr(K, "_interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(triton_driver, "_active", types.SimpleNamespace(get_current_stream=lambda device: stream))
    monkeypatch.setattr(K, "_LAUNCHERS", {})
    return K


def test_cached_launch_binds_each_specialisation_once_and_passes_constexprs_in_signature_order(monkeypatch):
    "The launcher's logic without a GPU: a fake kernel stands in for Triton's JIT and compiled kernel, a fake driver for the stream."
    K = fake_gpu_launches(monkeypatch, stream=1234)
    calls = []
    class Compiled:  # what the JIT returns: the handles cached_launch keeps
        function, packed_metadata = "function", "metadata"
        def _init_handles(self): calls.append("init")
        def launch_metadata(self, grid, stream, *args): return None
        def run(self, *args): calls.append(("compiled", args))
    class Kernel:  # a `triton.jit` kernel: (X, n, B: constexpr, C: constexpr)
        arg_names = ["X", "n", "B", "C"]
        def __getitem__(self, grid):
            def jit(*args, **options): calls.append(("jit", grid, args, options)); return Compiled()
            return jit
    kernel, x = Kernel(), torch.zeros(8)
    K.cached_launch(kernel, (3, 2), x, 5, B=16, C=True, num_warps=4)   # first of its specialisation: through the JIT, then bound
    K.cached_launch(kernel, (3, 2), x, 5, B=16, C=True, num_warps=4)   # same specialisation: the compiled kernel directly
    assert calls[0] == ("jit", (3, 2), (x, 5), dict(B=16, C=True, num_warps=4))
    assert calls[1] == "init"
    name, args = calls[2]
    assert name == "compiled"
    # the JIT's own final call: grid padded to 3-D, the stream, handles, launch metadata and hooks, then every argument in order
    assert args[:5] == (3, 2, 1, 1234, "function") and args[5:7] == ("metadata", None)
    assert args[9] == x.data_ptr() and args[10:] == (5, 16, True)   # a tensor as its address: Triton's launcher asks the driver nothing
    K.cached_launch(kernel, (3, 2), x, 6, B=16, C=True, num_warps=4)   # another integer value: another specialisation, the JIT again
    K.cached_launch(kernel, (3, 2), x.to(torch.float64), 5, B=16, C=True, num_warps=4)  # another dtype: the JIT again
    assert [c[0] for c in calls[3:] if c != "init"] == ["jit", "jit"]
    assert len(K._LAUNCHERS) == 3 and all(v is not None for v in K._LAUNCHERS.values())


def test_cached_launch_leaves_kernels_without_named_constexprs_to_the_jit(monkeypatch):
    "A constexpr the call does not name (a default, say) cannot be replayed: that kernel keeps going through the JIT, launch after launch."
    K = fake_gpu_launches(monkeypatch, stream=0)
    jit_calls = []
    class Compiled:
        function = packed_metadata = None
        def _init_handles(self): pass
        def launch_metadata(self, *a): return None
        def run(self, *a): raise AssertionError("must not launch the compiled kernel directly")
    class Kernel:
        arg_names = ["X", "B"]
        def __getitem__(self, grid): return lambda *a, **o: jit_calls.append(a) or Compiled()
    kernel = Kernel()
    for _ in range(3): K.cached_launch(kernel, (1,), torch.zeros(2), num_warps=4)
    assert len(jit_calls) == 3 and list(K._LAUNCHERS.values()) == [None]


def test_index_views_follow_their_buffer():
    "rows, x_cols and strips are views of the index plan, kept between eager calls and made again when the buffer is another tensor."
    import copy
    layer = SMTLinear(nn.Linear(64, 48), torch.tensor([[0, 1], [2, 3], [1, 0]]), 16)
    shares = lambda l: all(v.untyped_storage().data_ptr() == l.index_plan.untyped_storage().data_ptr() for v in l.index_views())
    rows, x_cols, strips = layer.index_views()
    assert layer.index_views()[0] is rows and shares(layer)                       # kept
    assert rows.tolist() == [0, 1, 2] and x_cols.tolist() == [1, 0, 3] and strips.tolist() == [0, 1, 3]
    layer.index_plan = torch.tensor([2, 1, 0, 3, 0, 1, 0, 1, 3])                  # another tensor: new views
    assert layer.rows.tolist() == [2, 1, 0] and shares(layer)
    twin = copy.deepcopy(layer)
    assert shares(twin) and twin.rows.tolist() == [2, 1, 0]
    layer.index_plan.data = layer.index_plan.clone()                              # the same tensor in other memory (FSDP2 moves so)
    assert shares(layer) and layer.x_cols.tolist() == [3, 0, 1]


def test_eager_launches_are_kept_per_layer_and_made_again_when_what_they_depend_on_changes(monkeypatch):
    """`sddmm_blocks_triton(..., memo=)` keeps a layer's launch by token count, dtypes and alignments: the next call with the same
    launches it straight away, with the same result; another token count or a misaligned input goes through `cached_launch` again."""
    K = fake_gpu_launches(monkeypatch, stream=7)
    b, jit_calls, direct_calls = 8, [], []
    at = {}  # address -> tensor: a kept launcher hands the compiled kernel addresses, which this fake kernel looks up here
    real_empty = torch.empty
    def empty(*args, **kwargs):  # the outputs sddmm_blocks_triton allocates, by address
        t = real_empty(*args, **kwargs); at[t.data_ptr()] = t; return t
    monkeypatch.setattr(torch, "empty", empty)
    def blocks_into(args):  # the kernel's result, by PyTorch: out[k] = g2[:, rows[k] strip]ᵀ x[:, cols[k] strip]
        g2, x, out, _, _, rows, cols, T = args[:8]
        g2, x = g2.reshape(T, -1), x.reshape(T, -1)
        for k, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())): out[k] = g2[:, r * b:(r + 1) * b].T @ x[:, c * b:(c + 1) * b]
    class Compiled:
        function = packed_metadata = "handle"
        def _init_handles(self): pass
        def launch_metadata(self, *a): return None
        def run(self, *a):
            assert all(isinstance(p, int) for p in a[9:12])  # G, X, OUT as addresses
            direct_calls.append(a[9:]); blocks_into([at.get(v, v) if isinstance(v, int) else v for v in a[9:]])
    class Kernel:
        arg_names = ["G", "X", "OUT", "WORK", "COUNT", "ROWS", "XCOL", "T", "tokens_per_split", "out_features", "x_width", "stride_g",
                     "stride_x", "B", "BM", "BN", "BK", "IEEE", "EVEN", "REDUCE"]
        def __getitem__(self, grid):
            def jit(*args, **options): jit_calls.append(args[7]); blocks_into(args); return Compiled()
            return jit
    monkeypatch.setattr(K, "_sddmm_kernel", lambda: Kernel())
    rows, cols, memo = torch.tensor([0, 2]), torch.tensor([1, 0]), {}
    def run(T, offset=0):
        g2 = torch.randn(T * 24 + offset)[offset:].view(T, 24)
        x = torch.randn(T, 16)
        at.update({t.data_ptr(): t for t in (g2, x, rows, cols)})
        out = K.sddmm_blocks_triton(g2, x, rows, cols, b, n_programs_target=1, memo=memo)
        torch.testing.assert_close(out, torch.stack([g2[:, 0:8].T @ x[:, 8:16], g2[:, 16:24].T @ x[:, 0:8]]))
    run(10); run(10)
    assert jit_calls == [10] and len(direct_calls) == 1 and len(memo) == 1  # first through the JIT, then kept: launched directly
    run(10); run(12)
    assert jit_calls == [10, 12] and len(direct_calls) == 2 and len(memo) == 2  # another token count: its own launch
    run(10, offset=1)                                                              # g2 4 bytes off a 16-byte boundary
    assert jit_calls == [10, 12, 10] and len(memo) == 3                            # another specialisation for the JIT
