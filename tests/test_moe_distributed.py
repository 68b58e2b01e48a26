"""SMT's fused expert weights (`target_parameters`) under data parallelism on CPU processes (gloo): 2 ranks against 1 process.
FSDP2, tiny Mixtral and Qwen3-MoE: the same selection (GW statistics summed over ranks), the same trained deltas with SGD and AdamW
once `switch_path(model, "reference")` keeps the base in the sharded expert weights, one adapter that loads bitwise onto an unsharded
base with the same logits and back onto a sharded model rank by rank; in-place expert weights refused at their first forward,
naming switch_path; SMTTrainer(fsdp=True) moves the experts to the reference path itself and resumes exactly, with either state-dict
type. DDP, tiny Mixtral with either experts implementation: a rank that routes no token to an expert with blocks neither hangs nor
needs find_unused_parameters=True, and both ranks train like one process accumulating both halves' gradients; a rank on which no
expert matmul of a layer runs during the GW/AW warm-up selects what the other does (counted and summed over ranks), and where none
ran on any rank, every rank raises."""
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from smt_nb.core import load_smt, prepare_smt, smt_layers
from smt_nb.experts import smt_experts, split_expert_name

from conftest import torch_threads
from smt_nb.train import smt_parameters
from test_architectures import build

TESTS = Path(__file__).parent
TIMEOUT = 300  # seconds for a whole torchrun: a rank left waiting for a collective fails the test instead of hanging CI


def torchrun(script: str, out: Path, port: int, nproc: int = 2):
    "As tests/test_fsdp.py's, with the whole launch (torchrun and its workers, one process group) killed past TIMEOUT."
    exe = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([exe, "--nproc_per_node", str(nproc), "--master_port", str(port), str(TESTS / script), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try: stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{script} did not finish within {TIMEOUT} s (ranks waiting on each other?):\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "The single-process references on one thread, as each rank runs (tiny ops: a second thread only waits, and on a busy 2-core CI machine slows them ~10x)."
    with torch_threads(1): yield


def norm_error(got, want) -> float: return ((got - want).norm() / want.norm()).item()


def experts_of(blocks: dict) -> dict:
    "{expert weight: the experts with blocks in it} from a selection's blocks by name."
    out = {}
    for n, b in blocks.items():
        if b and ".experts." in n:
            weight, expert = split_expert_name(n)
            out.setdefault(weight, set()).add(expert)
    return out


# ---------------------------------------------------------------- FSDP2
@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    "One launch of tests/moe_fsdp_worker.py for every FSDP2 test: (its folder, each rank's report)."
    out = tmp_path_factory.mktemp("moe_fsdp")
    run = torchrun("moe_fsdp_worker.py", out, 29551)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])  # moe_fsdp_worker.MODEL_TYPES
def test_moe_fsdp2_two_cpu_processes_match_single_process(fsdp_run, model_type):
    import moe_fsdp_worker as w
    out, ranks = fsdp_run
    r0, r1 = (r[model_type] for r in ranks)
    assert r0["blocks"] == r1["blocks"]                                  # every rank selects the same blocks
    assert {n.rsplit(".", 1)[-1] for n in experts_of(r0["blocks"])} == {"gate_up_proj", "down_proj"}, "both expert weights train"
    assert r0["files"] == ["adapter_config.json", "adapter_model.safetensors"]  # one adapter, written once
    for r in (r0, r1):
        assert r["paths"] == ["reference"], r                            # switch_path moved the expert weights too
        assert r["local"] <= 0.55 * r["total"], r                        # each rank holds about half of the base (experts included)
        assert r["reloaded"], r                                          # load_smt onto a sharded model restores each rank's part
        assert r["writer_paths"] == ["inplace"] and "FSDP2's gathered parameters" in r["refused"], r
        assert "switch_path(model, 'reference')" in r["refused"], r      # in-place writes into sharded experts: refused, naming the fix

    single = prepare_smt(build(model_type), w.config(), dataloader=w.full_batches())  # one process on the combined batches
    assert r0["blocks"] == {n: b.tolist() for n, b in single.smt_selection.blocks.items()}
    deltas = torch.load(out / model_type / "deltas.pt")
    for optimizer in w.OPTIMIZERS:
        model = single if optimizer == "sgd" else prepare_smt(build(model_type), w.config(), selection=single.smt_selection)
        want = w.deltas_of(w.train(model, w.full_batches(), optimizer))
        assert deltas[optimizer].keys() == want.keys() and set(smt_experts(model)) <= set(want), optimizer
        for n in want: assert norm_error(deltas[optimizer][n], want[n]) < 1e-5, (optimizer, n)
        assert all(want[n].abs().sum() > 0 for n in smt_experts(model)), optimizer  # the experts trained

    loaded = load_smt(build(model_type), out / model_type / "adapter")  # the FSDP adapter on an unsharded base: bitwise
    got = w.deltas_of(loaded)
    assert got.keys() == deltas["sgd"].keys() and all(torch.equal(got[n], deltas["sgd"][n]) for n in got)
    with torch.no_grad(): logits = loaded(input_ids=w.probe()).logits
    torch.testing.assert_close(logits, torch.load(out / model_type / "logits.pt"), rtol=1e-5, atol=1e-5)


