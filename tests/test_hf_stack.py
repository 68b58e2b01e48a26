"""SMT in the Hugging Face stack: Trainer and accelerate in bf16, TRL's SFTTrainer, saving that cannot go silently wrong,
loading by hub id, tied heads, and PEFT-style adapter management (all-linear, exclude_modules, disable_adapter, unload)."""
import os
import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from datasets import Dataset
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer, TrainingArguments

from smt_nb.core import SMTConfig, find_targets, load_smt, prepare_smt, smt_layers
from smt_nb.train import SMTTrainer, smt_trainer_class

from conftest import ALL_LINEAR, ARCHS, VOCAB, batches

MW = dict(block_size=16, sparsity=0.1, method="mw")


def deltas(model): return {n: l.smt_delta.detach().clone() for n, l in smt_layers(model).items()}


def rows(n=16, seed=0):
    return [{"input_ids": b["input_ids"][0], "labels": b["labels"][0]} for b in batches(n, seed=seed, bs=1, seq=12)]


def tiny_tokenizer():
    "A word-level tokenizer over the tiny models' vocabulary: 'w0 w1 ...' (TRL needs one; nothing is downloaded)."
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 3)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def text_dataset(n=16):
    return Dataset.from_dict({"text": [" ".join(f"w{(i * 7 + j * (i % 5 + 1)) % 60}" for j in range(14)) for i in range(n)]})


# ---------- mixed precision through the HF trainers

def test_trainer_bf16_trains(tmp_path):
    model = prepare_smt(ARCHS["llama"](), SMTConfig(**MW))
    before = deltas(model)
    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, save_strategy="no", report_to=[], disable_tqdm=True)
    out = Trainer(model=model, args=args, train_dataset=rows()).train()
    after = deltas(model)
    assert out.global_step == 3 and torch.isfinite(torch.tensor(out.training_loss))
    assert all(torch.isfinite(after[n]).all() and not torch.equal(after[n], before[n]) for n in before)
    assert all(d.dtype == torch.float32 for d in after.values())


def test_accelerate_bf16_trains():
    from accelerate import Accelerator
    acc = Accelerator(mixed_precision="bf16", cpu=True)
    model = prepare_smt(ARCHS["qwen2"](), SMTConfig(**MW))
    before = deltas(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model, opt = acc.prepare(model, opt)
    for b in batches(3):
        loss = model(**b).loss
        acc.backward(loss); opt.step(); opt.zero_grad()
    assert loss.isfinite()
    after = deltas(acc.unwrap_model(model))
    assert all(not torch.equal(after[n], before[n]) and after[n].isfinite().all() for n in before)


def sft(model, out_dir, max_steps, **extra):
    from trl import SFTConfig, SFTTrainer
    args = SFTConfig(output_dir=str(out_dir), use_cpu=True, max_steps=max_steps, save_steps=2, per_device_train_batch_size=4,
                     learning_rate=1e-2, report_to=[], disable_tqdm=True, seed=0, **extra)  # otherwise TRL's defaults: bf16, checkpointing
    return smt_trainer_class(SFTTrainer)(model=model, args=args, train_dataset=text_dataset(), processing_class=tiny_tokenizer())


def test_sft_trainer_adapter_checkpoints_resume_exactly(tmp_path):
    straight = prepare_smt(ARCHS["llama"](), SMTConfig(**MW))
    trainer = sft(straight, tmp_path / "a", max_steps=4)
    assert trainer.args.bf16 and trainer.args.gradient_checkpointing  # TRL's defaults are what is tested
    trainer.train()
    ckpt = tmp_path / "a" / "checkpoint-2"
    files = set(os.listdir(ckpt))
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "rng_state.pth"} <= files
    assert not any(f.startswith("model") for f in files)
    assert sum(f.stat().st_size for f in ckpt.glob("adapter_model.safetensors")) < 100_000

    resumed = prepare_smt(ARCHS["llama"](), SMTConfig(**MW))
    sft(resumed, tmp_path / "a", max_steps=4).train(resume_from_checkpoint=str(ckpt))
    a, b = deltas(straight), deltas(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)  # bit-exact
    assert any(a[n].abs().sum() > 0 for n in a)


