"""`smt_nb demo` and `smt_nb train`: the real offline SmolLM2 path, local folders, the console script, Trainer checkpoints and resume,
and the command line as a tool: one-line errors, fast failure on model names, Ctrl-C, help for every flag."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from smt_nb.cli import build_parser, load_pairs, main, parse_sparsity, run_demo, run_train
from smt_nb.core import load_smt, smt_layers
from smt_nb.data import SMOLLM2, load_model
from smt_nb.train import _complete_trainer_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    "A small random Llama saved with SmolLM2's tokenizer: a local folder like any downloaded model."
    d = tmp_path_factory.mktemp("tiny_model")
    tok = load_model(SMOLLM2)[1]
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2)).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "qa.jsonl"
    p.write_text("\n".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"{2 * i}."}) for i in range(40)))
    return str(p)


def test_demo_on_smollm2_prints_the_figures(tmp_path, capsys):
    r = run_demo(str(tmp_path), steps=3, warmup_steps=2, batch_size=4, held_out=8, progress=False)
    out = capsys.readouterr().out
    for text in ("134.5M parameters", "LoRA rank", "training loss", "held-out loss", "before:", "after:", "adapter"):
        assert text in out, text
    assert r["block_size"] == 64 and 0 < r["target_sparsity"] <= 0.02
    assert (tmp_path / "selection_overview.png").stat().st_size > 1000
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_demo_trains_on_a_local_folder(tiny_dir, tmp_path):
    r = run_demo(str(tmp_path), model_name=tiny_dir, block_size=16, sparsity=0.2, steps=25, warmup_steps=2, lr=1e-2, held_out=8, progress=False)
    assert r["loss_after"] < r["loss_before"] - 0.1


def test_console_script(tiny_dir, tmp_path):
    out = subprocess.run(["smt_nb", "demo", "--model", tiny_dir, "--out", str(tmp_path), "--steps", "2", "--warmup-steps", "1",
                          "--block-size", "16", "--method", "random"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "held-out loss" in out.stdout and (tmp_path / "adapter" / "adapter_config.json").exists()


def test_bad_flag_says_why(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--method", "magnitude"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_train_saves_resumes_and_reloads(tiny_dir, qa_file, tmp_path):
    kw = dict(sparsity=0.2, block_size=16, steps=4, save_steps=2, batch_size=4, warmup_steps=1, lr=1e-2, cpu=True)
    first = run_train(tiny_dir, qa_file, str(tmp_path / "a"), **kw)
    ckpt = tmp_path / "a" / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").exists() and not list(ckpt.glob("model*"))   # checkpoints hold only the blocks
    resumed = run_train(tiny_dir, qa_file, str(tmp_path / "b"), resume=str(ckpt), **kw)   # as if run "a" had died after step 2
    assert resumed["train_loss"] == pytest.approx(first["train_loss"], rel=1e-6)          # the whole run's mean, not steps 3-4
    assert resumed["train_loss_steps"] == first["train_loss_steps"] == (1, 4)
    a = load_smt(load_model(tiny_dir)[0], tmp_path / "a" / "adapter")
    b = load_smt(load_model(tiny_dir)[0], tmp_path / "b" / "adapter")
    for la, lb in zip(smt_layers(a).values(), smt_layers(b).values()):
        torch.testing.assert_close(lb.smt_delta, la.smt_delta, rtol=1e-5, atol=1e-6)
    assert abs(resumed["eval_loss"] - first["eval_loss"]) < 1e-4
    again = load_smt(load_model(tiny_dir)[0], tmp_path / "a" / "adapter")                # reload is bit-exact
    ids = torch.randint(0, 1000, (1, 8))
    assert torch.equal(again(ids).logits, a(ids).logits)


def test_train_resume_latest_without_checkpoint_fails(tiny_dir, qa_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        run_train(tiny_dir, qa_file, str(tmp_path), resume="latest", steps=1, cpu=True)


def test_load_pairs_formats(qa_file):
    assert len(load_pairs(qa_file)) == 40 and len(load_pairs("chatterbot")) > 1000


# ---------- the command line as a tool

def smt_nb(*args, **kw):
    "Run the console script; a clean environment for the hub (an empty cache, online unless the test says otherwise)."
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_")}
    env.update(kw.pop("env", {}))
    kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
    return subprocess.Popen(["smt_nb", *args], text=True, env=env, **kw)


def test_unknown_model_fails_fast_naming_what_works(tmp_path):
    "Without a network, from_pretrained retries for ~50 s and ends in a 25-line traceback; the command answers in seconds, in one line."
    t0 = time.time()
    p = smt_nb("train", "--model", "no-such-org/no-such-model", "--data", "chatterbot", "--out", str(tmp_path / "run"),
               env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    out, err = p.communicate(timeout=120)
    assert time.time() - t0 < 30 and p.returncode == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smt_nb: error: Cannot load model 'no-such-org/no-such-model'"), err[-2000:]
    assert "smollm2-135m-offline" in lines[0] and "a local folder" in lines[0]
    assert not (tmp_path / "run").exists()


def test_model_from_a_local_hub_cache_needs_no_network(tiny_dir, tmp_path, monkeypatch):
    "A model downloaded before (here: a hub cache laid out by hand) loads by name with HF_HUB_OFFLINE; one that is not there fails at once."
    from huggingface_hub import constants
    snapshot = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / ("ab" * 20)
    snapshot.parent.mkdir(parents=True)
    import shutil
    shutil.copytree(tiny_dir, snapshot)
    (tmp_path / "hub" / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny" / "refs" / "main").write_text("ab" * 20)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model, tok = load_model("someone/tiny")
    assert model.config.hidden_size == 64 and tok.pad_token is not None
    with pytest.raises(OSError, match="not in the local hub cache .* HF_HUB_OFFLINE is set. Use 'smollm2-135m-offline'"):
        load_model("someone/other")


def test_user_errors_are_one_line_and_exit_2(tmp_path, qa_file, capsys):
    never = tmp_path / "never"
    cases = [(["train", "--out", str(never), "--resume", "latest"], "--resume latest: "),
             (["train", "--out", str(never), "--data", str(tmp_path / "nope.jsonl")], "use 'chatterbot'"),
             (["train", "--out", str(never), "--data", qa_file, "--model", str(tmp_path)], "has no config.json"),
             (["train", "--out", str(never), "--resume", str(tmp_path)], "not a complete checkpoint")]
    for argv, says in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("smt_nb: error: ") and err.count("\n") == 1 and says in err, err
    with pytest.raises(SystemExit) as e:  # a value argparse refuses: the same one line
        main(["train", "--out", str(never), "--sparsity", "5"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "did you mean 5%?" in err and err.startswith("smt_nb: error: ")
    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(never), "--target-modules", "q_proj", "--block-size", "0"])
    assert e.value.code == 2 and "argument --block-size: 0 is below 1" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no complete checkpoint|not a folder of checkpoints"):  # --debug: the traceback
        main(["train", "--out", str(never), "--resume", "latest", "--debug"])
    assert not never.exists()


def test_sparsity_as_fraction_or_percent():
    assert [parse_sparsity(t) for t in ("0.02", "2%", "0.5%", " 1 % ")] == pytest.approx([0.02, 0.02, 0.005, 0.01])
    assert parse_sparsity("2", percent=True) == pytest.approx(0.02)  # the widget's box takes percent
    for bad in ("5", "0", "-1%", "150%", "two", "nan"):
        with pytest.raises(ValueError, match="0.02, or a percent such as 2%"):
            parse_sparsity(bad)
    assert build_parser().parse_args(["train", "--out", "x", "--sparsity", "0.5%"]).sparsity == pytest.approx(0.005)


def test_every_flag_has_help(capsys):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subparsers) == {"demo", "train"}
    for name, sub in subparsers.items():
        missing = [a.option_strings for a in sub._actions if not a.help or a.help == argparse.SUPPRESS]
        assert not missing, (name, missing)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("{question, answer}", "{instruction, input, output}", "{messages:", "percent (1%)", "--resume latest", "--debug",
                  "smollm2-135m-offline", "checkpoint"):
        assert words in text, words


def test_ctrl_c_says_where_to_continue(tiny_dir, qa_file, tmp_path):
    "SIGINT while training: one line naming the step and the checkpoint to resume from, status 130; the checkpoint resumes."
    out = tmp_path / "run"
    p = smt_nb("train", "--model", tiny_dir, "--data", qa_file, "--out", str(out), "--steps", "100000", "--save-steps", "3",
               "--batch-size", "4", "--block-size", "16", "--sparsity", "20%", "--warmup-steps", "1", "--method", "random", "--cpu",
               env={"HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 300
    while not (out.is_dir() and any(_complete_trainer_checkpoint(d) for d in out.glob("checkpoint-*"))):
        assert p.poll() is None and time.time() < deadline, p.communicate()[1][-3000:] if p.poll() is not None else "no checkpoint"
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "pin_memory" not in stderr + stdout  # item: quiet on a CPU
    last = stderr.strip().splitlines()[-1]
    step, ckpt = int(last.split("after step ")[1].split(";")[0]), last.split("; ")[1].split(" ")[0]
    assert last == f"smt_nb: interrupted after step {step}; {ckpt} is complete; continue with --resume latest"
    assert "trainable: " in stdout and "blocks of 16×16" in stdout  # what trains, printed before training
    m = int(ckpt.removeprefix("checkpoint-"))
    assert 3 <= m <= step and m % 3 == 0 and _complete_trainer_checkpoint(out / ckpt)
    r = run_train(tiny_dir, qa_file, str(out), resume="latest", steps=m + 1, save_steps=3, batch_size=4, block_size=16, sparsity=0.2,
                  warmup_steps=1, method="random", cpu=True)
    assert r["train_loss_steps"] == (1, m + 1) and (out / "adapter" / "adapter_model.safetensors").exists()


# ---------- issue 31: silent mistakes fail, a finished run stays finished, data problems named, kill -9 and resume

RUN = ["--steps", "6", "--save-steps", "2", "--batch-size", "4", "--block-size", "16", "--sparsity", "20%", "--warmup-steps", "1",
       "--method", "random", "--cpu"]


def _out_err(capsys, code_or_call):
    "(exit status, stdout, stderr) of main(argv) in this process; argparse's refusals (SystemExit) included."
    try: code = code_or_call()
    except SystemExit as e: code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _tensors(folder) -> dict:
    from safetensors.torch import load_file
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def _metadata(folder) -> dict:
    "The adapter's header (the file's bytes may differ between two saves: safetensors writes its metadata in hash order)."
    from safetensors import safe_open
    with safe_open(str(Path(folder) / "adapter_model.safetensors"), framework="pt") as f: return f.metadata()


def _assert_same_adapter(a, b):
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta: assert torch.equal(ta[k], tb[k]), k  # bit for bit


@pytest.fixture(scope="module")
def finished_run(tiny_dir, qa_file, tmp_path_factory):
    "An uninterrupted `smt_nb train` run (in this process): 6 steps, checkpoints at 2, 4 and 6; the reference for the resumes below."
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--model", tiny_dir, "--data", qa_file, "--out", str(out), *RUN]) == 0
    return out


@pytest.mark.parametrize("flag,value,says", [
    ("--steps", "-1", "argument --steps: -1 is below 1"), ("--steps", "0", "'train for 3 epochs'"),
    ("--batch-size", "0", "argument --batch-size: 0 is below 1"), ("--max-length", "0", "argument --max-length"),
    ("--save-steps", "0", "argument --save-steps"), ("--block-size", "0", "argument --block-size"),
    ("--warmup-steps", "-2", "argument --warmup-steps"), ("--steps", "2.5", "'2.5' is not a whole number"),
    ("--lr", "0", "argument --lr: '0' is not a learning rate"), ("--lr", "-0.001", "not a learning rate"),
    ("--lr", "nan", "not a learning rate"), ("--lr", "inf", "not a learning rate")])
def test_numbers_that_would_train_quietly_are_refused(flag, value, says, tmp_path, capsys):
    "Trainer reads max_steps=-1 as 'three epochs'; lr=0 was taken for 'not given': one line, exit 2, nothing written."
    code, _, err = _out_err(capsys, lambda: main(["train", "--out", str(tmp_path / "never"), flag, value]))
    assert code == 2 and err.count("\n") == 1 and err.startswith("smt_nb: error: ") and says in err, err
    assert not (tmp_path / "never").exists()


def test_numbers_are_checked_in_python_too(tmp_path):
    for kw, says in [(dict(steps=-1), "--steps -1"), (dict(lr=0.0), "--lr 0"), (dict(lr=float("nan")), "--lr nan"),
                     (dict(batch_size=0), "--batch-size 0"), (dict(save_steps=0), "--save-steps 0")]:
        with pytest.raises(ValueError, match=says):
            run_train("never-loaded", "chatterbot", str(tmp_path / "never"), **kw)
    with pytest.raises(ValueError, match="--steps 0"):
        run_demo(str(tmp_path / "never"), steps=0)
    assert not (tmp_path / "never").exists()


def test_resume_with_other_flags_is_refused(finished_run, capsys):
    "Flags given on a resume must be the run's; flags left out are not differences (and take the run's values)."
    code, _, err = _out_err(capsys, lambda: main(["train", "--out", str(finished_run), "--resume", "latest", "--sparsity", "0.9",
                                                  "--block-size", "8", "--method", "gw"]))
    assert code == 2 and err.count("\n") == 1, err
    for says in ("--method gw (the run: random)", "--sparsity 0.9 (the run: 0.2)", "--block-size 8 (the run: 16)", "drop these flags",
                 "new --out"):
        assert says in err, (says, err)
    code, _, err = _out_err(capsys, lambda: main(["train", "--out", str(finished_run), "--resume", "latest", "--lr", "0.5",
                                                  "--max-length", "64"]))
    assert code == 2 and "--lr 0.5 (the run: 0.0002)" in err and "--max-length 64 (the run: 128)" in err, err
    code, _, err = _out_err(capsys, lambda: main(["train", "--out", str(finished_run), "--resume", "latest", "--data", "chatterbot"]))
    assert code == 2 and "--data chatterbot (the run: " in err and "drop this flag" in err, err


def test_resuming_a_finished_run_trains_nothing(finished_run, tiny_dir, qa_file, capsys):
    "The newest checkpoint is at --steps: say so, exit 0, and put the final adapter in place if a crash kept it from there."
    adapter, ckpts = finished_run / "adapter", sorted(p.name for p in finished_run.glob("checkpoint-*"))
    saved = _tensors(adapter), _metadata(adapter)
    for argv in (["--resume", "latest"], ["--resume", "latest", *RUN, "--model", tiny_dir, "--data", qa_file]):  # alone, or the same flags
        code, out, err = _out_err(capsys, lambda: main(["train", "--out", str(finished_run), *argv]))
        assert code == 0, err
        assert f"the run in {finished_run} already finished at step 6; its adapter is in {adapter}\n" in out and "trainable" not in out
    shutil.rmtree(adapter)  # killed after the last checkpoint, before the final save
    code, out, err = _out_err(capsys, lambda: main(["train", "--out", str(finished_run), "--resume", "latest"]))
    assert code == 0 and "(written now from checkpoint-6)" in out, err
    assert (adapter / "adapter_config.json").is_file() and _metadata(adapter) == saved[1]
    _assert_same_adapter(adapter, finished_run / "checkpoint-6")
    assert all(torch.equal(t, saved[0][k]) for k, t in _tensors(adapter).items())
    assert sorted(p.name for p in finished_run.glob("checkpoint-*")) == ckpts


def test_resume_takes_the_runs_settings(finished_run, tmp_path, capsys):
    "`--resume checkpoint-4` with no other flag continues with the run's model, data, batch size, steps…: the same adapter, bit for bit."
    code, out, err = _out_err(capsys, lambda: main(["train", "--out", str(tmp_path / "b"), "--resume", str(finished_run / "checkpoint-4"),
                                                    "--cpu"]))
    assert code == 0 and "(mean of steps 1–6)" in out, err
    _assert_same_adapter(tmp_path / "b" / "adapter", finished_run / "adapter")


def test_data_problems_name_file_line_and_fix(tiny_dir, qa_file, tmp_path, capsys):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"question": "Hi?", "answer": "Hello."}\n{"question": "Caf\xe9?", "answer": "Coffee."}\n')
    one = tmp_path / "one.jsonl"
    one.write_text('{"question": "Hi?", "answer": "Hello."}\n')
    at = latin.read_bytes().index(b"\xe9")
    cases = [(["--data", str(latin)], [f"{latin} line 2 is not UTF-8: byte 0xe9 at byte offset {at}", "re-encode the file as UTF-8"]),
             (["--data", qa_file, "--max-length", "4"], [f"every one of the 40 examples in {qa_file} is longer than --max-length 4 tokens",
                                                         "use --max-length 48"]),
             (["--data", str(one)], [f"{one} holds 1 example; training needs at least 2", "held out for the evaluation loss"])]
    for argv, says in cases:
        code, _, err = _out_err(capsys, lambda: main(["train", "--model", tiny_dir, "--out", str(tmp_path / "never"), *argv]))
        err = err.strip().splitlines()[-1]  # after transformers' progress bar for loading the weights, where the model loaded
        assert code == 2 and err.startswith("smt_nb: error: "), err
        for s in says: assert s in err, (s, err)
    assert not (tmp_path / "never").exists()


# A process that imports smt_nb once and forks a child per command: each trial's `smt_nb train` is a process of its own that SIGKILL can
# end anywhere, without paying the 5-15 s of imports again (the parent computes nothing, so forking it is safe).
FORKER = r"""
import json, os, sys
from smt_nb.cli import main
for line in sys.stdin:
    argv, log = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1); os.dup2(fd, 2)
        try: code = main(argv)
        finally: sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_kill_9_and_resume_until_done(finished_run, tiny_dir, qa_file, tmp_path, capsys):
    """`smt_nb train` killed with SIGKILL at random points (after checkpoint 2 or 4, or after the last step), then `--resume latest` with
    the same flags until it is done: every trial ends with the uninterrupted run's adapter, bit for bit (data order, RNG, optimizer state)."""
    import random
    rng = random.Random(31)
    argv = ["train", "--model", tiny_dir, "--data", qa_file, *RUN]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_")}, "HF_HUB_OFFLINE": "1"}
    forker = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        for trial, k in enumerate([rng.choice([2, 4]), rng.choice([2, 4]), 6]):  # the last: killed after its last step
            out, log = tmp_path / f"trial{trial}", tmp_path / f"trial{trial}.log"
            forker.stdin.write(json.dumps([[*argv, "--out", str(out)], str(log)]) + "\n"); forker.stdin.flush()
            pid, deadline = int(forker.stdout.readline()), time.time() + 300
            while not _complete_trainer_checkpoint(out / f"checkpoint-{k}"):
                assert time.time() < deadline and not (log.exists() and "smt_nb: error" in log.read_text()), log.read_text()[-3000:]
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.5) if k < 6 else 0)
            os.kill(pid, signal.SIGKILL)
            assert int(forker.stdout.readline()) in (0, -signal.SIGKILL), log.read_text()[-3000:]
            for attempt in range(3):  # `smt_nb train --resume latest`, here in this process (the console script's main)
                code, stdout, err = _out_err(capsys, lambda: main([*argv, "--out", str(out), "--resume", "latest"]))
                assert code == 0, err
                if (out / "adapter" / "adapter_model.safetensors").is_file(): break
            _assert_same_adapter(out / "adapter", finished_run / "adapter")
    finally:
        forker.stdin.close()
        forker.wait(timeout=60)


