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
    "Tokens/s and peak memory relative to the frozen floor for every method."
    res = data["results"]
    names = [r["method"] for r in res]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.barh(names, [r["speed_vs_floor"] for r in res]); a.axvline(0.9, color="red", ls="--", lw=0.8, label="goal 0.9")
    a.set_xlabel("tokens/s ÷ floor"); a.invert_yaxis(); a.legend(fontsize=7)
    b.barh(names, [r["memory_vs_floor"] for r in res]); b.axvline(1.1, color="red", ls="--", lw=0.8, label="goal 1.1")
    b.set_xlabel("peak memory ÷ floor"); b.invert_yaxis(); b.legend(fontsize=7)
    fig.suptitle(f"{data['meta']['model']}, {data['meta']['batch']}, {data['meta']['device']}", fontsize=9)
    fig.tight_layout()
    return fig


def load_layer_runs():
    return {p.stem.replace("layer_", ""): json.loads(p.read_text()) for p in sorted(RESULTS.glob("layer_*.json"))}


if __name__ == "__main__":
    layer_figure(load_layer_runs()).savefig(RESULTS / "layer.png", dpi=110)
    model_figure(json.loads((RESULTS / "model.json").read_text())).savefig(RESULTS / "model.png", dpi=110)
    print("wrote", RESULTS / "layer.png", RESULTS / "model.png")