def test_resumed_trainer_reports_the_whole_runs_loss(tmp_path):
    "Trainer alone averages only the steps after a resume; SMTTrainer's training_loss is the uninterrupted run's, to rounding."
    def trainer():
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_steps=6, save_steps=3, logging_steps=2,  # a save between logs
                                 per_device_train_batch_size=4, learning_rate=1e-2, report_to=[], disable_tqdm=True, seed=0,
                                 dataloader_pin_memory=False)
        return SMTTrainer(model=prepare_smt(ARCHS["llama"](), SMTConfig(**MW)), args=args, train_dataset=rows())
    straight = trainer().train()
    ckpt = tmp_path / "checkpoint-3"
    resumed_trainer = trainer()
    resumed = resumed_trainer.train(resume_from_checkpoint=str(ckpt))
    assert resumed.training_loss == pytest.approx(straight.training_loss, rel=1e-6) and resumed_trainer.train_loss_steps == (1, 6)
    assert resumed_trainer.state.log_history[-1]["train_loss"] == resumed.training_loss  # what is printed and logged, too
    import json
    state = json.loads((ckpt / "trainer_state.json").read_text())  # a checkpoint without the running sum (another trainer's)
    del state["stateful_callbacks"]["SMTRunLoss"]
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    old = trainer()
    partial = old.train(resume_from_checkpoint=str(ckpt))
    assert old.train_loss_steps == (4, 6) and abs(partial.training_loss - straight.training_loss) > 1e-4  # labelled as steps 4-6


def test_sft_trainer_refuses_lm_head_blocks(tmp_path):
    model = ARCHS["llama"]()
    with pytest.warns(UserWarning, match="output head"):
        prepare_smt(model, SMTConfig(block_size=16, sparsity=0.05, method="mw", target_modules=["lm_head", "v_proj"]))
    with pytest.raises(ValueError, match="exclude_modules=\\['lm_head'\\]"):
        sft(model, tmp_path, max_steps=1)


def plain_trainer(kind, model, out_dir, max_steps=4, eval_dataset=None, **extra):
    "transformers.Trainer with bf16=True, or TRL's SFTTrainer with its default SFTConfig (bf16, gradient checkpointing): no SMT class."
    common = dict(output_dir=str(out_dir), use_cpu=True, max_steps=max_steps, save_steps=2, per_device_train_batch_size=4,
                  learning_rate=1e-2, report_to=[], disable_tqdm=True, seed=0, **extra)
    if kind == "trl":
        from trl import SFTConfig, SFTTrainer
        return SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=text_dataset(), processing_class=tiny_tokenizer())
    return Trainer(model=model, args=TrainingArguments(bf16=True, **common), train_dataset=rows(), eval_dataset=eval_dataset)


@pytest.mark.parametrize("kind", ["transformers", "trl"])
def test_plain_trainers_write_adapter_checkpoints_and_resume_exactly(tmp_path, kind):
    "No SMT class: a plain Trainer or SFTTrainer checkpoints the adapter and resumes from it bit for bit, also from the last checkpoint."
    from safetensors import safe_open
    straight = prepare_smt(ARCHS["llama"](), SMTConfig(**MW))
    trainer = plain_trainer(kind, straight, tmp_path / "a")
    if kind == "trl": assert trainer.args.bf16 and trainer.args.gradient_checkpointing  # TRL's defaults are what is tested
    assert trainer.train().global_step == 4
    trainer.save_model()  # at the end, as scripts do: the adapter again, never an error
    want = deltas(straight)
    assert any(d.abs().sum() > 0 for d in want.values())
    ckpt = tmp_path / "a" / "checkpoint-2"
    files = set(os.listdir(ckpt))
    assert {"adapter_model.safetensors", "adapter_config.json", "model.safetensors", "optimizer.pt", "rng_state.pth"} <= files
    with safe_open(ckpt / "model.safetensors", "pt") as f:  # what Trainer reads back: the deltas and the adapter's JSON, no base weight
        assert all(k.endswith(".smt_delta") for k in f.keys() if k != "smt_nb_adapter") and len(list(f.keys())) == len(want) + 1
    assert sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) < 200_000
    assert all(torch.equal(a, b) for a, b in zip(deltas(load_smt(ARCHS["llama"](), tmp_path / "a")).values(), want.values()))

    for start in ("checkpoint-2", "checkpoint-4"):  # mid-run, and a run already finished (nothing left to do)
        resumed = prepare_smt(ARCHS["llama"](), SMTConfig(**MW))
        out = plain_trainer(kind, resumed, tmp_path / "b").train(resume_from_checkpoint=str(tmp_path / "a" / start))
        got = deltas(resumed)
        assert out.global_step == 4 and all(torch.equal(want[n], got[n]) for n in want), start  # bit-exact


