"""The repository keeps its promises: README states CI's command, every module is a notebook export."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ci_var(name):
    return re.search(rf"^{name}='(.*)'$", (ROOT / ".ci" / "run").read_text(), re.M).group(1)


def test_readme_states_the_ci_test_command():
    readme = (ROOT / "README.md").read_text()
    assert f"{_ci_var('SETUP')} && {_ci_var('TESTS')}" in readme


def test_readme_matches_index_notebook():
    import importlib.util
    spec = importlib.util.spec_from_file_location("readme", ROOT / ".ci" / "readme.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    body = mod.render(ROOT / "nbs" / "index.ipynb", write_images=False)
    assert body in (ROOT / "README.md").read_text(), "README.md is stale: run `python .ci/readme.py`"


def test_every_module_is_exported_from_a_notebook():
    exported = set()
    for nb in (ROOT / "nbs").glob("*.ipynb"):
        m = re.search(r"#\| default_exp (\w+)", nb.read_text())
        if m: exported.add(m.group(1))
    modules = {p.stem for p in (ROOT / "smt_nb").glob("*.py") if not p.stem.startswith("_")}
    assert modules == exported


def _smt_nb_imports(path: Path) -> set[str]:
    "Every smt_nb module that `path` imports, at module level or inside a function (a lazy import is a cycle all the same)."
    import ast
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1 and mod: found.add(mod.split(".")[0])                   # from .layers import ...
            elif mod.startswith("smt_nb."): found.add(mod.split(".")[1])                # from smt_nb.layers import ...
            elif mod == "smt_nb" or (node.level == 1 and not mod): found.update(a.name for a in node.names)  # from smt_nb import layers
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("smt_nb."))
    modules = {p.stem for p in (ROOT / "smt_nb").glob("*.py")}
    return (found & modules) - {path.stem}


def test_no_import_cycle_among_modules():
    graph = {p.stem: _smt_nb_imports(p) for p in (ROOT / "smt_nb").glob("*.py") if not p.stem.startswith("_")}
    assert graph["kernels"] <= {"blocks"} and "layers" in graph and "kernels" in graph["layers"]  # the parser sees imports
    done, path = set(), []
    def visit(m):
        if m in path: raise AssertionError(f"import cycle: {' -> '.join(path[path.index(m):] + [m])}")
        if m in done: return
        path.append(m)
        for n in sorted(graph.get(m, ())): visit(n)
        path.pop(); done.add(m)
    for m in sorted(graph): visit(m)


def test_core_stays_small_and_keeps_the_cards_names():
    assert len((ROOT / "smt_nb" / "core.py").read_text().splitlines()) <= 500
    import smt_nb.core as core, smt_nb.adapters as adapters, smt_nb.config as config
    from smt_nb.core import prepare_smt, SMTConfig, save_smt, load_smt, merge_and_unload  # noqa: F401  (the card's import line)
    assert save_smt is adapters.save_smt and SMTConfig is config.SMTConfig                  # one definition, re-exported
    assert {"SMTConfig", "save_smt", "prepare_smt", "load_smt", "merge_and_unload"} <= set(core.__all__)


def test_importing_without_triton_prints_nothing(tmp_path):
    "A CPU install without Triton: importing every module writes nothing to stderr (no 'Triton not available' warning)."
    import subprocess, sys
    modules = sorted(p.stem for p in (ROOT / "smt_nb").glob("*.py") if not p.stem.startswith("_"))
    code = "import sys; sys.modules['triton'] = None\n" + "".join(f"import smt_nb.{m}\n" for m in modules) + \
           "from smt_nb.kernels import triton_available; assert not triton_available()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr


def test_rows_timed_in_turns_are_compared_round_by_round(monkeypatch):
    """The in-turns statistic both model benchmarks share (benchmarks/model.py): a row's ratio to the floor is the median of its
    per-round ratios, each the floor's median step over the row's in the same round, so that a round the host slowed for every row
    does not count against one row; the ratio of the overall medians is kept beside it, the floor's own ratio is 1."""
    import importlib.util
    monkeypatch.setenv("TEARDOWN_CUPTI", "1")  # what the script sets when imported: undone after this test
    spec = importlib.util.spec_from_file_location("bench_model", ROOT / "benchmarks" / "model.py")
    bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
    order = []
    per_round = bench.in_turns({"floor": "F", "smt": "S"}, 3, lambda step: order.append(step) or [0.1, 0.2])
    assert order == ["F", "S"] * 3 and per_round == {"floor": [[0.1, 0.2]] * 3, "smt": [[0.1, 0.2]] * 3}   # turn by turn, 3 rounds
    # the host slows down to half speed after the floor's turn in round 2 and stays slow: one slow stretch, which SMT met for longer
    summary = bench.in_turns_summary({"floor": [[1.0, 1.0, 1.2], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]],
                                      "smt": [[1.1, 1.1, 1.3], [2.2, 2.2, 2.2], [2.2, 2.2, 2.2]]}, tokens=4096)
    smt = summary["smt"]
    assert [round(r, 3) for r in smt["round_speed_vs_floor"]] == [0.909, 0.455, 0.909] and round(smt["speed_vs_floor"], 3) == 0.909
    assert round(smt["speed_vs_floor_of_medians"], 3) == 0.455 and smt["steps"] == 9   # the overall medians blame SMT for the host
    assert summary["floor"]["speed_vs_floor"] == 1.0 and round(summary["floor"]["tokens_per_s"]) == 4096