def test_moe_fsdp2_trainer_moves_experts_and_resumes_exactly(fsdp_run):
    import moe_fsdp_worker as w
    from fsdp_trainer_worker import STATE_DICT_TYPES
    out, ranks = fsdp_run
    for model_type in w.MODEL_TYPES:
        for kind in STATE_DICT_TYPES:
            for run_name in ("straight", "resumed"):
                for r in (ranks[0], ranks[1]):
                    r = r[f"trainer_{model_type}_{kind}_{run_name}"]
                    assert r["fsdp"] and r["paths_before"] == ["inplace"] and r["paths"] == ["reference"], r  # moved before sharding
                    assert r["steps_run"] == (4 if run_name == "straight" else 2) and r["skipped"] == 0, r  # resumed after checkpoint-2
                    assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.json"} <= set(r["checkpoint"]), r
                    assert ("optimizer.bin" if kind == "FULL_STATE_DICT" else "optimizer_0") in r["checkpoint"], r
                    assert not any("pytorch_model" in f or f.endswith(".safetensors") and f != "adapter_model.safetensors"
                                   for f in r["checkpoint"]), r         # the adapter, never the base
            straight, resumed = (torch.load(out / f"trainer_{model_type}_{kind}_{x}.pt") for x in ("straight", "resumed"))
            assert straight.keys() == resumed.keys() and all(torch.equal(straight[n], resumed[n]) for n in straight), kind  # bit-exact
            final = load_smt(build(model_type), out / f"trainer_{model_type}_{kind}" / "checkpoint-4")  # on an unsharded base
            assert all(torch.equal(d, straight[n]) for n, d in w.deltas_of(final).items()), kind
            assert smt_experts(final) and all(straight[n].abs().sum() > 0 for n in smt_experts(final)), kind  # the experts trained


# ---------------------------------------------------------------- DDP, one rank routing no token to an expert with blocks
@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    "One launch of tests/moe_ddp_worker.py for both experts implementations: (its folder, each rank's report)."
    out = tmp_path_factory.mktemp("moe_ddp")
    run = torchrun("moe_ddp_worker.py", out, 29552)
    assert run.returncode == 0, run.stderr[-3000:]  # a DDP reducer waiting for Δ's gradient would time out (60 s) or raise
    return out, [json.loads((out / f"ddp_rank{r}.json").read_text()) for r in (0, 1)]


def halves():
    "Rank 0's half, then rank 1's, of every batch of the DDP check: [(rank, its half)]."
    import moe_ddp_worker as w
    from ddp_worker import shard
    return [(r, shard([b], r, 2)[0]) for b in w.full_batches() for r in (0, 1)]


def warmed_up(model, config, as_rank_1):
    "GW/AW over both halves of every batch in one process (statistics summed, as over ranks), `as_rank_1(True)` around rank 1's."
    def data():
        for r, half in halves():
            as_rank_1(r == 1)
            yield half
    return prepare_smt(model, replace(config, warmup_steps=len(halves())), dataloader=data())


