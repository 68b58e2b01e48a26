"""Draw a benchmarks/model_moe.py JSON as a PNG: tokens/s ÷ the floor of the same mode for every method, eager and compiled bars side by
side (only the modes the run has), with peak memory ÷ floor beside it when the run had a GPU; skipped rows are marked with their error,
and a peak that includes memory the row before left allocated (`leftover_gib`, recorded by model_moe.py) is hatched and says how much.
No GPU needed.
Usage: python benchmarks/plot_moe.py benchmarks/results/model_moe.json [benchmarks/results/model_moe.png]
(plot_results.model_figure draws the dense runs the same way, but it cannot take skipped rows or CPU runs without peak memory.)
"""
import json
import sys
import textwrap
from pathlib import Path

import matplotlib
matplotlib.use("Agg")  # files only: no display on the benchmark machines
import matplotlib.pyplot as plt

MODES = ((False, "tab:blue", "eager"), (True, "tab:orange", "torch.compile"))


def inherited_gib(res: list[dict], row: dict) -> float:
    "GiB of `row`'s peak that the row run just before it left allocated (model_moe.py records that as the earlier row's `leftover_gib`)."
    i = next(k for k, r in enumerate(res) if r is row)
    return res[i - 1].get("leftover_gib", 0.0) if i else 0.0


def panel(ax, res: list[dict], keys: list[str], metric: str, label: str):
    """Horizontal bars of `metric` per method (one row of bars per key), eager above compiled when both ran (one centred bar when one
    mode did); a skipped row gets its error instead, and a memory bar whose peak includes an earlier row's leftovers is hatched."""
    modes = [m for m in MODES if any(r["compiled"] == m[0] for r in res)]
    height = 0.8 / len(modes)
    for j, (compiled, colour, mode) in enumerate(modes):
        shift = (j - (len(modes) - 1) / 2) * height
        rows = {r["key"]: r for r in res if r["compiled"] == compiled}
        done = [(i, rows[k]) for i, k in enumerate(keys) if k in rows and rows[k].get(metric) is not None]
        extra = {i: inherited_gib(res, r) if metric == "memory_vs_floor" else 0.0 for i, r in done}
        bars = ax.barh([i + shift for i, _ in done], [r[metric] for _, r in done], height, color=colour, label=mode)
        for (i, r), bar in zip(done, bars):
            note = f"\n  (includes {extra[i]:.1f} GiB\n  left by the row before)" if extra[i] else ""
            if note: bar.set_hatch("///"); bar.set_alpha(0.5)
            ax.text(r[metric], i + shift, f" {r[metric]:.2f}{note}", va="center", fontsize=7)
        for i, k in enumerate(keys):
            if k in rows and "skipped" in rows[k]:  # why there is no bar, at the bar's place
                why = textwrap.shorten(rows[k]["skipped"], 90, placeholder="…")
                ax.text(0.02, i + shift, "\n".join(textwrap.wrap(f"{mode}: skipped ({why})", 85)), va="center", fontsize=6,
                        color=colour, transform=ax.get_yaxis_transform())
    ax.axvline(1.0, color="black", lw=0.8)  # the floor of each mode
    ax.set_xlim(0, 1.3 * max([1.0] + [r[metric] for r in res if r.get(metric) is not None]))  # room for the value labels
    ax.set_xlabel(label); ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)  # below: never over a bar


def moe_figure(data: dict):
    "One figure per JSON: speed (and, with a GPU, memory) relative to the floor, methods top to bottom in run order."
    res = data["results"]
    keys = list(dict.fromkeys(r["key"] for r in res))
    names = {r["key"]: f"{r['method'].removesuffix(' compiled')}\n({r['trainable']:,} trainable)" if r.get("trainable") is not None
             else r["method"].removesuffix(" compiled") for r in res}
    panels = [("speed_vs_floor", "tokens/s ÷ floor (higher is better)")]
    if any(r.get("memory_vs_floor") is not None for r in res): panels.append(("memory_vs_floor", "peak memory ÷ floor (lower is better)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 0.7 * len(keys) + 1.6), squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels):
        panel(ax, res, keys, metric, label)
        ax.set_yticks(range(len(keys)), [names[k] for k in keys], fontsize=7); ax.invert_yaxis()
    meta = data["meta"]
    title = f"{meta['model']}; {meta['batch']}, {meta['device']}, torch {meta['torch']} — each bar relative to the floor of its own mode"
    fig.suptitle("\n".join(textwrap.wrap(title, 60 * len(panels) + 40)), fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3): sys.exit(__doc__)
    src = Path(sys.argv[1])
    dst = Path(sys.argv[2]) if len(sys.argv) == 3 else src.with_suffix(".png")
    moe_figure(json.loads(src.read_text())).savefig(dst, dpi=110, bbox_inches="tight")
    print("wrote", dst)