def test_the_moe_benchmark_runs_on_the_cpu(tmp_path):
    "benchmarks/model_moe.py --tiny: every row builds and runs (GPU time is scarce: a broken script would waste a run), the ablation"
    "row trains what the main SMT row trains, and the interleaved timing covers every row. No timing is asserted."
    import json, subprocess, sys
    out = tmp_path / "moe.json"
    run = subprocess.run([sys.executable, "benchmarks/model_moe.py", "--tiny", "--modes", "eager", "--methods",
                          "floor,smt_matched,smt_matched_whole", "--interleave", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {r["key"]: r for r in data["results"]}
    assert set(rows) == {"floor", "smt_matched", "smt_matched_whole"} and not any("skipped" in r for r in rows.values())
    assert rows["smt_matched"]["trainable"] == rows["smt_matched_whole"]["trainable"] > 0 == rows["floor"]["trainable"]
    assert set(data["interleaved"]) == set(rows) and data["interleaved"]["floor"]["speed_vs_floor"] == 1.0
    phases = rows["smt_matched"]["phases"]["host_ms"]                       # where the host's time goes, phase by phase
    assert set(phases) == {"forward", "backward", "optimizer"} and all(v > 0 for v in phases.values())
    assert "TEARDOWN_CUPTI=1" in data["meta"]["profiling"]


def test_benchmarks_that_profile_tear_cupti_down_before_torch_loads():
    """A profile taken after one row is timed must not slow the rows timed after it: kineto keeps CUPTI's launch callbacks for the
    rest of the process unless TEARDOWN_CUPTI=1 is set before torch loads (measured: the MoE floor's step 38.4 -> 41.7 ms after one)."""
    for name in ("model.py", "model_moe.py", "layer.py", "overhead.py"):
        text = (ROOT / "benchmarks" / name).read_text()
        assert 'os.environ.setdefault("TEARDOWN_CUPTI", "1")' in text, name
        assert text.index('os.environ.setdefault("TEARDOWN_CUPTI", "1")') < text.index("\nimport torch\n"), name


def test_the_idle_report_splits_gpu_gaps_by_cause():
    "profile_step.py's idle report on a made-up trace: a gap whose launch came after the GPU ran dry is the host's; one queued in time is not."
    import importlib.util, sys
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("profile_step", ROOT / "benchmarks" / "profile_step.py")
        profile_step = importlib.util.module_from_spec(spec); spec.loader.exec_module(profile_step)
    finally: sys.path.remove(str(ROOT / "benchmarks"))
    X = lambda cat, name, ts, dur, corr=None: dict(ph="X", cat=cat, name=name, ts=ts, dur=dur, args={} if corr is None else {"correlation": corr})
    trace = {"traceEvents": [
        X("user_annotation", "forward", 0, 100), X("user_annotation", "backward", 100, 200),
        X("cuda_runtime", "cudaLaunchKernel", 10, 5, 1), X("kernel", "a", 20, 100, 1),           # forward: busy 20..120
        X("cuda_runtime", "cudaLaunchKernel", 110, 5, 2), X("kernel", "b", 130, 20, 2),          # queued at 115 < 120: a GPU-side gap of 10
        X("cuda_runtime", "cudaLaunchKernel", 200, 5, 3), X("kernel", "c", 210, 10, 3),          # queued at 205 > 150: the host's gap of 60
        X("cuda_runtime", "cudaStreamSynchronize", 220, 80), X("cuda_runtime", "cudaMalloc", 300, 10)]}
    report = profile_step.idle_report(trace)
    assert report["phases"]["forward"] == dict(device_us=100, host_late_us=0, queued_us=0, events=1)
    assert report["phases"]["backward"] == dict(device_us=30, host_late_us=60, queued_us=10, events=2)
    assert [(g["us"], g["host_late"], g["before"], g["after"]) for g in report["largest_gaps"]] == [(60, True, "b", "c"), (10, False, "a", "b")]
    assert report["slow_calls_us"] == {"cudaStreamSynchronize": 80}
    named = {"traceEvents": [X("kernel", "triton_poi_fused__unsafe_view_mul_silu_9", 0, 5), X("kernel", "triton_poi_fused_mul_silu_view_10", 9, 7)]}
    assert profile_step.device_time_by_kernel(named) == {"triton_poi_fused_mul_silu": 12}  # one kernel however the compiler numbered it


def test_a_baseline_version_of_the_package_loads_beside_this_one(tmp_path):
    """benchmarks/model.py --baseline DIR: another version's smt_nb (here a copy of this one) imports beside the package as
    smt_nb_baseline — its own modules and layer classes, its own torch.library namespace — and builds the same SMT model, so that
    one run can time both versions' steps in turns. A folder without the package is refused by name. In a subprocess: the
    baseline's imports (and its optimizer hook) stay out of the test process."""
    import shutil, subprocess, sys
    shutil.copytree(ROOT / "smt_nb", tmp_path / "old" / "smt_nb", ignore=shutil.ignore_patterns("__pycache__"))
    code = f"""
import importlib.util, torch
spec = importlib.util.spec_from_file_location("bench_model", {str(ROOT / "benchmarks" / "model.py")!r})
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
core, train = bench.load_baseline({str(tmp_path / "old")!r})
import smt_nb.core
from transformers import LlamaConfig, LlamaForCausalLM
assert core.__name__ == "smt_nb_baseline.core" and core.SMTLinear is not smt_nb.core.SMTLinear
def tiny(): torch.manual_seed(0); return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
def blocks(pkg, seed):
    torch.manual_seed(seed)
    model = pkg.prepare_smt(tiny(), pkg.SMTConfig(block_size=16, sparsity=0.1, method="random", target_modules=["q_proj", "down_proj"]))
    layers = pkg.smt_layers(model)
    assert all(type(m).__module__ == pkg.SMTLinear.__module__ for m in layers.values())
    return {{n: m.blocks.tolist() for n, m in layers.items()}}, len(train.smt_parameters(model)) if pkg is core else None
new, old = blocks(smt_nb.core, 1), blocks(core, 1)
assert new[0] == old[0] and old[1] == len(old[0]) > 0, (new, old)   # the same blocks, one Δ per layer holding blocks
try: bench.load_baseline({str(tmp_path)!r})
except FileNotFoundError as e: assert "no smt_nb package there" in str(e)
else: raise AssertionError("a folder without smt_nb/ was accepted")
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_ceiling_writes_a_package_whose_compiled_block_gradients_are_the_stand_in(tmp_path):
    """benchmarks/ceiling.py DIR --variant zero|cublas: a copy of this package for model.py --baseline in which the block gradients
    that a compiled graph traces are a stand-in — zeros, or cuBLAS products of (n·b, T) @ (T, b) from contiguous columns, in slices
    as wide as the output gradient — with a fake implementation for the compiler, while eager calls keep the real computation.
    In a subprocess: the copy's imports and its torch.library op stay out of the test process."""
    import subprocess, sys
    for variant in ("zero", "cublas"):
        made = subprocess.run([sys.executable, "benchmarks/ceiling.py", str(tmp_path / variant), "--variant", variant],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert made.returncode == 0 and (tmp_path / variant / "smt_nb" / "layers.py").exists(), made.stderr[-2000:]
    refused = subprocess.run([sys.executable, "benchmarks/ceiling.py", str(ROOT), "--variant", "zero"], capture_output=True, text=True,
                             timeout=120, cwd=ROOT)                  # the repository itself: the copy would replace the package
    assert refused.returncode == 2 and "is this repository" in refused.stderr and (ROOT / "smt_nb" / "layers.py").exists()
    assert "smt_ceiling" not in (ROOT / "smt_nb" / "layers.py").read_text()
    code = f"""
import importlib.util, sys, torch
from unittest import mock
from torch._subclasses.fake_tensor import FakeTensorMode
spec = importlib.util.spec_from_file_location("bench_model", {str(ROOT / "benchmarks" / "model.py")!r})
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
variant = sys.argv[1]
core, _ = bench.load_baseline({str(tmp_path)!r} + "/" + variant)
layers = sys.modules["smt_nb_baseline.layers"]
from smt_nb.blocks import BlockGrid, column_strips, sampled_block_grad
torch.manual_seed(0)
T, out_f, in_f, b = 32, 48, 64, 16
g2, x = torch.randn(T, out_f), torch.randn(T, in_f)
rows, cols = torch.tensor([0, 2, 1, 0]), torch.tensor([1, 3, 0, 2])
real = sampled_block_grad(g2, column_strips(x, BlockGrid(out_f, in_f, b)), rows, cols, BlockGrid(out_f, in_f, b)).float()
assert torch.allclose(layers.block_gradients(g2, x, rows, cols, b), real, atol=1e-5)        # eager: the real block gradients
with mock.patch("torch.compiler.is_compiling", return_value=True):
    traced = layers.block_gradients(g2, x, rows, cols, b)                                   # what a compiled graph gets
want = torch.zeros(4, b, b) if variant == "zero" else torch.cat([g2[:, :48].t() @ x[:, :b], g2[:, :16].t() @ x[:, :b]]).view(4, b, b)
assert traced.shape == (4, b, b) and traced.dtype == torch.float32 and torch.allclose(traced, want, atol=1e-5), variant
with FakeTensorMode() as fake:                                                              # the compiler's view: shape and dtype only
    r = torch.ops.smt_ceiling.block_gradients(fake.from_tensor(g2), fake.from_tensor(x), 4, b)
assert r.shape == (4, b, b) and r.dtype == torch.float32
print("ok")
"""
    for variant in ("zero", "cublas"):
        r = subprocess.run([sys.executable, "-c", code, variant], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (variant, r.stderr[-3000:])