def single_process_reference(implementation: str):
    "One process: GW over both halves of every batch, then SGD on their accumulated gradients (each loss halved, as DDP averages); half 1 routed as rank 1 routes it."
    import moe_ddp_worker as w
    model = build("mixtral")
    model.set_experts_implementation(implementation)
    router = w.WithoutExpert(model, w.X)
    model = warmed_up(model, w.config(), lambda on: setattr(router, "on", on))
    opt = torch.optim.SGD(smt_parameters(model), lr=w.LR)
    for r, half in halves():
        router.on = r == 1
        (model(**half).loss / 2).backward()
        if r == 1: opt.step(); opt.zero_grad()
    return model


def test_moe_warmup_where_one_rank_runs_no_expert_matmul(ddp_run):
    "Layer 1's experts skipped on rank 1: the matmuls are counted over ranks (no rank raises alone), the statistics summed over ranks."
    import moe_ddp_worker as w
    out, ranks = ddp_run
    r0, r1 = (r["uneven"] for r in ranks)
    for method in ("gw", "aw"):
        assert r0[method] == r1[method], method                          # the same selection on both ranks
        model, skipping = build("mixtral"), [False]
        w.without_experts(model, 1, lambda: skipping[0])
        single = warmed_up(model, replace(w.config(), method=method), lambda on: skipping.__setitem__(0, on))
        assert r0[method] == {n: b.tolist() for n, b in single.smt_selection.blocks.items()}, method  # as one process summing both
    assert any(b for n, b in r0["gw"].items() if n.startswith("model.layers.1.mlp.experts.")), "rank 0's tokens alone chose layer 1's"
    for r in (r0, r1):  # where no rank ran one, every rank raises (a rank raising alone would leave the other in a collective)
        assert r["never"].startswith("No expert matmul on model.layers.1.mlp.experts."), r["never"]


@pytest.mark.parametrize("implementation", ["grouped_mm", "eager"])
def test_moe_ddp_rank_routing_no_token_to_an_expert_with_blocks(ddp_run, implementation):
    import moe_ddp_worker as w
    out, ranks = ddp_run
    r0, r1 = (r[implementation] for r in ranks)
    assert r0["blocks"] == r1["blocks"]                                  # the same selection on both ranks
    for r in (r0, r1): assert r["ddp"] == "DistributedDataParallel" and r["find_unused_parameters"] is False, r
    assert r1["routed_warmup"] == 0 and r1["routed_training"] == 0, r1   # rank 1 really sent no token to X
    assert r0["routed_warmup"] > 0 and r0["routed_training"] > 0, r0     # rank 0 did
    weights = experts_of(r0["blocks"])
    # X has blocks, and one expert weight has blocks in X alone: in eager mode rank 1 never calls that weight on an expert with blocks,
    # so its Δ joins rank 1's graph only through experts without blocks (else DDP would wait for its gradient)
    assert any(experts == {w.X} for experts in weights.values()), \
        f"no expert weight has blocks in expert {w.X} alone any more ({weights}): pick SEED / X in moe_ddp_worker.py so one does"
    d0, d1 = (torch.load(out / f"{implementation}_rank{r}.pt") for r in (0, 1))
    assert d0.keys() == d1.keys() and all(torch.equal(d0[n], d1[n]) for n in d0)  # both ranks hold the same deltas
    single = single_process_reference(implementation)
    assert r0["blocks"] == {n: b.tolist() for n, b in single.smt_selection.blocks.items()}
    want = {n: m.smt_delta.detach() for n, m in {**smt_layers(single), **smt_experts(single)}.items()}
    assert want.keys() == d0.keys()
    for n in want: assert norm_error(d0[n], want[n]) < 1e-5, n
    for weight, experts in weights.items():                             # X's blocks trained, from rank 0's tokens alone
        if w.X in experts:
            m = smt_experts(single)[weight]
            assert d0[weight][m.positions(w.X)].abs().sum() > 0, weight