@pytest.mark.parametrize("engine", ["is_fsdp_enabled", "is_deepspeed_enabled"])
def test_plain_trainer_under_fsdp_or_deepspeed_is_refused_before_its_first_step(tmp_path, engine):
    "Its checkpoints could not be resumed: the model refuses the first training forward (deltas untouched), naming SMTTrainer."
    from smt_nb.train import SMTTrainer
    model = prepare_smt(ARCHS["llama"](), SMTConfig(**MW))
    before = deltas(model)
    trainer = plain_trainer("transformers", model, tmp_path / "a")
    setattr(trainer, engine, True)  # what accelerate's FSDP / DeepSpeed plugins set (the engines themselves need several processes,
    batch = next(iter(trainer.get_train_dataloader()))  # so the step is driven by hand: Trainer's own compute_loss, as train() calls it)
    model.train()
    with pytest.raises(TypeError, match="Use smt_nb.train.SMTTrainer"):
        trainer.compute_loss(model, batch)
    assert all(torch.equal(before[n], d) for n, d in deltas(model).items())
    setattr(trainer, engine, False)
    assert torch.isfinite(trainer.compute_loss(model, batch))  # the same call without the engine passes
    assert getattr(SMTTrainer, "smt_checkpoints", False)  # SMTTrainer writes its own checkpoints: the check lets it pass
    model.eval()
    with torch.no_grad(): model(torch.tensor([[1, 2, 3]]))  # evaluation and generation are never refused
    plain = model.unload()
    assert not plain._forward_pre_hooks and "_smt_trainer_check" not in plain.__dict__  # unload takes the check out


def test_plain_trainer_refuses_a_checkpoint_with_other_blocks(tmp_path):
    from smt_nb.selection import Selection
    trainer = plain_trainer("transformers", prepare_smt(ARCHS["llama"](), SMTConfig(**MW)), tmp_path, max_steps=2)
    trainer.train()
    sel = trainer.model.smt_selection
    name = next(iter(sel.blocks))
    blocks = sel.blocks[name].clone()
    grid = sel.grids[name]
    taken = {tuple(b) for b in blocks.tolist()}
    blocks[0] = torch.tensor(next((r, c) for r in range(grid.n_rows) for c in range(grid.n_cols) if (r, c) not in taken))
    other = prepare_smt(ARCHS["llama"](), SMTConfig(**MW), selection=Selection({**sel.blocks, name: blocks}, sel.grids, {}, sel.meta))
    before = deltas(other)
    with pytest.raises(ValueError, match="blocks differ"):
        plain_trainer("transformers", other, tmp_path / "b", max_steps=2).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert all(torch.equal(before[n], d) for n, d in deltas(other).items())  # untouched
    sd = other.state_dict()  # any other state dict loads as nn.Module loads it
    assert other.load_state_dict(sd) is not None and all(torch.equal(sd[k], v) for k, v in other.state_dict().items())


def test_plain_trainer_loads_the_best_checkpoint_at_end(tmp_path):
    model = prepare_smt(ARCHS["llama"](), SMTConfig(**MW))
    trainer = plain_trainer("transformers", model, tmp_path, eval_dataset=rows(4, seed=1), eval_strategy="steps", eval_steps=2,
                            load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=False)
    trainer.train()
    best = deltas(load_smt(ARCHS["llama"](), trainer.state.best_model_checkpoint))
    assert all(torch.equal(best[n], d) for n, d in deltas(model).items())


def test_smt_trainer_resumed_at_max_steps_ends_as_trainer_does(tmp_path):
    def trainer():
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_steps=4, save_steps=2, per_device_train_batch_size=4,
                                 learning_rate=1e-2, report_to=[], disable_tqdm=True, seed=0, dataloader_pin_memory=False)
        return SMTTrainer(model=prepare_smt(ARCHS["llama"](), SMTConfig(**MW)), args=args, train_dataset=rows())
    first = trainer()
    straight = first.train()
    again = trainer()
    out = again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert out.global_step == 4 and out.training_loss == pytest.approx(straight.training_loss, rel=1e-6)
    a, b = deltas(first.model), deltas(again.model)
    assert all(torch.equal(a[n], b[n]) for n in a)


# ---------- saving that cannot go silently wrong

def trained_model(arch="llama", seed=0):
    model = prepare_smt(ARCHS[arch](seed), SMTConfig(**MW, init_std=0.05))  # non-zero deltas: a wrong load would show
    return model


