"""Faults, as a hostile user or an unlucky machine causes them: kill -9 while saving, a full disk, corrupted and hostile adapter files,
NaN gradients, and bad inputs. Every one ends in a complete old or new state, an unchanged model, or a clear error."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from fault_models import SMT, adapter_model, dropout_llama, train_batches
from conftest import ARCHS, batches as lm_batches, torch_threads

from smt_nb.atomic import TMP_PREFIX
from smt_nb.core import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SMTConfig, load_smt, prepare_smt, save_smt, smt_layers
from smt_nb.train import SMTTrainer, make_optimizer, resume_smt, smt_training_arguments, train_smt

HERE = Path(__file__).parent
TRIALS = 30
STEPS = 120  # steps of the killed training runs: a checkpoint after each


def worker(*args, **popen):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(HERE / "fault_worker.py"), *map(str, args)], stdout=subprocess.PIPE, text=True, env=env,
                            **popen)


def kill_while_writing(args, seed, max_wait=0.25):
    "Start a writer, wait until it has written once, kill -9 it at a random moment of its write loop."
    proc = worker(*args)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(random.Random(seed).uniform(0, max_wait))
    finally:
        proc.kill(); proc.wait(timeout=60)


def state(model):
    return {n: (l.blocks.clone(), l.smt_delta.detach().clone()) for n, l in smt_layers(model).items()}


def same_state(a, b): return a.keys() == b.keys() and all(torch.equal(a[n][0], b[n][0]) and torch.equal(a[n][1], b[n][1]) for n in a)


# ---------- kill -9 and a full disk while writing

def test_kill_while_overwriting_an_adapter_leaves_old_or_new(tmp_path):
    want = {k: state(adapter_model(k)) for k in "AB"}
    folders = [tmp_path / f"trial{i}" for i in range(TRIALS)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: kill_while_writing(["adapter", folders[i]], seed=i), range(TRIALS)))
    seen = []
    for d in folders:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a stale adapter_config.json next to a newer weights file is reported, then ignored
            got = state(load_smt(dropout_llama(), d))
        assert same_state(got, want["A"]) or same_state(got, want["B"]), f"{d}: a mix of adapters A and B"
        seen.append("A" if same_state(got, want["A"]) else "B")
        save_smt(adapter_model("A"), d)  # the next write cleans up after the killed one
        assert [p.name for p in d.iterdir() if p.name.startswith(TMP_PREFIX)] == []
    assert len(seen) == TRIALS


def test_disk_full_while_overwriting_keeps_the_old_adapter(tmp_path):
    save_smt(adapter_model("A"), tmp_path)
    size = (tmp_path / ADAPTER_WEIGHTS).stat().st_size
    proc = worker("fsize", tmp_path, size // 2)  # room for half of the new weights file
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert same_state(state(load_smt(dropout_llama(), tmp_path)), state(adapter_model("A")))


@pytest.fixture
def one_thread():
    "The writer runs single-threaded; so does the reference, so that both sum in the same order, bit for bit."
    with torch_threads(1): yield


@pytest.fixture
def uninterrupted(one_thread):
    "Deltas after every step of an uninterrupted run with dropout (the reference for every killed-and-resumed run)."
    model = prepare_smt(dropout_llama(), SMT)
    opt, per_step = make_optimizer(model, 1e-2), {}
    for step in range(1, STEPS + 1):
        train_smt(model, train_batches(), steps=step, start_step=step - 1, optimizer=opt, progress=False)
        per_step[step] = state(model)
    return per_step


def test_kill_while_checkpointing_then_resume_is_exact(tmp_path, uninterrupted):
    folders = [tmp_path / f"run{i}" for i in range(TRIALS)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: kill_while_writing(["train", folders[i], STEPS], seed=100 + i, max_wait=1.0), range(TRIALS)))
    resumed_runs = 0
    for d in folders:
        if not any(p.name.startswith("step-") for p in d.iterdir()) if d.exists() else True: continue  # killed before the first save
        model, opt, step = resume_smt(dropout_llama(), d, lr=1e-2)  # the folder: its newest complete checkpoint, no cleanup
        assert same_state(state(model), uninterrupted[step])
        if step < STEPS:
            end = min(step + 3, STEPS)
            train_smt(model, train_batches(), steps=end, start_step=step, optimizer=opt, progress=False)
            assert same_state(state(model), uninterrupted[end])  # bit-identical with dropout: the RNG states came back too
            resumed_runs += 1
    assert resumed_runs >= TRIALS // 3


RESTART_STEPS = 8  # steps of the runs killed anywhere, the last step included


def kill_runs_at(folders, points, seed=0):
    "One run per folder (forked by one worker); kill -9 each once checkpoint `point` exists (0: at once), a moment later; None: after it finished."
    rng = random.Random(seed)
    proc = worker("runs", "-", RESTART_STEPS, stdin=subprocess.PIPE)
    try:
        for folder, point in zip(folders, points):
            proc.stdin.write(f"{folder}\n"); proc.stdin.flush()
            seen, pid = set(), None
            while pid is None or "ready" not in seen:
                line = proc.stdout.readline().strip()
                assert line and line != "reaped", "the run or its worker died (its traceback is above)"
                if line.startswith("pid "): pid = int(line.split()[1])
                else: seen.add(line)
            if point is None:
                assert proc.stdout.readline().strip() == "finished"
            else:
                deadline = time.monotonic() + 120
                while point and not (folder / f"step-{point}").is_dir() and time.monotonic() < deadline: time.sleep(0.002)
                time.sleep(rng.uniform(0, 0.05))  # within the next step or its save
            os.kill(pid, signal.SIGKILL)
            while (line := proc.stdout.readline().strip()) != "reaped": assert line == "finished", line
    finally:
        proc.kill(); proc.wait(timeout=60)


def restart_until_done(folder) -> int:
    "What a restart loop does after a crash: resume from the newest complete checkpoint (or start over), train to the end."
    if folder.is_dir() and any(p.name.startswith("step-") for p in folder.iterdir()):
        model, opt, step = resume_smt(dropout_llama(), folder, lr=1e-2)
    else: model, step = prepare_smt(dropout_llama(), SMT), 0
    opt = opt if step else make_optimizer(model, 1e-2)
    losses = train_smt(model, train_batches(), steps=RESTART_STEPS, start_step=step, optimizer=opt, progress=False,
                       checkpoint_dir=folder, save_every=1)
    assert len(losses) == RESTART_STEPS - step  # a finished run: none
    return step, state(model)


def test_kill_anywhere_then_restart_ends_with_the_uninterrupted_adapter(tmp_path, one_thread):
    "kill -9 before the first checkpoint, mid-run (perhaps mid-save) and after the last step: the restart loop ends bit-exact every time."
    model = prepare_smt(dropout_llama(), SMT)
    train_smt(model, train_batches(), steps=RESTART_STEPS, lr=1e-2, progress=False)
    want = state(model)
    points = [0, 2, 4, 6, None, None]  # checkpoint after which each trial's run is killed (None: after it finished)
    folders = [tmp_path / f"run{i}" for i in range(len(points))]
    kill_runs_at(folders, points)
    resumed_from = []
    for d in folders:
        step, got = restart_until_done(d)
        assert same_state(got, want), f"{d}: resumed at step {step}, ended with other deltas"
        assert same_state(state(load_smt(dropout_llama(), d / f"step-{RESTART_STEPS}")), want)  # and so does the last checkpoint
        resumed_from.append(step)
    assert resumed_from[-2:] == [RESTART_STEPS] * 2 and any(0 < s < RESTART_STEPS for s in resumed_from), resumed_from


def test_train_smt_at_its_last_step_runs_nothing():
    model = prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, sparsity=0.1, method="mw", init_std=0.05))
    before = state(model)
    assert train_smt(model, lm_batches(2), steps=3, start_step=3, lr=1e-2, progress=False) == []
    assert same_state(state(model), before)


def test_an_optimizer_without_the_deltas_is_refused():
    "An optimizer built before prepare_smt holds the base's parameters, none of the deltas: the blocks would never move."
    base = ARCHS["llama"]()
    early = torch.optim.AdamW(base.parameters(), lr=1e-2)
    model = prepare_smt(base, SMTConfig(block_size=16, sparsity=0.1, method="mw", init_std=0.05))
    before = state(model)
    with pytest.raises(ValueError, match=r"holds 0 of the model's \d+ trainable SMT deltas.*make_optimizer\(model\)"):
        train_smt(model, lm_batches(2), steps=2, optimizer=early, progress=False)
    deltas = [l.smt_delta for l in smt_layers(model).values()]
    with pytest.raises(ValueError, match="holds 1 of .* the blocks of \\d+ would never train"):
        train_smt(model, lm_batches(2), steps=2, optimizer=torch.optim.SGD(deltas[:1], lr=1e-2), progress=False)
    assert same_state(state(model), before)


def test_resume_with_another_optimizer_is_refused(tmp_path):
    train_smt(prepare_smt(dropout_llama(), SMT), train_batches(), steps=2, lr=1e-2, progress=False, checkpoint_dir=tmp_path, save_every=2)
    ckpt = tmp_path / "step-2"
    with pytest.raises(ValueError, match="saved with the optimizer AdamW.*pass optimizer='adamw'"):
        resume_smt(dropout_llama(), ckpt, optimizer="sgd")
    saved = torch.load(ckpt / "training_state.pt", weights_only=True)
    del saved["optimizer_class"]  # as checkpoints of older versions: told by the state's keys
    torch.save(saved, ckpt / "training_state.pt")
    with pytest.raises(ValueError, match="saved with the optimizer AdamW"):
        resume_smt(dropout_llama(), ckpt, optimizer="sgd")
    assert resume_smt(dropout_llama(), ckpt, lr=1e-2)[2] == 2
    sgd_dir = tmp_path / "sgd"
    train_smt(prepare_smt(dropout_llama(), SMT), train_batches(), steps=1, lr=1e-2, optimizer="sgd", progress=False,
              checkpoint_dir=sgd_dir, save_every=1)
    with pytest.raises(ValueError, match="saved with the optimizer SGD.*pass optimizer='sgd'"):
        resume_smt(dropout_llama(), sgd_dir)
    model, opt, _ = resume_smt(dropout_llama(), sgd_dir, optimizer="sgd")
    train_smt(model, train_batches(), steps=2, start_step=1, optimizer=opt, progress=False)  # the step that raised KeyError('momentum')


def test_resume_skips_an_incomplete_checkpoint_with_a_warning(tmp_path, uninterrupted):
    train_smt(prepare_smt(dropout_llama(), SMT), train_batches(), steps=3, lr=1e-2, progress=False, checkpoint_dir=tmp_path, save_every=1)
    (tmp_path / "step-3" / "training_state.pt").unlink()  # as an older version could leave it
    with pytest.warns(UserWarning, match="Skipping .*step-3: incomplete"):
        model, _, step = resume_smt(dropout_llama(), tmp_path, lr=1e-2)
    assert step == 2 and same_state(state(model), uninterrupted[2])


def test_trainer_resume_latest_skips_a_cut_short_checkpoint(tmp_path):
    rows = [{"input_ids": b["input_ids"][0], "labels": b["labels"][0]} for b in lm_batches(8, bs=1)]
    model = prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, sparsity=0.1, method="mw"))
    args = smt_training_arguments(model, str(tmp_path), max_steps=2, save_steps=1, per_device_train_batch_size=2, use_cpu=True,
                                  disable_tqdm=True)
    SMTTrainer(model=model, args=args, train_dataset=rows).train()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text('{"global_st')  # killed while writing it
    resumed = prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, sparsity=0.1, method="mw"))
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        SMTTrainer(model=resumed, args=args, train_dataset=rows).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    with pytest.warns(UserWarning, match="checkpoint-2: incomplete"):
        SMTTrainer(model=resumed, args=args, train_dataset=rows).train(resume_from_checkpoint=True)  # from checkpoint-1
    assert all(torch.equal(a.smt_delta, b.smt_delta) for a, b in zip(smt_layers(model).values(), smt_layers(resumed).values()))


# ---------- loads that change nothing when they fail

def snapshot(model):
    return (str(model), {k: v.clone() for k, v in model.state_dict().items()}, {n: p.requires_grad for n, p in model.named_parameters()})


def unchanged(model, snap):
    text, sd, flags = snap
    now = model.state_dict()
    return (str(model) == text and now.keys() == sd.keys() and all(torch.equal(now[k], sd[k]) for k in sd)
            and {n: p.requires_grad for n, p in model.named_parameters()} == flags)


def _edit_meta(d, fn):
    "Change the adapter's config in both places it is kept (the weights file's header and the JSON)."
    tensors = load_file(d / ADAPTER_WEIGHTS)
    meta = json.loads((d / ADAPTER_CONFIG).read_text())
    fn(meta)
    save_file(tensors, d / ADAPTER_WEIGHTS, metadata={"format": "pt", "smt_nb_adapter": json.dumps(meta)})
    (d / ADAPTER_CONFIG).write_text(json.dumps(meta))


def _edit_tensor(d, fn):
    tensors = load_file(d / ADAPTER_WEIGHTS)
    meta = json.loads((d / ADAPTER_CONFIG).read_text())
    key = sorted(tensors)[0]
    tensors[key] = fn(tensors[key])
    save_file(tensors, d / ADAPTER_WEIGHTS, metadata={"format": "pt", "smt_nb_adapter": json.dumps(meta)})


def _first(meta): return next(m for m in meta["selection"]["modules"].values() if m["blocks"])


CORRUPTIONS = {
    "weights file missing": (lambda d: (d / ADAPTER_WEIGHTS).unlink(), "is missing"),
    "weights file truncated": (lambda d: (d / ADAPTER_WEIGHTS).write_bytes((d / ADAPTER_WEIGHTS).read_bytes()[:300]), "cannot be read"),
    "not an adapter": (lambda d: _edit_meta(d, lambda m: m.update(format="peft")), "field 'format'"),
    "huge block size": (lambda d: _edit_meta(d, lambda m: m["config"].update(block_size=40000)), "does not match config.block_size"),
    "bool block size": (lambda d: _edit_meta(d, lambda m: m["config"].update(block_size=True)), "field 'config' is invalid"),
    "block out of range": (lambda d: _edit_meta(d, lambda m: _first(m)["blocks"].__setitem__(0, [99, 0])), "out of range"),
    "duplicate blocks": (lambda d: _edit_meta(d, lambda m: _first(m)["blocks"].append(_first(m)["blocks"][0])), "Duplicate blocks"),
    "tensor of shape (1,)": (lambda d: _edit_tensor(d, lambda t: t.flatten()[:1].clone()), r"has shape \(1,\)"),
    "NaN deltas": (lambda d: _edit_tensor(d, lambda t: t * float("nan")), "NaN or inf"),
    "integer deltas": (lambda d: _edit_tensor(d, lambda t: t.round().to(torch.int32)), "deltas are floating point"),
    "other module names": (lambda d: _edit_meta(d, lambda m: m["selection"]["modules"].update(
        {"model.nope": m["selection"]["modules"].pop(next(iter(m["selection"]["modules"])))})), "does not have|differ from this model"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
@pytest.mark.parametrize("target", ["fresh", "prepared"])
def test_failing_loads_change_nothing(tmp_path, case, target):
    model = adapter_model("A")
    save_smt(model, tmp_path)
    damage, message = CORRUPTIONS[case]
    damage(tmp_path)
    victim = dropout_llama() if target == "fresh" else adapter_model("A")
    if target == "prepared":
        with torch.no_grad():
            for layer in smt_layers(victim).values(): layer.smt_delta.mul_(3)  # trained deltas that a failed load must not lose
    snap = snapshot(victim)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_smt(victim, tmp_path)
    assert unchanged(victim, snap)


def test_load_fails_cleanly_when_wrapping_itself_fails(tmp_path, monkeypatch):
    "Even a failure inside prepare_smt (here: memory, mid-way through the layers) leaves the fresh base as it was."
    save_smt(adapter_model("A"), tmp_path)
    from smt_nb.layers import SMTLinear
    real, made = SMTLinear.__init__, []
    def flaky(self, *a, **kw):
        if made: raise MemoryError("out of memory")
        made.append(1); real(self, *a, **kw)
    monkeypatch.setattr(SMTLinear, "__init__", flaky)
    victim = dropout_llama()
    snap = snapshot(victim)
    with pytest.raises(MemoryError):
        load_smt(victim, tmp_path)
    assert unchanged(victim, snap)


def test_fingerprint_tells_rounding_from_another_base(tmp_path):
    save_smt(adapter_model("A"), tmp_path)
    noisy = {}
    for eps in (0.01, 0.1):
        base = dropout_llama()
        with torch.no_grad():
            for p in base.parameters(): p.add_(eps * p.std() * torch.randn_like(p))
        snap = snapshot(base)
        with pytest.raises(ValueError, match="not the base the adapter was trained on"):
            load_smt(base, tmp_path)
        assert unchanged(base, snap)
        noisy[eps] = base
    load_smt(noisy[0.01], tmp_path, check_base=False)  # the documented override
    with pytest.warns(UserWarning, match="rounding only"):  # the same base in bf16: rounding, not another model
        load_smt(dropout_llama().to(torch.bfloat16), tmp_path)


def test_stale_json_after_an_interrupted_save_is_reported_and_ignored(tmp_path):
    save_smt(adapter_model("A"), tmp_path)
    old_json = (tmp_path / ADAPTER_CONFIG).read_text()
    save_smt(adapter_model("B"), tmp_path)
    (tmp_path / ADAPTER_CONFIG).write_text(old_json)  # killed after the weights file was replaced, before the JSON
    with pytest.warns(UserWarning, match="does not match"):
        got = state(load_smt(dropout_llama(), tmp_path))
    assert same_state(got, state(adapter_model("B")))


# ---------- non-finite values

def nan_on_call(model, bad_calls):
    calls = {"n": 0}
    def hook(module, args, out):
        calls["n"] += 1
        return out * float("nan") if calls["n"] in bad_calls else out
    return model.lm_head.register_forward_hook(hook)


def test_one_nan_micro_batch_is_skipped_in_train_smt():
    model = prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, sparsity=0.1, method="mw"))
    nan_on_call(model, {3})  # the second micro-batch of step 2
    with pytest.warns(UserWarning, match="step skipped"):
        losses = train_smt(model, lm_batches(8), steps=4, grad_accum=2, lr=1e-2, max_grad_norm=1.0, progress=False)
    assert [math.isnan(l) for l in losses] == [False, True, False, False]
    assert all(l.smt_delta.isfinite().all() and l.smt_delta.abs().sum() > 0 for l in smt_layers(model).values())


def test_one_nan_micro_batch_is_skipped_in_smt_trainer(tmp_path):
    model = prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, sparsity=0.1, method="mw"))
    nan_on_call(model, {2})
    rows = [{"input_ids": b["input_ids"][0], "labels": b["labels"][0]} for b in lm_batches(8, bs=1)]
    args = smt_training_arguments(model, str(tmp_path), max_steps=4, save_steps=2, per_device_train_batch_size=2, use_cpu=True,
                                  disable_tqdm=True, learning_rate=1e-2)
    trainer = SMTTrainer(model=model, args=args, train_dataset=rows)
    with pytest.warns(UserWarning, match="step skipped"):
        trainer.train()
    assert trainer.state.global_step == 4 and trainer.nonfinite_guard.skipped == 1
    assert all(l.smt_delta.isfinite().all() and l.smt_delta.abs().sum() > 0 for l in smt_layers(model).values())
    assert load_smt(ARCHS["llama"](), tmp_path / "checkpoint-4") is not None  # checkpoints hold finite deltas


def test_non_finite_deltas_are_never_saved(tmp_path):
    model = adapter_model("A")
    save_smt(model, tmp_path)
    with torch.no_grad(): next(iter(smt_layers(model).values())).smt_delta[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="not finite"):
        save_smt(model, tmp_path)
    assert same_state(state(load_smt(dropout_llama(), tmp_path)), state(adapter_model("A")))


@pytest.mark.parametrize("method", ["random", "mw"])
def test_scorers_refuse_non_finite_weights(method):
    model = ARCHS["llama"]()
    with torch.no_grad(): model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf weights"):
        prepare_smt(model, SMTConfig(block_size=16, sparsity=0.1, method=method))


# ---------- inputs

BAD_INPUTS = [
    (lambda: SMTConfig(block_size=True), ValueError, "block_size must be a positive integer"),
    (lambda: SMTConfig(sparsity=True), TypeError, "sparsity must be a number"),
    (lambda: SMTConfig(sparsity="0.01"), TypeError, "sparsity must be a number"),
    (lambda: SMTConfig(n_blocks=True), ValueError, "n_blocks must be a positive integer"),
    (lambda: SMTConfig(method="gw", warmup_steps=0), ValueError, "warmup_steps=0 runs none"),
    (lambda: SMTConfig(target_modules="[q_proj"), ValueError, "not a valid one"),
    (lambda: SMTConfig(target_modules=[1, 2]), TypeError, "list of module names"),
    (lambda: prepare_smt(ARCHS["llama"](), SMTConfig(method="mw"), sparsity=0.9), TypeError, "not both"),
    (lambda: prepare_smt(ARCHS["llama"](), "mw"), TypeError, "SMTConfig or a dict"),
    (lambda: prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, method="mw", target_modules="q_proj")), ValueError,
     r"pass a list: \['q_proj'\]"),
    (lambda: prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, sparsity=0.1, warmup_steps=1),
                         dataloader=[(torch.zeros(1, 4, dtype=torch.long),)]), TypeError, "must be dicts"),
    (lambda: prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, n_blocks=10**9, method="mw")), ValueError, "which have only"),
    (lambda: train_smt(prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, method="mw")), [], steps=1), ValueError, "no batches"),
    (lambda: train_smt(prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, method="mw")), lm_batches(1), steps=1,
                       checkpoint_dir="x"), ValueError, "need both checkpoint_dir and save_every"),
    *[(lambda kw=kw: train_smt(prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, method="mw")), lm_batches(1), **kw), ValueError, msg)
      for kw, msg in [(dict(steps=3, grad_accum=0), "grad_accum must be an integer ≥ 1"),
                      (dict(steps=3, grad_accum=1.5), "grad_accum must be an integer ≥ 1"),
                      (dict(steps=3, max_grad_norm=0.0), "max_grad_norm must be a positive finite number"),
                      (dict(steps=3, lr=-1e-3), "lr must be a positive finite number"),
                      (dict(steps=3, lr=float("nan")), "lr must be a positive finite number"),
                      (dict(steps=3, start_step=4), "0 ≤ start_step ≤ steps"),
                      (dict(steps=True), "0 ≤ start_step ≤ steps")]],
]


@pytest.mark.parametrize("i", range(len(BAD_INPUTS)))
def test_bad_inputs_fail_early_with_the_fix(i):
    call, error, message = BAD_INPUTS[i]
    with pytest.raises(error, match=message):
        call()


def test_n_blocks_is_an_exact_count():
    for n in (1, 2, 7):
        assert prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, n_blocks=n, method="mw")).smt_selection.n_blocks == n
    per_matrix = prepare_smt(ARCHS["gpt2"](), SMTConfig(block_size=16, n_blocks=2, method="mw", budget="per_matrix")).smt_selection
    assert all(len(b) == 2 for b in per_matrix.blocks.values())


def test_a_budget_below_one_block_warns_with_the_real_fraction():
    with pytest.warns(UserWarning, match=r"one block is taken there, so \d+\.\d+% of the target values will train"):
        sel = prepare_smt(ARCHS["llama"](), SMTConfig(block_size=48, sparsity=0.01, method="mw")).smt_selection
    assert sel.n_blocks == 1 and sel.sparsity > 0.01


def test_all_zero_warmup_warns_that_the_choice_is_arbitrary():
    model = ARCHS["llama"]()
    with torch.no_grad(): model.lm_head.weight.zero_()  # constant logits: every warm-up gradient below the head is exactly zero
    with pytest.warns(UserWarning, match="choice between them is arbitrary"):
        prepare_smt(model, SMTConfig(block_size=16, sparsity=0.1, warmup_steps=2), dataloader=lm_batches(2))
