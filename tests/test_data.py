"""Loaders on local files: the packaged SmolLM2, chatterbot-corpus, BIG-bench task files, chat encoding with answer-only labels."""
import json

import pytest
import torch

from smt_nb.data import (SMOLLM2, TooFewExamples, bigbench_examples, chatterbot_pairs, decode_whole, encode_chat, examples_needed,
                         find_bigbench_task, generate, instruction_dataset, load_model, make_dataloader, read_utf8, stop_token_ids)


@pytest.fixture(scope="module")
def smol():
    return load_model(SMOLLM2)


def test_smollm2_offline_is_the_real_model(smol):
    model, tok = smol
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert "Paris" in generate(model, tok, "What is the capital of France?", max_new_tokens=12)


def test_chatterbot_pairs():
    pairs = chatterbot_pairs()
    assert len(pairs) > 1900 and all(q and a for q, a in pairs)
    assert 0 < len(chatterbot_pairs(["science"])) < len(pairs)


def test_bigbench_task_files(tmp_path):
    task_dir = tmp_path / "bigbench" / "benchmark_tasks" / "multiemo" / "all_sentence_en"
    task_dir.mkdir(parents=True)
    (task_dir / "task.json").write_text(json.dumps({"examples": [
        {"input": "Great hotel.", "target_scores": {"positive": 1, "negative": 0, "neutral": 0}},
        {"input": "No answer here", "target": "free text"}]}))
    found = find_bigbench_task(tmp_path, "multiemo/all_sentence_en")
    assert bigbench_examples(found) == [{"input": "Great hotel.", "choices": ["positive", "negative", "neutral"], "answer": "positive"}]
    (task_dir / "task.json").write_text(json.dumps({"examples": [{"input": "x", "target": "y"}]}))
    with pytest.raises(ValueError, match="no multiple-choice examples"):
        bigbench_examples(found)


def test_answer_only_labels_and_batches(smol):
    model, tok = smol
    ex = encode_chat(tok, "what is a wavelength", "wavelength is the inverse of frequency.")
    answer = tok.decode([i for i, l in zip(ex["input_ids"], ex["labels"]) if l != -100])
    assert answer.startswith("wavelength is the inverse of frequency.")
    prompt = tok.decode([i for i, l in zip(ex["input_ids"], ex["labels"]) if l == -100])
    assert "what is a wavelength" in prompt and "inverse" not in prompt
    ds = instruction_dataset(chatterbot_pairs(["science"]), tok, max_length=48, test_size=0.2)
    assert len(ds["train"]) > len(ds["test"]) > 0
    batch = next(iter(make_dataloader(ds["train"], tok, batch_size=3)))
    assert batch["input_ids"].shape == batch["labels"].shape and (batch["labels"] != -100).any()
    with torch.no_grad(): assert torch.isfinite(model(**batch).loss)


class Scripted:
    "Stands in for a model: `generate` returns the prompt and then `tokens`, and records the stop ids it was given."
    device, generation_config = torch.device("cpu"), None
    def __init__(self, tokens): self.tokens, self.asked = tokens, {}
    def generate(self, input_ids, **kw):
        self.asked = kw
        return torch.cat([input_ids, torch.tensor([self.tokens])], 1)


def test_generate_stops_at_the_turn_and_never_cuts_a_character(smol):
    tok = smol[1]
    smile = tok("Hi 😀😀", add_special_tokens=False)["input_ids"]
    assert tok.decode(smile[:-1]).endswith("\ufffd")                      # a byte-level cut inside the second emoji
    assert decode_whole(tok, smile[:-1]) == "Hi 😀" and decode_whole(tok, smile) == "Hi 😀😀" and decode_whole(tok, []) == ""
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(tok)
    cut = Scripted(smile[:-1])                                             # max_new_tokens reached mid-character
    assert generate(cut, tok, "Say hi") == "Hi 😀" and im_end in cut.asked["eos_token_id"]
    runs_on = Scripted(tok("Rome.", add_special_tokens=False)["input_ids"] + [im_end] + smile)  # past the end of its turn
    assert generate(runs_on, tok, "Capital of Italy?") == "Rome."


def test_dataloader_pins_memory_only_with_an_accelerator(smol):
    ds = instruction_dataset([("Hi?", "Hello.")] * 10, smol[1], max_length=64, test_size=0.2)
    assert make_dataloader(ds["train"], smol[1]).pin_memory == torch.accelerator.is_available()
    assert make_dataloader(ds["train"], smol[1], pin_memory=False).pin_memory is False


def test_read_utf8_names_the_line_and_byte(tmp_path):
    f = tmp_path / "cp1252.jsonl"
    f.write_bytes('{"q": "tea"}\n{"q": "café"}\n'.encode("cp1252"))
    with pytest.raises(ValueError, match=rf"cp1252.jsonl line 2 is not UTF-8: byte 0xe9 at byte offset 23 .*re-encode the file as UTF-8"):
        read_utf8(f)
    f.write_bytes("\ufeff{}".encode("utf-8"))  # a byte-order mark, as some editors write it
    assert read_utf8(f) == "{}"
    task = tmp_path / "task.json"
    task.write_bytes(b'{"examples": [{"input": "\xff", "target_scores": {"a": 1}}]}')
    with pytest.raises(ValueError, match="task.json line 1 is not UTF-8"):
        bigbench_examples(task)


def test_too_few_examples_says_how_many_and_what_to_change(smol):
    tok = smol[1]
    assert [examples_needed(t) for t in (0.1, 0.5, 0.9, 1, 32)] == [2, 2, 10, 2, 33]
    for bad in (0, 1.0, -1, "10%"):
        with pytest.raises(ValueError, match="test_size must be"):
            examples_needed(bad)
    with pytest.raises(TooFewExamples, match=r"the data holds 1 example; training needs at least 2 \(one or more to train on, and 10% of "
                                             r"them, at least 1, held out for the evaluation loss\): add examples"):
        instruction_dataset([("Hi?", "Hello.")], tok)
    pairs = [(f"What is {i} plus {i}?", f"{2 * i}.") for i in range(20)]
    with pytest.raises(TooFewExamples) as e:
        instruction_dataset(pairs, tok, max_length=4)
    assert (e.value.total, e.value.kept, e.value.needed) == (20, 0, 2)
    fits = e.value.suggested_max_length
    assert fits % 8 == 0 and sum(len(encode_chat(tok, q, a, 10**6)["input_ids"]) <= fits for q, a in pairs) >= 18
    assert "every one of the 20 examples in qa.jsonl is longer than --max-length 4 tokens before its answer starts" in \
        e.value.describe("qa.jsonl", "--max-length {}")
    assert f"use max_length={fits} (the whole of 90% of them fits" in str(e.value)
    ds = instruction_dataset(pairs, tok, max_length=fits)  # the suggestion works
    assert len(ds["train"]) + len(ds["test"]) == 20