def test_save_pretrained_writes_the_adapter_and_reloads_exactly(tmp_path, arch):
    model = trained_model(arch)
    ids = batches(1)[0]["input_ids"]
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert torch.equal(load_smt(ARCHS[arch](), tmp_path)(ids).logits, model(ids).logits)


def test_from_pretrained_on_an_adapter_folder_raises(tmp_path):
    base_dir = tmp_path / "base"
    ARCHS["llama"]().save_pretrained(base_dir)
    model = prepare_smt(AutoModelForCausalLM.from_pretrained(base_dir), SMTConfig(**MW, init_std=0.05))
    model.save_pretrained(tmp_path / "adapter")
    import json
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)
    with pytest.raises(Exception):  # never a model that silently lacks the trained blocks
        AutoModelForCausalLM.from_pretrained(tmp_path / "adapter")


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A stand-in for the Hub: `create_repo`/`upload_folder` write commits into a local hub cache laid out as huggingface_hub
    lays it out (refs/<branch> -> snapshots/<commit>/files), and the library runs offline, so loading by id reads that cache."""
    import huggingface_hub
    from huggingface_hub import constants
    cache = tmp_path / "hub_cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    uploads = []

    def create_repo(self, repo_id, **kwargs): return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, revision=None, **kwargs):
        commit = uuid.uuid4().hex + "00000000"
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder_path, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / (revision or "main")).write_text(commit)
        uploads.append((repo_id, revision, sorted(os.listdir(folder_path))))
        return SimpleNamespace(oid=commit)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return uploads


def test_push_to_hub_and_load_by_name(local_hub):
    model = trained_model()
    ids = batches(1)[0]["input_ids"]
    model.push_to_hub("someone/smt-tiny")
    assert local_hub == [("someone/smt-tiny", None, ["adapter_config.json", "adapter_model.safetensors"])]
    assert torch.equal(load_smt(ARCHS["llama"](), "someone/smt-tiny")(ids).logits, model(ids).logits)
    with torch.no_grad():
        for layer in smt_layers(model).values(): layer.smt_delta.mul_(2)
    model.push_to_hub("someone/smt-tiny", revision="v2")
    v2 = load_smt(ARCHS["llama"](), "someone/smt-tiny", revision="v2")
    assert torch.equal(v2(ids).logits, model(ids).logits)
    assert not torch.equal(load_smt(ARCHS["llama"](), "someone/smt-tiny")(ids).logits, model(ids).logits)  # main is the first push
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub repository"):
        load_smt(ARCHS["llama"](), "someone/missing")


# ---------- shared weights

def tied_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))


def test_tied_lm_head_is_refused_before_anything_changes():
    model = tied_llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="shares its weight with model.embed_tokens"):
        prepare_smt(model, SMTConfig(block_size=16, sparsity=0.05, method="mw", target_modules=["lm_head"]))
    assert smt_layers(model) == {} and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # a selection made on an untied copy cannot sneak the tied head in either
    untied = tied_llama()
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = nn.Parameter(untied.lm_head.weight.detach().clone())
    with pytest.warns(UserWarning, match="output head"):
        sel = prepare_smt(untied, SMTConfig(block_size=16, sparsity=0.05, method="mw", target_modules=["lm_head"])).smt_selection
    with pytest.raises(ValueError, match="shares its weight"):
        prepare_smt(tied_llama(), SMTConfig(), selection=sel)


def test_untied_lm_head_trains_and_merges_without_touching_the_embedding():
    model = tied_llama()
    model.config.tie_word_embeddings = False
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    emb = model.model.embed_tokens.weight.detach().clone()
    with pytest.warns(UserWarning, match="output head"):
        prepare_smt(model, SMTConfig(block_size=16, sparsity=0.05, method="mw", target_modules=["lm_head"], init_std=0.05))
    ids = batches(1)[0]["input_ids"]
    logits = model(ids).logits.detach()
    merged = model.merge_and_unload()
    assert torch.equal(merged.model.embed_tokens.weight, emb)
    torch.testing.assert_close(merged(ids).logits, logits, rtol=1e-5, atol=1e-5)


# ---------- PEFT-style management

def test_disable_adapter_and_unload_give_the_base_back_exactly(arch):
    base = ARCHS[arch](seed=3)
    next(base.parameters()).requires_grad_(False)  # a flag unlike the others must come back as it was, too
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    state = {k: v.clone() for k, v in base.state_dict().items()}
    ids = batches(1)[0]["input_ids"]
    base.eval()
    base_logits = base(ids).logits.detach()
    model = prepare_smt(base, SMTConfig(**MW, init_std=0.05))
    layer = next(iter(smt_layers(model).values()))
    layer.path = "inplace"  # the path that writes base + Δ into the weight (CUDA's default) must restore it too
    assert not torch.equal(model(ids).logits, base_logits)
    with model.disable_adapter():
        assert torch.equal(model(ids).logits, base_logits)
    assert not torch.equal(model(ids).logits, base_logits)
    plain = model.unload()
    assert plain is base and smt_layers(plain) == {}
    assert plain.state_dict().keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in plain.state_dict().items())
    assert {n: p.requires_grad for n, p in plain.named_parameters()} == flags
    assert "save_pretrained" not in plain.__dict__ and not hasattr(plain, "smt_config")


def test_all_linear_matches_peft(arch):
    from peft import LoraConfig, get_peft_model
    ours = sorted(find_targets(ARCHS[arch](), "all-linear"))
    lora = get_peft_model(ARCHS[arch](), LoraConfig(r=2, target_modules="all-linear"))
    theirs = sorted(n.removeprefix("base_model.model.") for n, m in lora.named_modules() if hasattr(m, "lora_A"))
    assert ours == theirs
    assert sorted({n.split(".")[-1] for n in ours}) == sorted(ALL_LINEAR[arch])


def test_exclude_modules_and_trainable_counts():
    model = prepare_smt(ARCHS["llama"](), SMTConfig(block_size=16, sparsity=0.1, method="mw", target_modules="all-linear",
                                                    exclude_modules=["gate_proj", "up_proj", "down_proj"]))
    assert {n.split(".")[-1] for n in model.smt_selection.grids} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == model.smt_selection.n_trainable and total == sum(p.numel() for p in model.parameters()) - sum(
        l.smt_delta.numel() for l in smt_layers(model).values()) + trainable


def test_prepare_smt_refuses_a_config_with_keywords():
    with pytest.raises(TypeError, match="not both"):
        prepare_smt(ARCHS["llama"](), SMTConfig(**MW), sparsity=0.5)
    assert prepare_smt(ARCHS["llama"](), dict(MW)).smt_config == SMTConfig(**MW)


def test_resume_from_a_checkpoint_written_without_a_callback_the_resumed_run_has(tmp_path):
    "Trainer's save raises KeyError for a stateful callback missing from the resumed state: SMTTrainer records every one (an older run's checkpoint)."
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
    from smt_nb.train import SMTTrainer
    class Recorded(TrainerCallback, ExportableState):
        def state(self): return {"args": {}, "attributes": {}}
    def trainer(model, callbacks=()):
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_steps=3, save_steps=1, per_device_train_batch_size=4,
                                 learning_rate=1e-2, report_to=[], logging_steps=1)
        return SMTTrainer(model=model, args=args, train_dataset=rows(), callbacks=list(callbacks))
    trainer(prepare_smt(ARCHS["llama"](), SMTConfig(**MW))).train()
    resumed = trainer(prepare_smt(ARCHS["llama"](), SMTConfig(**MW)), [Recorded()])
    resumed.args.max_steps = 5
    assert resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3")).global_step == 5


def test_a_training_forward_keeps_nothing_of_its_callers_alive():
    """The check for a driving Trainer walks the call stack on every training forward; reading a frame's locals (before Python 3.13)
    leaves a snapshot on the frame that holds them, so it must look only into Trainer's own frames: a tensor the caller deletes after
    the forward is freed at once (a model deleted between benchmark rows stayed in GPU memory before)."""
    import gc
    import weakref
    import transformers.trainer  # noqa: F401  the walk runs only once Trainer is imported
    model = prepare_smt(ARCHS["llama"](), SMTConfig(target_modules=["q_proj"], **MW)).train()
    def caller():
        held = torch.zeros(8)
        alive = weakref.ref(held)
        model(**batches(1)[0])
        del held; gc.collect()
        return alive() is None
    assert caller()


def test_a_trainer_method_defined_in_a_mixin_is_recognised():
    "The stack walk looks into Trainer methods only (found by code object): those a subclass takes from a mixin count too."
    from smt_nb.adapters import _trainer_method_codes
    class SavesItself:
        def _save(self, output_dir=None, state_dict=None): pass
    class MixedTrainer(SavesItself, Trainer): pass
    assert SavesItself._save.__code__ in _trainer_method_codes(Trainer) and Trainer.training_step.__code__ in _trainer_method_codes(Trainer)
    del MixedTrainer
