"""Quality: SmolLM2-135M-Instruct fine-tuned on BIG-bench tasks with SMT (GW, AW, MW, random blocks), LoRA with the same number of
trainable values, and full fine-tuning. Multiple-choice accuracy by choice log-likelihood; the learning rate is picked on a validation
split from a small grid, never on the test split; the test accuracy of the picked rate is reported.

Four verbs:
  job     one (task, method, budget, seed) -> one JSON file
  sweep   every job of the plan not yet in --out, several at once on one GPU (the model is small: one job alone leaves the GPU idle)
  report  the table (mean ± std over seeds) and the figure from the job files
  compare two runs of the same jobs (a sweep into another folder): which repeated exactly, do the means agree within the spread?

The task files come from the bigbench sdist (`pip download --no-deps --no-binary :all: bigbench`, then `tar xzf bigbench-1.0.0.tar.gz`);
pass its folder as --bigbench. They carry a canary: local benchmarks only, never publish weights trained on them.

  python benchmarks/quality.py sweep --bigbench bigbench-1.0.0 --model <SmolLM2 folder> --out benchmarks/results/quality --workers 8
  python benchmarks/quality.py report --out benchmarks/results/quality
  python benchmarks/quality.py compare --out benchmarks/results/quality --rerun /tmp/rerun
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR_GRID = {"full": [3e-5, 1e-4, 3e-4], "lora": [1e-4, 3e-4, 1e-3], "smt": [3e-4, 1e-3, 3e-3]}
# name -> (BIG-bench task folder, test examples, validation examples, most training examples)
TASKS = {"strategyqa": ("strategyqa", 458, 200, 2000), "multiemo": ("multiemo/all_sentence_en", 1000, 200, 2000)}
METHODS = ["base", "full", "lora", "smt_gw", "smt_aw", "smt_mw", "smt_random", "smt_gw_warmup"]
WARMUP_LR = 1e-4  # smt_gw_warmup: the official code's warm-up takes full fine-tuning AdamW steps (here at its top fine-tuning rate)
MAIN_RANK, BUDGET_RANKS, SEEDS = 8, [4, 8, 32], [0, 1, 2]


# ---------------------------------------------------------------- the plan
def job_name(task, method, rank, seed):
    "File stem of one job; the base model is trained by nothing (no seed, no budget), full fine-tuning has no budget."
    if method == "base": return f"{task}_base"
    if method == "full": return f"{task}_full_s{seed}"
    return f"{task}_{method}_r{rank}_s{seed}"


def plan(tasks=tuple(TASKS), seeds=SEEDS, ranks=BUDGET_RANKS, methods=METHODS):
    """Every job, task by task, most important first: all methods at the main budget (LoRA r8), seed by seed;
    then SMT(GW) and LoRA at the other budgets (does either plateau as the budget grows?). `methods` keeps only those."""
    jobs = []
    for t in tasks:
        jobs.append(dict(task=t, method="base", rank=None, seed=None))
        jobs += [dict(task=t, method=m, rank=None if m == "full" else MAIN_RANK, seed=s) for s in seeds for m in METHODS[1:]]
        jobs += [dict(task=t, method=m, rank=r, seed=s) for s in seeds for r in ranks if r != MAIN_RANK for m in ("lora", "smt_gw")]
    return [j for j in jobs if j["method"] in methods]


# ---------------------------------------------------------------- one job
def splits(examples, n_test, n_val, max_train):
    "A fixed split (independent of the training seed): test, validation, train."
    ex = list(examples)
    random.Random(1234).shuffle(ex)
    return ex[n_val + n_test:][:max_train], ex[n_test:n_test + n_val], ex[:n_test]


def batches(rows, tok, bs, shuffle, seed, device):
    from transformers import DataCollatorForSeq2Seq
    from smt_nb.selection import to_device
    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")
    order = list(range(len(rows)))
    if shuffle: random.Random(seed).shuffle(order)
    for i in range(0, len(order), bs):
        yield to_device(collate([rows[j] for j in order[i:i + bs]]), device)


def accuracy(model, tok, examples, device, bs=32):
    "Share of examples whose correct choice has the highest summed log-likelihood as the assistant's answer."
    import torch
    from smt_nb.data import bigbench_question, encode_chat
    model.eval()
    rows, owner = [], []
    for k, e in enumerate(examples):
        for c in e["choices"]:
            rows.append(encode_chat(tok, bigbench_question(e), c, max_length=256)); owner.append((k, c))
    scores = []
    with torch.no_grad():
        for b in batches(rows, tok, bs, False, 0, device):
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()  # (B, T-1, V)
            labels = b["labels"][:, 1:]                                                                          # (B, T-1)
            lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
            scores += (lp * (labels != -100)).sum(-1).tolist()
    best = {}
    for (k, c), s in zip(owner, scores):
        if k not in best or s > best[k][1]: best[k] = (c, s)
    return sum(best[k][0] == e["answer"] for k, e in enumerate(examples)) / len(examples)


def train(model, params, rows, tok, lr, epochs, bs, seed, device):
    "AdamW without weight decay, 10 % linear warm-up then linear decay, gradient clipping at 1."
    import torch
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = epochs * ((len(rows) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps))
    model.train()
    for ep in range(epochs):
        for b in batches(rows, tok, bs, True, seed + ep, device):
            model(**b).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step(); sched.step(); opt.zero_grad(set_to_none=True)


def build(method, model_path, rank, train_rows, tok, seed, device, block_size=64):
    "The model ready to train and its trainable parameters; SMT and LoRA get the same number of trainable values."
    import torch
    from transformers import AutoModelForCausalLM
    from smt_nb.blocks import blocks_for_lora_rank
    from smt_nb.core import SMTConfig, find_targets, prepare_smt
    from smt_nb.train import smt_parameters
    torch.manual_seed(seed or 0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    if method in ("base", "full"): return model, list(model.parameters())
    if method == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LINEAR))
        return model, [p for p in model.parameters() if p.requires_grad]
    warm = list(batches(train_rows, tok, 16, True, seed, device))[:20]
    shapes = [(m.out_features, m.in_features) for m in find_targets(model, LINEAR).values()]
    steps = dict(warmup_lr=WARMUP_LR) if method.endswith("_warmup") else {}  # else the default: no steps, the pretrained weights scored
    cfg = SMTConfig(block_size=block_size, n_blocks=blocks_for_lora_rank(rank, shapes, block_size), method=method.split("_")[1],
                    warmup_steps=20, target_modules=LINEAR, seed=seed, **steps)
    model = prepare_smt(model, cfg, dataloader=warm)
    return model, smt_parameters(model)


def run_job(task, method, rank, seed, bigbench, model_path, epochs=2, batch_size=16, sizes=None, device=None):
    "Train with every learning rate of the method's grid; pick the rate on validation; return all accuracies."
    import torch
    from transformers import AutoTokenizer
    from smt_nb.data import bigbench_examples, bigbench_question, encode_chat, find_bigbench_task
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights and optimizer states; TF32 tensor-core matmuls (plain fp32 ones leave them idle)
    folder, n_test, n_val, max_train = TASKS[task][0], *(sizes or TASKS[task][1:])
    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None: tok.pad_token = tok.eos_token
    train_ex, val_ex, test_ex = splits(bigbench_examples(find_bigbench_task(bigbench, folder)), n_test, n_val, max_train)
    train_rows = [encode_chat(tok, bigbench_question(e), e["answer"], max_length=256) for e in train_ex]
    t0 = time.time()
    out = dict(task=task, method=method, rank=rank, seed=seed, n_train=len(train_ex), n_val=len(val_ex), n_test=len(test_ex),
               epochs=epochs, batch_size=batch_size, device=torch.cuda.get_device_name() if device == "cuda" else device)
    if method == "base":
        model, _ = build("base", model_path, rank, train_rows, tok, seed, device)
        out.update(val=accuracy(model, tok, val_ex, device), test=accuracy(model, tok, test_ex, device), trainable=0)
    else:
        val_by_lr, best = {}, None
        for lr in LR_GRID["smt" if method.startswith("smt") else method]:
            model, params = build(method, model_path, rank, train_rows, tok, seed, device)
            train(model, params, train_rows, tok, lr, epochs, batch_size, seed, device)
            val_by_lr[str(lr)] = accuracy(model, tok, val_ex, device)
            if best is None or val_by_lr[str(lr)] > best["val"]:  # picked on validation only (ties: the smaller rate)
                best = dict(lr=lr, val=val_by_lr[str(lr)], test=accuracy(model, tok, test_ex, device))  # test only for the leader
            trainable = sum(p.numel() for p in params)
            del model, params
            if device == "cuda": torch.cuda.empty_cache()
        out.update(**best, trainable=trainable, val_by_lr=val_by_lr)
    out["seconds"] = time.time() - t0
    return out


# ---------------------------------------------------------------- many jobs on one GPU
def sweep(jobs, out_dir, workers, job_args):
    "Run the jobs whose file is missing, `workers` at a time, each in its own process; a sweep cut short resumes where it stopped."
    out_dir = Path(out_dir); out_dir.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not (out_dir / (job_name(**j) + ".json")).exists()]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} jobs already done; running {len(todo)} with {workers} workers", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    running, t0 = {}, time.time()
    while todo or running:
        while todo and len(running) < workers:
            j = todo.pop(0)
            name = job_name(**j)
            args = [sys.executable, __file__, "job", "--task", j["task"], "--method", j["method"], "--out", str(out_dir / (name + ".json")), *job_args]
            if j["rank"] is not None: args += ["--lora-rank", str(j["rank"])]
            if j["seed"] is not None: args += ["--seed", str(j["seed"])]
            (out_dir / "logs").mkdir(exist_ok=True)
            running[name] = subprocess.Popen(args, stdout=open(out_dir / "logs" / (name + ".log"), "w"), stderr=subprocess.STDOUT, env=env)
        for name, proc in list(running.items()):
            if proc.poll() is None: continue
            del running[name]
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see logs/{name}.log)"
            print(f"[{time.time() - t0:6.0f} s] {name}: {status}", flush=True)
        time.sleep(1)
    print(f"sweep finished in {time.time() - t0:.0f} s", flush=True)


# ---------------------------------------------------------------- the report
def load_results(out_dir):
    return [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("*.json"))]


def mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summary(results):
    "{(task, method, rank): dict(test, test_std, val, n_seeds, trainable, seconds, lrs)} with accuracies in %."
    groups = {}
    for r in results: groups.setdefault((r["task"], r["method"], r["rank"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        (t, t_sd), (v, _) = mean_std([100 * r["test"] for r in rs]), mean_std([100 * r["val"] for r in rs])
        out[key] = dict(test=t, test_std=t_sd, val=v, n_seeds=len(rs), trainable=rs[0]["trainable"], seconds=sum(r["seconds"] for r in rs),
                        lrs=sorted({r["lr"] for r in rs if "lr" in r}), tests=[100 * r["test"] for r in rs])
    return out


def row_order(key):
    "Sort key of a summary row (task, method, rank): per task, the main budget (and base, full) first, then the other budgets."
    task, method, rank = key
    return (task, rank != MAIN_RANK and rank is not None, rank or 0, METHODS.index(method))


def table(results):
    "Markdown: one row per method at the main budget, then the budget rows; test accuracy mean ± std over seeds."
    s = summary(results)
    lines = ["| task | method | LoRA-rank budget | trainable (M) | test acc. % (mean ± std) | seeds | val acc. % | picked lr | job time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(s, key=row_order):
        r = s[k]
        lines.append(f"| {k[0]} | {k[1]} | {k[2] or '-'} | {r['trainable'] / 1e6:.2f} | {r['test']:.1f} ± {r['test_std']:.1f} | "
                     f"{r['n_seeds']} | {r['val']:.1f} | {', '.join(f'{lr:g}' for lr in r['lrs']) or '-'} | {r['seconds'] / r['n_seeds']:.0f} |")
    return "\n".join(lines)


def same_job(a, b):
    "Did two runs of a job give the same numbers (every accuracy, the picked rate, the budget)? Wall time may differ."
    return {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def result_name(r):
    "The job name of a result (its file stem)."
    return job_name(r["task"], r["method"], r["rank"], r["seed"])


def shared_jobs(results_a, results_b):
    "[(a, b)]: the results of the jobs that both runs have, paired by job."
    b_by_name = {result_name(r): r for r in results_b}
    return [(a, b_by_name[result_name(a)]) for a in results_a if result_name(a) in b_by_name]


def compare(results_a, results_b):
    """Markdown: two runs of the jobs they share, group by group — mean ± std of each, the difference of the means against
    the larger seed-to-seed spread, and how many jobs repeated exactly."""
    pairs = shared_jobs(results_a, results_b)
    identical = [same_job(a, b) for a, b in pairs]
    sa, sb = summary([a for a, _ in pairs]), summary([b for _, b in pairs])
    lines = [f"{sum(identical)} of {len(pairs)} shared jobs repeated exactly.", "",
             "| task | method | LoRA-rank budget | jobs | identical | run A % | run B % | B − A | within spread |", "|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(sa, key=row_order):
        same = sum(i for (a, _), i in zip(pairs, identical) if (a["task"], a["method"], a["rank"]) == k)
        d, spread = sb[k]["test"] - sa[k]["test"], max(sa[k]["test_std"], sb[k]["test_std"])
        lines.append(f"| {k[0]} | {k[1]} | {k[2] or '-'} | {sa[k]['n_seeds']} | {same} | {sa[k]['test']:.1f} ± {sa[k]['test_std']:.1f} | "
                     f"{sb[k]['test']:.1f} ± {sb[k]['test_std']:.1f} | {d:+.1f} | {'yes' if abs(d) <= spread + 1e-9 else 'NO'} |")
    return "\n".join(lines)


def main_budget_key(task, method):
    "Summary key of a method at the main budget (base and full fine-tuning have no budget)."
    return (task, method, None if method in ("base", "full") else MAIN_RANK)


def figure(results):
    "Per task: test accuracy of every method at the main budget (bars: mean, dots: seeds); accuracy against budget for SMT(GW) and LoRA."
    import matplotlib.pyplot as plt
    s = summary(results)
    tasks = [t for t in TASKS if any(k[0] == t for k in s)]
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 3.6 * len(tasks)), squeeze=False)
    for (a, b), t in zip(axes, tasks):
        keys = [main_budget_key(t, m) for m in METHODS if main_budget_key(t, m) in s]
        for i, k in enumerate(keys):
            a.bar(i, s[k]["test"], yerr=s[k]["test_std"], color="C1" if k[1] == "smt_gw" else "C0" if k[1] == "lora" else "0.6", capsize=3)
            a.plot([i] * len(s[k]["tests"]), s[k]["tests"], "k.", ms=4)
        a.set_xticks(range(len(keys)), [k[1] for k in keys], fontsize=8, rotation=25, ha="right")  # eight names side by side
        lo = min(min(s[k]["tests"]) for k in keys)
        a.set_ylim(max(0, lo - 5), None); a.set_ylabel("test accuracy %")
        a.set_title(f"{t}: every method at LoRA-r{MAIN_RANK}'s trainable values (bars ± std, dots = seeds)", fontsize=9)
        ranks = sorted({k[2] for k in s if k[0] == t and k[1] in ("lora", "smt_gw")})
        if len(ranks) < 2:
            b.axis("off"); b.text(0.5, 0.5, f"{t}: one budget run so far (LoRA-r{ranks[0] if ranks else '-'})", ha="center", fontsize=9)
            continue
        for m, c in (("lora", "C0"), ("smt_gw", "C1")):
            ks = sorted((k for k in s if k[0] == t and k[1] == m), key=lambda k: k[2])
            b.errorbar([k[2] for k in ks], [s[k]["test"] for k in ks], yerr=[s[k]["test_std"] for k in ks], marker="o", capsize=3, color=c, label=m)
        for m, ls in (("full", "--"), ("base", ":")):
            if (t, m, None) in s: b.axhline(s[(t, m, None)]["test"], color="k", ls=ls, lw=0.8, label=m)
        values = {k[2]: s[k]["trainable"] for k in s if k[0] == t and k[1] == "lora"}
        b.set_xscale("log"); b.minorticks_off()
        b.set_xticks(ranks, [f"LoRA r{r}\n{values.get(r, 0) / 1e6:.2f} M values" for r in ranks], fontsize=8)
        b.set_ylabel("test accuracy %"); b.legend(fontsize=7); b.set_title(f"{t}: accuracy against budget (mean ± std over seeds)", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- command line
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    for verb in ("job", "sweep"):
        q = sub.add_parser(verb)
        q.add_argument("--bigbench", required=True, help="the unpacked bigbench sdist (any folder above benchmark_tasks/)")
        q.add_argument("--model", required=True, help="a causal LM folder or hub name (SmolLM2-135M-Instruct for the committed results)")
        q.add_argument("--out", required=True)
        q.add_argument("--epochs", type=int, default=2)
        q.add_argument("--batch-size", type=int, default=16)
        q.add_argument("--sizes", default=None, help="test,val,max_train instead of the task's (small runs for testing)")
        q.add_argument("--device", default=None)
    q = sub.choices["job"]
    q.add_argument("--task", choices=list(TASKS), required=True)
    q.add_argument("--method", choices=METHODS, required=True)
    q.add_argument("--lora-rank", type=int, default=MAIN_RANK)
    q.add_argument("--seed", type=int, default=0)
    q = sub.choices["sweep"]
    q.add_argument("--workers", type=int, default=1)
    q.add_argument("--tasks", default=",".join(TASKS))
    q.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    q.add_argument("--ranks", default=",".join(map(str, BUDGET_RANKS)))
    q.add_argument("--methods", default=",".join(METHODS))
    q = sub.add_parser("report")
    q.add_argument("--out", required=True)
    q = sub.add_parser("compare", help="two runs of the same jobs: do they agree?")
    q.add_argument("--out", required=True, help="run A (e.g. the committed results)")
    q.add_argument("--rerun", required=True, help="run B: a folder of job files written by another sweep")
    a = p.parse_args(argv)
    if a.verb == "job":
        sizes = tuple(int(x) for x in a.sizes.split(",")) if a.sizes else None
        rank = None if a.method in ("base", "full") else a.lora_rank
        seed = None if a.method == "base" else a.seed
        r = run_job(a.task, a.method, rank, seed, a.bigbench, a.model, a.epochs, a.batch_size, sizes, a.device)
        Path(a.out).write_text(json.dumps(r, indent=1))
        print(f"{job_name(a.task, a.method, rank, seed)}: test {100 * r['test']:.1f} val {100 * r['val']:.1f} lr {r.get('lr', '-')} ({r['seconds']:.0f} s)")
    elif a.verb == "sweep":
        jobs = plan(a.tasks.split(","), [int(x) for x in a.seeds.split(",")], [int(x) for x in a.ranks.split(",")], a.methods.split(","))
        job_args = ["--bigbench", a.bigbench, "--model", a.model, "--epochs", str(a.epochs), "--batch-size", str(a.batch_size)]
        job_args += (["--sizes", a.sizes] if a.sizes else []) + (["--device", a.device] if a.device else [])
        sweep(jobs, a.out, a.workers, job_args)
    elif a.verb == "compare":
        print(compare(load_results(a.out), load_results(a.rerun)))
    else:
        import matplotlib; matplotlib.use("Agg")
        results = load_results(a.out)
        (Path(a.out) / "table.md").write_text(table(results) + "\n")
        figure(results).savefig(Path(a.out) / "quality.png", dpi=110)
        print(table(results))


if __name__ == "__main__":
    main()
