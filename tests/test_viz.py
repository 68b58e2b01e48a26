"""Figures explain themselves: what the red outlines are, which part of a selection is shown, panels in model order, colour bars in words.
Read from the matplotlib Figure objects (titles, legend texts, colour bar labels), on a selection shaped like the demo's (no model needed)."""
import re

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from smt_nb.blocks import STATISTICS, BlockGrid
from smt_nb.selection import SCORERS, Selection
from smt_nb.viz import (OVERVIEW_LABEL, TRAINED_LABEL, describe, matrices_by_blocks, plot_experts, plot_selection,
                        plot_selection_overview, score_label)

# blocks per layer: the most in layers 10, 0, 12, 1, 4 — ordering panels by count would give 10, 0, 12, 1, 4, …
BLOCKS_IN_LAYER = {10: 9, 0: 8, 12: 7, 1: 6, 4: 5, 7: 4, 20: 3, 25: 2, 29: 1, 3: 1}


def demo_like(method="gw", statistic="mean_abs", scores=True) -> Selection:
    "SmolLM2-135M's Q/K/V in 64×64 blocks (30 layers, 90 matrices); the blocks of a layer sit in its v_proj, then its q_proj."
    grids, blocks, sc = {}, {}, {}
    g = torch.Generator().manual_seed(0)
    for layer in range(30):
        for typ, rows in (("q_proj", 9), ("k_proj", 3), ("v_proj", 3)):
            name = f"model.layers.{layer}.self_attn.{typ}"
            grids[name] = BlockGrid(rows * 64, 576, 64)
            sc[name] = torch.rand(rows, 9, generator=g)
            blocks[name] = torch.zeros(0, 2, dtype=torch.long)
        k = BLOCKS_IN_LAYER.get(layer, 0)
        v, q = min(k, 3), k - min(k, 3)   # up to 3 blocks in v_proj (one per row), the rest in q_proj
        blocks[f"model.layers.{layer}.self_attn.v_proj"] = torch.tensor([[i, 0] for i in range(v)], dtype=torch.long).reshape(-1, 2)
        blocks[f"model.layers.{layer}.self_attn.q_proj"] = torch.tensor([[i, 1] for i in range(q)], dtype=torch.long).reshape(-1, 2)
    return Selection(blocks, grids, sc if scores else {}, dict(method=method, statistic=statistic))


def panels(fig): return [ax for ax in fig.axes if ax.images]                 # heatmaps; colour bars hold no image
def panel_names(fig): return [ax.get_title().split("\n")[0] for ax in panels(fig)]
def colour_bars(fig): return [im.colorbar for ax in panels(fig) for im in ax.images if im.colorbar is not None]
def layer_and_type(title):
    layer, typ = re.match(r"layers\.(\d+)\.self_attn\.(\w+)", title).groups()
    return int(layer), ["q_proj", "k_proj", "v_proj"].index(typ)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_legend_says_red_outline_is_a_trained_block():
    fig = plot_selection(demo_like(), chosen_only=True, max_panels=8)
    assert [t.get_text() for leg in fig.legends for t in leg.get_texts()] == [TRAINED_LABEL] == ["red outline: trained block"]


def test_subset_is_stated_with_its_numbers():
    sel = demo_like()
    fig = plot_selection(sel, chosen_only=True, max_panels=8)                    # the demo's call
    held = matrices_by_blocks(sel)
    shown = sum(len(sel.blocks[n]) for n in held[:8])
    assert (len(sel.grids), len(held), sel.n_blocks) == (90, 16, 46)
    assert fig.get_suptitle().split("\n") == [
        describe(sel), f"Shown: 8 of 90 target matrices (the 8 with the most blocks of the 16 matrices that hold any): {shown} of 46 blocks"]
    assert shown == 30


def test_subset_with_filter_and_first_panels():
    sel = demo_like()
    filtered = plot_selection(sel, filter=r"layers\.0\.")
    assert filtered.get_suptitle().split("\n")[1] == r"Shown: 3 of 90 target matrices (the matrices matching 'layers\.0\.'): 8 of 46 blocks"
    first = plot_selection(sel, max_panels=6)
    assert first.get_suptitle().split("\n")[1] == "Shown: 6 of 90 target matrices (the first 6, in model order): 14 of 46 blocks"
    small = Selection({n: sel.blocks[n] for n in list(sel.grids)[:3]}, {n: sel.grids[n] for n in list(sel.grids)[:3]},
                      {n: sel.scores[n] for n in list(sel.grids)[:3]}, sel.meta)
    assert len(plot_selection(small).get_suptitle().split("\n")) == 1             # everything shown: no subset line


def test_panels_in_model_order_layer_then_type():
    fig = plot_selection(demo_like(), chosen_only=True, max_panels=8)
    names = panel_names(fig)
    assert [layer_and_type(t) for t in names] == sorted(layer_and_type(t) for t in names)
    assert [layer_and_type(t)[0] for t in names] == [0, 0, 1, 1, 4, 7, 10, 12]   # not 10, 0, 12, … (most blocks first)


def test_one_colour_bar_in_words():
    sel = demo_like()
    fig = plot_selection(sel, chosen_only=True, max_panels=8)
    bars = colour_bars(fig)
    assert len(bars) == 1 and len({ax.images[0].get_clim() for ax in panels(fig)}) == 1
    assert bars[0].ax.get_ylabel().replace("\n", " ") == "GW score: |mean warm-up gradient| in the block"
    unshared = plot_selection(sel, filter=r"layers\.0\.", shared_scale=False)
    assert len(colour_bars(unshared)) == 3                                        # each panel its own scale and bar


def test_score_labels_are_words_for_every_statistic_and_scorer():
    gw = {s: score_label(Selection({}, {}, meta=dict(method="gw", statistic=s))) for s in STATISTICS}
    assert len(set(gw.values())) == len(STATISTICS) and all(l.startswith("GW score: ") for l in gw.values())
    assert not any(s in l for s in ("mean_abs", "abs_mean") for l in gw.values())   # words, not option names
    others = {m: score_label(Selection({}, {}, meta=dict(method=m))) for m in SCORERS if m != "gw"}
    assert others == {"mw": "MW score: mean |weight| in the block", "aw": "AW score: mean |weight| × input norm in the block",
                      "random": "random score (a baseline: means nothing)"}
    assert score_label(Selection({}, {}, meta=dict(method="gw", statistic="abs_mean", accumulation="abs_per_step"))).startswith("GW score: ")


def test_without_scores_the_bar_says_trained_or_not():
    fig = plot_selection(demo_like(scores=False), chosen_only=True, max_panels=4)
    assert [b.ax.get_ylabel() for b in colour_bars(fig)] == ["trained (1) or not (0)"]


def test_overview_colour_bar_in_words(tmp_path):
    fig = plot_selection_overview(demo_like())                                    # the demo's call
    assert fig.axes[-1].get_ylabel() == OVERVIEW_LABEL == "% of the matrix's weights that train"
    fig.savefig(tmp_path / "selection_overview.png", dpi=90)
    plot_selection(demo_like(), chosen_only=True, max_panels=8).savefig(tmp_path / "selection_chosen.png", dpi=90)
    assert (tmp_path / "selection_chosen.png").stat().st_size > 0


def test_misuse():
    with pytest.raises(ValueError, match="No matrix with chosen blocks matches"):
        plot_selection(demo_like(), filter=r"layers\.2\.", chosen_only=True)       # layer 2 holds no block
    with pytest.raises(ValueError, match="has no experts"):
        plot_experts(demo_like(), "model.layers.1.mlp.experts.gate_up_proj")
