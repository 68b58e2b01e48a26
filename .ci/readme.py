"""Write README.md from nbs/index.ipynb (nbdev_readme needs quarto, which is not installable offline).
Markdown cells are copied, code cells become fenced Python, text outputs follow them, images are saved under nbs/images/."""
import base64
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def render(nb_path: Path, write_images: bool = True) -> str:
    nb = json.loads(nb_path.read_text())
    parts, n_img = [], 0
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if src.lstrip().startswith("#| hide"): continue
        if cell["cell_type"] == "markdown":
            parts.append(src); continue
        parts.append(f"```python\n{src}\n```")
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data:
                img = ROOT / "nbs" / "images" / f"index_{n_img}.png"
                if write_images:
                    img.parent.mkdir(exist_ok=True)
                    img.write_bytes(base64.b64decode(data["image/png"]))
                parts.append(f"![](nbs/images/{img.name})"); n_img += 1
            elif out.get("output_type") == "stream" and out.get("name") == "stdout":
                parts.append("    " + "".join(out["text"]).rstrip().replace("\n", "\n    "))
            elif "text/plain" in data:
                parts.append("    " + "".join(data["text/plain"]).rstrip().replace("\n", "\n    "))
    return "\n\n".join(parts) + "\n"

if __name__ == "__main__":
    text = "<!-- generated from nbs/index.ipynb by .ci/readme.py: edit the notebook, not this file -->\n\n" + render(ROOT / "nbs" / "index.ipynb")
    (ROOT / "README.md").write_text(text)
    print("wrote README.md", file=sys.stderr)
