"""GPU time of the optimizer step hook's grouped block write (base + Δ into every in-place layer's weight, one launch) at the
Llama-3.2-1B shape with SMT at LoRA-r64's budget: the vectorised form (whole blocks, aligned rows) against the general masked form,
and the bytes it moves. Usage: python benchmarks/write_blocks.py
"""
import torch

import smt_nb.layers as L
from smt_nb.core import SMTConfig, prepare_smt, smt_layers
from smt_nb.blocks import lora_params
from smt_nb.core import find_targets

from model import TARGETS, build


def median_ms(fn, n=50):
    for _ in range(5): fn()
    times = []
    for _ in range(n):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); e.synchronize(); times.append(s.elapsed_time(e))
    return sorted(times)[n // 2]


def main():
    model = build("1b", 16)
    shapes = [(m.out_features, m.in_features) for m in find_targets(model, TARGETS).values()]
    model = prepare_smt(model, SMTConfig(block_size=256, sparsity=lora_params(64, shapes) / sum(o * i for o, i in shapes),
                                         method="random", target_modules=TARGETS))
    layers = list(smt_layers(model).values())
    values = sum(l.smt_delta.numel() for l in layers)
    moved = values * (4 + 2 + 2)  # read Δ (fp32) and the original block (bf16), write the weight (bf16)
    aligned = median_ms(lambda: L.write_layers(layers))
    original = L.aligned_for_write
    L.aligned_for_write = lambda layer: False
    try: general = median_ms(lambda: L.write_layers(layers))
    finally: L.aligned_for_write = original
    print(f"{len(layers)} layers, {values / 1e6:.1f} M values, {moved / 2**20:.0f} MiB moved")
    for name, ms in (("aligned (vectorised)", aligned), ("general (masked)", general)):
        print(f"{name:<22} {ms * 1e3:8.1f} us  {moved / ms / 1e6:7.0f} GB/s")


if __name__ == "__main__":
    main()
