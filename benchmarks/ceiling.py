"""How fast could a compiled SMT step be with a faster block-gradient kernel? Writes a copy of this package whose traced block
gradients are a stand-in, for `model.py --baseline DIR` to time beside the real package and the floor in one run:

- `zero`: no block-gradient work at all (zeros): the ceiling of the step as it is built today — the saved column strips, the
  down projection's strips recomputed in the backward, the optimizer and the block writes all still run;
- `cublas`: cuBLAS on contiguous operands with each problem's FLOPs ((n·b, T) @ (T, b), as `sddmm_tiles.py --splits` times it):
  the ceiling with a kernel as fast as the library's own dense product, which reads less than the real problem does (and pessimistic
  in one way: its result is copied twice on the way to fp32 tiles, which a kernel would write directly).

The stand-in is an opaque custom op taking the output gradient and the saved strips, so the compiler still builds both exactly as
for the real kernel. Its gradients are wrong: a timing device only, for the compiled path (the eager path keeps the real kernel).
Usage: python benchmarks/ceiling.py DIR --variant zero|cublas, then
       python benchmarks/model.py --shape 1b --modes compiled --methods floor,smt_matched,smt_matched_baseline \
           --compiled-methods floor,smt_matched,smt_matched_baseline --interleave 4 --baseline DIR
"""
import argparse
import shutil
from pathlib import Path

BODIES = {
    "zero": "return torch.zeros(n, b, b, device=g2.device, dtype=torch.float32)",
    "cublas": """parts, left = [], n * b                        # (n·b, T) @ (T, b) from contiguous columns, in slices as wide as g2 allows
    while left > 0:
        take = min(left, g2.shape[-1])
        parts.append(g2[:, :take].t() @ x[:, :b])  # (take, b)
        left -= take
    return torch.cat(parts).float().view(n, b, b)   # two copies more than a kernel writing fp32 tiles: a pessimistic stand-in""",
}

STAND_IN = """

# --- appended by benchmarks/ceiling.py: the traced block gradients replaced by a stand-in ({variant}) ---
@torch.library.custom_op("smt_ceiling::block_gradients", mutates_args=())
def _ceiling_block_gradients(g2: Tensor, x: Tensor, n: int, b: int) -> Tensor:
    {body}

@_ceiling_block_gradients.register_fake
def _(g2, x, n, b): return g2.new_empty(n, b, b, dtype=torch.float32)

# the op `block_gradients` calls while compiling (the Triton kernel's triton_op): the stand-in instead; eager calls are untouched
_block_gradients_op = lambda g2, x, rows, cols, block_size: _ceiling_block_gradients(g2, x, rows.shape[0], block_size)
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", help="where to write DIR/smt_nb")
    p.add_argument("--variant", choices=["zero", "cublas"], required=True)
    a = p.parse_args()
    src, dst = Path(__file__).resolve().parent.parent / "smt_nb", Path(a.dir).resolve() / "smt_nb"
    if dst == src: p.error(f"{a.dir} is this repository: the copy would replace the package itself; give another folder")
    if dst.exists(): shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    layers = dst / "layers.py"
    layers.write_text(layers.read_text() + STAND_IN.format(variant=a.variant, body=BODIES[a.variant]))
    print(f"{dst}: block gradients under torch.compile replaced by the {a.variant!r} stand-in")


if __name__ == "__main__":
    main()
