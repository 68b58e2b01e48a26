"""The repository keeps its promises: README states CI's command, every module is a notebook export."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ci_var(name):
    return re.search(rf"^{name}='(.*)'$", (ROOT / ".ci" / "run").read_text(), re.M).group(1)


def test_readme_states_the_ci_test_command():
    readme = (ROOT / "README.md").read_text()
    assert f"{_ci_var('SETUP')} && {_ci_var('TESTS')}" in readme


def test_readme_matches_index_notebook():
    import importlib.util
    spec = importlib.util.spec_from_file_location("readme", ROOT / ".ci" / "readme.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    body = mod.render(ROOT / "nbs" / "index.ipynb", write_images=False)
    assert body in (ROOT / "README.md").read_text(), "README.md is stale: run `python .ci/readme.py`"


def test_every_module_is_exported_from_a_notebook():
    exported = set()
    for nb in (ROOT / "nbs").glob("*.ipynb"):
        m = re.search(r"#\| default_exp (\w+)", nb.read_text())
        if m: exported.add(m.group(1))
    modules = {p.stem for p in (ROOT / "smt_nb").glob("*.py") if not p.stem.startswith("_")}
    assert modules == exported
