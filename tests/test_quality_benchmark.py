"""benchmarks/quality.py end to end on CPU: a tiny random Llama with SmolLM2's tokenizer, a synthetic BIG-bench task, every verb."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from smt_nb.data import convert_smollm2

spec = importlib.util.spec_from_file_location("quality", Path(__file__).parents[1] / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(spec); spec.loader.exec_module(quality)


def test_plan_covers_every_method_seed_and_budget_once():
    jobs = quality.plan()
    names = [quality.job_name(**j) for j in jobs]
    assert len(names) == len(set(names))
    per_task = 1 + len(quality.SEEDS) * (len(quality.METHODS) - 1 + 2 * (len(quality.BUDGET_RANKS) - 1))
    assert len(jobs) == len(quality.TASKS) * per_task
    assert {quality.job_name(**j) for j in jobs if j["rank"] == 32} == {f"{t}_{m}_r32_s{s}" for t in quality.TASKS
                                                                        for m in ("lora", "smt_gw") for s in quality.SEEDS}
    first_task = jobs[:per_task]  # base, then every method at the main budget, then the other budgets
    assert first_task[0]["method"] == "base" and {j["task"] for j in first_task} == {"strategyqa"}
    main = 1 + len(quality.SEEDS) * (len(quality.METHODS) - 1)
    assert all(j["rank"] in (quality.MAIN_RANK, None) for j in first_task[:main]) and all(j["rank"] != quality.MAIN_RANK for j in first_task[main:])


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory):
    "A 2-layer Llama (hidden 64) saved with SmolLM2's chat tokenizer: 20 blocks of 64x64 over the seven linear types."
    folder = tmp_path_factory.mktemp("tiny_smol")
    tok = AutoTokenizer.from_pretrained(convert_smollm2())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder); tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bigbench_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bb")
    task = root / "bigbench" / "benchmark_tasks" / "strategyqa"
    task.mkdir(parents=True)
    examples = [{"input": f"Is {i} even?", "target_scores": {"Yes": int(i % 2 == 0), "No": int(i % 2 == 1)}} for i in range(40)]
    (task / "task.json").write_text(json.dumps({"examples": examples}))
    return root


def test_sweep_job_files_and_report(tiny_model_folder, bigbench_folder, tmp_path):
    out = tmp_path / "quality"
    args = ["sweep", "--bigbench", str(bigbench_folder), "--model", str(tiny_model_folder), "--out", str(out), "--device", "cpu",
            "--tasks", "strategyqa", "--seeds", "0", "--ranks", "4,8", "--methods", "base,lora,smt_gw,smt_random",
            "--sizes", "6,6,12", "--epochs", "1", "--workers", "2"]
    quality.main(args)
    results = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(results) == {"strategyqa_base", "strategyqa_lora_r8_s0", "strategyqa_smt_gw_r8_s0", "strategyqa_smt_random_r8_s0",
                            "strategyqa_lora_r4_s0", "strategyqa_smt_gw_r4_s0"}, \
        "\n".join(p.read_text()[-1500:] for p in (out / "logs").glob("*.log") if p.stem not in results)  # why a job failed
    for name, r in results.items():
        assert (r["n_test"], r["n_val"], r["n_train"]) == (6, 6, 12) and 0 <= r["test"] <= 1
        if name != "strategyqa_base":
            grid = quality.LR_GRID["smt" if r["method"].startswith("smt") else r["method"]]
            assert list(map(float, r["val_by_lr"])) == grid
            assert r["val"] == max(r["val_by_lr"].values()) == r["val_by_lr"][str(r["lr"])]  # the rate is picked on validation
    # equal budgets: SMT trains whole 64x64 blocks, as many as fit into LoRA's count of trainable values
    for rank in (4, 8):
        lora, smt = results[f"strategyqa_lora_r{rank}_s0"]["trainable"], results[f"strategyqa_smt_gw_r{rank}_s0"]["trainable"]
        assert smt % 64**2 == 0 and 0 <= lora - smt < 64**2 and smt > 0
    # a second sweep finds everything done and runs nothing
    before = {p: p.stat().st_mtime for p in out.glob("*.json")}
    quality.main(args)
    assert before == {p: p.stat().st_mtime for p in out.glob("*.json")}
    quality.main(["report", "--out", str(out)])
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 2 + 6 and table[2].startswith("| strategyqa | base |")
    assert (out / "quality.png").stat().st_size > 10_000


def test_compare_finds_exact_reruns_and_moved_means(tiny_model_folder, bigbench_folder, tmp_path):
    "A second sweep of the same jobs repeats them exactly (CPU is deterministic); `compare` says so, and flags a run that moved."
    def sweep(out):
        quality.main(["sweep", "--bigbench", str(bigbench_folder), "--model", str(tiny_model_folder), "--out", str(out), "--device", "cpu",
                      "--tasks", "strategyqa", "--seeds", "0,1", "--ranks", "8", "--methods", "smt_gw", "--sizes", "6,6,12", "--epochs", "1"])
        return quality.load_results(out)
    first, second = sweep(tmp_path / "a"), sweep(tmp_path / "b")
    assert len(first) == len(second) == 2
    assert all(quality.same_job(a, b) for a, b in zip(first, second))
    report = quality.compare(first, second)
    assert report.startswith("2 of 2 shared jobs repeated exactly.")
    row = [l for l in report.splitlines() if l.startswith("| strategyqa | smt_gw | 8 |")]
    assert len(row) == 1 and "| 2 | 2 |" in row[0] and row[0].endswith("| +0.0 | yes |")  # 2 jobs, 2 identical, same mean
    # another run where the seed-0 job scored 0.5 (50 points) higher: that job differs and the mean moves by 25 points
    moved = [dict(r, test=r["test"] + 0.5) if r["seed"] == 0 else r for r in second]
    report = quality.compare(first, moved)
    assert report.startswith("1 of 2 shared jobs repeated exactly.")
    spread = max(quality.mean_std([100 * r["test"] for r in rs])[1] for rs in (first, moved))
    assert f"| +25.0 | {'yes' if 25.0 <= spread else 'NO'} |" in report
