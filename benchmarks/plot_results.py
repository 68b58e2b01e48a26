"""Draw the committed GPU results (benchmarks/results/*.json) as PNGs next to them. No GPU needed.
Usage: python benchmarks/plot_results.py"""
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).parent / "results"
LAYER_KEYS = ["dense", "lora", "smt_inplace", "smt_reference", "smt_pytorch"]


def layer_figure(runs: dict):
    "Grouped bars: step time / frozen floor for each shape and density, one panel per benchmark run."
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 3.6), squeeze=False)
    for ax, (name, data) in zip(axes[0], runs.items()):
        res = data["results"]
        labels = [f"{r['shape'][0]}x{r['shape'][1]}\n{r['density']:.0%}" for r in res]
        w = 0.8 / len(LAYER_KEYS)
        for i, k in enumerate(LAYER_KEYS):
            ax.bar([j + i * w for j in range(len(res))], [r["ratio"][k] for r in res], w, label=k)
        ax.axhline(1.0, color="black", lw=0.8); ax.axhline(1.06, color="red", lw=0.8, ls="--", label="goal 1.06")
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(res))], labels, fontsize=8)
        ax.set_ylabel("step time / frozen floor"); ax.set_title(f"one layer, bf16, 8192 tokens, b=256 ({name})", fontsize=9)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def model_figure(data: dict):
    "Tokens/s and peak memory relative to the frozen floor for every method, eager and compiled side by side."
    res = data["results"]
    keys = list(dict.fromkeys(r["key"] for r in res))
    names = {r["key"]: r["method"].removesuffix(" compiled") for r in res}
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.55 * len(keys) + 1.6))
    for ax, metric, goal, label in ((axes[0], "speed_vs_floor", 0.9, "tokens/s ÷ floor (higher is better)"),
                                    (axes[1], "memory_vs_floor", 1.12, "peak memory ÷ floor (lower is better)")):
        for shift, compiled, colour in ((-0.2, False, "tab:blue"), (0.2, True, "tab:orange")):
            rows = {r["key"]: r for r in res if r["compiled"] == compiled}
            ys = [i + shift for i, k in enumerate(keys) if k in rows]
            ax.barh(ys, [rows[k][metric] for k in keys if k in rows], 0.4, color=colour,
                    label="torch.compile" if compiled else "eager")
        ax.axvline(goal, color="red", ls="--", lw=0.8, label=f"goal {goal}")
        ax.set_yticks(range(len(keys)), [names[k] for k in keys], fontsize=8); ax.invert_yaxis()
        ax.set_xlabel(label); ax.legend(fontsize=7)
    meta = data["meta"]
    fig.suptitle(f"{meta['model']}, {meta['batch']}, {meta['device']} — each bar relative to the floor of its own mode", fontsize=9)
    fig.tight_layout()
    return fig


def load_layer_runs():
    return {p.stem.replace("layer_", ""): json.loads(p.read_text()) for p in sorted(RESULTS.glob("layer_*.json"))}


if __name__ == "__main__":
    layer_figure(load_layer_runs()).savefig(RESULTS / "layer.png", dpi=110)
    for shape in ("1b", "8b"):
        model_figure(json.loads((RESULTS / f"model_{shape}.json").read_text())).savefig(RESULTS / f"model_{shape}.png", dpi=110)
    print("wrote", RESULTS / "layer.png", RESULTS / "model_1b.png", RESULTS / "model_8b.png")
