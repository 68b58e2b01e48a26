"""`smt_nb demo` and `smt_nb train`: the real offline SmolLM2 path, local folders, the console script, Trainer checkpoints and resume."""
import json
import subprocess

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from smt_nb.cli import load_pairs, main, run_demo, run_train
from smt_nb.core import load_smt, smt_layers
from smt_nb.data import SMOLLM2, load_model


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
