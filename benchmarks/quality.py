"""Quality: SmolLM2-135M-Instruct fine-tuned on a BIG-bench task with SMT (GW, AW, MW, random blocks), LoRA with the same number of
trainable values, and full fine-tuning. Multiple-choice accuracy by choice log-likelihood; learning rate picked on a validation split
from a small grid, never on the test split; test accuracy reported for the picked rate.

The task files come from the bigbench sdist (`pip download --no-deps --no-binary :all: bigbench`, then extract e.g.
bigbench/benchmark_tasks/strategyqa/task.json). They carry a canary: local benchmarks only, never publish weights trained on them.
Usage: python benchmarks/quality.py --task-json PATH/task.json --model MODEL [--lora-rank 8] [--seed 0] [--json out.json]
"""
import argparse
import json
import random
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

from smt_nb.core import SMTConfig, prepare_smt
from smt_nb.data import bigbench_examples, bigbench_question as question, encode_chat
from smt_nb.train import smt_parameters

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR_GRID = {"full": [1e-5, 3e-5, 1e-4], "lora": [3e-4, 1e-3, 3e-3], "smt": [1e-3, 3e-3, 1e-2]}


def splits(examples, n_test, n_val, max_train):
    "A fixed split (independent of the training seed): test, validation, train."
    ex = list(examples)
    random.Random(1234).shuffle(ex)
    return ex[n_val + n_test:][:max_train], ex[n_test:n_test + n_val], ex[:n_test]


def batches(rows, tok, bs, shuffle, seed):
    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")
    order = list(range(len(rows)))
    if shuffle: random.Random(seed).shuffle(order)
    for i in range(0, len(order), bs):
        yield {k: v.cuda() for k, v in collate([rows[j] for j in order[i:i + bs]]).items()}


@torch.no_grad()
def accuracy(model, tok, examples, bs=64):
    "Share of examples whose correct choice has the highest summed log-likelihood as the assistant's answer."
    model.eval()
    rows, owner = [], []
    for k, e in enumerate(examples):
        for c in e["choices"]:
            rows.append(encode_chat(tok, question(e), c, max_length=256)); owner.append((k, c))
    scores = []
    for b in batches(rows, tok, bs, False, 0):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        labels = b["labels"][:, 1:]
        lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        scores += (lp * (labels != -100)).sum(-1).tolist()
    best = {}
    for (k, c), s in zip(owner, scores):
        if k not in best or s > best[k][1]: best[k] = (c, s)
    return sum(best[k][0] == e["answer"] for k, e in enumerate(examples)) / len(examples)


def train(model, params, rows, tok, lr, epochs, bs, seed):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = epochs * ((len(rows) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps))
    model.train()
    for ep in range(epochs):
        for b in batches(rows, tok, bs, True, seed + ep):
            model(**b).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step(); sched.step(); opt.zero_grad(set_to_none=True)


def build(method, model_path, rank, train_rows, tok, seed):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).cuda()
    if method == "full": return model, list(model.parameters())
    if method == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LINEAR))
        return model, [p for p in model.parameters() if p.requires_grad]
    lora_values = rank * sum(m.in_features + m.out_features for n, m in model.named_modules() if n.split(".")[-1] in LINEAR)
    warm = list(batches(train_rows, tok, 16, True, seed))[:20]
    model = prepare_smt(model, SMTConfig(block_size=64, n_blocks=lora_values // 64**2, method=method.split("_")[1], warmup_steps=20,
                                         target_modules=LINEAR, seed=seed), dataloader=warm)
    return model, smt_parameters(model)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task-json", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="base,full,lora,smt_gw,smt_aw,smt_mw,smt_random")
    p.add_argument("--test", type=int, default=458)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--max-train", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token is None: tok.pad_token = tok.eos_token
    train_ex, val_ex, test_ex = splits(bigbench_examples(a.task_json), a.test, a.val, a.max_train)
    train_rows = [encode_chat(tok, question(e), e["answer"], max_length=256) for e in train_ex]
    out = dict(task=a.task_json.split("benchmark_tasks/")[-1].rsplit("/task.json", 1)[0], seed=a.seed, lora_rank=a.lora_rank,
               n_train=len(train_ex), n_val=len(val_ex), n_test=len(test_ex), device=torch.cuda.get_device_name(), methods={})
    for method in a.methods.split(","):
        t0 = time.time()
        if method == "base":
            model, _ = build("full", a.model, a.lora_rank, train_rows, tok, a.seed)
            r = dict(val=accuracy(model, tok, val_ex), test=accuracy(model, tok, test_ex), trainable=0)
        else:
            grid, runs = LR_GRID["smt" if method.startswith("smt") else method], {}
            for lr in grid:
                model, params = build(method, a.model, a.lora_rank, train_rows, tok, a.seed)
                train(model, params, train_rows, tok, lr, a.epochs, a.batch_size, a.seed)
                runs[lr] = dict(val=accuracy(model, tok, val_ex), test=accuracy(model, tok, test_ex))
                trainable = sum(p.numel() for p in params)
                del model, params; torch.cuda.empty_cache()
            best = max(grid, key=lambda lr: runs[lr]["val"])  # picked on validation only
            r = dict(lr=best, val=runs[best]["val"], test=runs[best]["test"], trainable=trainable, val_by_lr={str(k): v["val"] for k, v in runs.items()})
        r["seconds"] = time.time() - t0
        out["methods"][method] = r
        print(f"{method:<11} test {100 * r['test']:5.1f}  val {100 * r['val']:5.1f}  lr {r.get('lr', '-')}  trainable {r['trainable'] / 1e6:6.2f} M  "
              f"({r['seconds']:.0f} s)", flush=True)
        if a.json: open(a.json, "w").write(json.dumps(out, indent=1))  # after every method: a run cut short keeps what it finished


if __name__ == "__main__":
    main()