def test_review_fixes_resume_settings_finished_adapter_and_interrupt(tmp_path, monkeypatch, capsys):
    "A resumed run records its modules by full name and still matches the flags; a finished run's stale OUT/adapter is replaced; Ctrl-C "
    "before the Trainer exists still says 'interrupted'."
    import smt_nb.cli as cli
    full = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    assert cli._same("target_modules", "q_proj,v_proj", full) and not cli._same("target_modules", "q_proj,k_proj", full)
    from safetensors.torch import load_file, save_file
    ckpt, adapter = tmp_path / "checkpoint-4", tmp_path / "adapter"
    for d, value in ((ckpt, 4.0), (adapter, 2.0)):
        d.mkdir()
        save_file({"x.smt_delta": torch.full((1, 2, 2), value)}, d / cli.ADAPTER_WEIGHTS)
        (d / cli.ADAPTER_CONFIG).write_text(json.dumps({"step": value}))
    cli._finished(str(tmp_path), ckpt, 4, 4)
    assert load_file(adapter / cli.ADAPTER_WEIGHTS)["x.smt_delta"].eq(4.0).all()  # not the older run's
    assert "written now from checkpoint-4" in capsys.readouterr().out
    cli._finished(str(tmp_path), ckpt, 4, 4)                                      # the same adapter (bytes aside): left as it is
    assert "written now" not in capsys.readouterr().out
    def interrupted(**kw): raise KeyboardInterrupt()
    monkeypatch.setattr(cli, "run_train", interrupted)
    assert main(["train", "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.strip() == "smt_nb: interrupted"
