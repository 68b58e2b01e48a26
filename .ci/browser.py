"""The selection explorer widget (nbs/03_widgets.ipynb) driven in a real browser, as a learner would use it.

Headless JupyterLab on 127.0.0.1 (started here, so its PID can be ended) and Playwright driving Debian's `chromium`: open a copy
of the notebook (cells marked `eval: false` and nbdev's export cell left out), run all cells from the Run menu, then change each
control of the panel once — method, GW statistic, block size, sparsity (typed into the readout, in percent), matrix, sparsity typed as '2%' into its box — and check
that the figure changes each time. Fails on an error in any output, a browser console error or page error, or a wait that runs
out. Jupyter's, IPython's, matplotlib's and Chromium's files stay in a temporary folder, never in the home directory.
Screenshots (after the run and after each control) go to OUT_DIR.
Usage: python .ci/browser.py OUT_DIR   (needs: jupyterlab, playwright, and chromium on PATH)
"""
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "nbs" / "03_widgets.ipynb"
SKIP = ("eval: false", "nbdev_export")  # cells a reader does not run, and the export cell (it writes into the repository)
ERROR_IN_OUTPUT = re.compile(r"Traceback|\b\w+Error\b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float, every: float = 0.25):
    "Poll `check` until it returns something truthy; raise naming `what` after `timeout` seconds."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check(): return result
        except OSError: pass  # the server is not listening yet
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def runnable_copy(src: Path, dst: Path) -> int:
    "The notebook without the skipped cells and without saved outputs; returns how many code cells it has."
    nb = json.loads(src.read_text())
    nb["cells"] = [c for c in nb["cells"] if not (c["cell_type"] == "code" and any(s in "".join(c["source"]) for s in SKIP))]
    for c in nb["cells"]:
        if c["cell_type"] == "code": c["outputs"], c["execution_count"] = [], None
    dst.write_text(json.dumps(nb))
    return sum(c["cell_type"] == "code" for c in nb["cells"])


def private_dirs(root: Path) -> dict:
    "Environment that keeps every tool's files under `root`."
    dirs = dict(HOME="home", JUPYTER_CONFIG_DIR="jupyter/config", JUPYTER_DATA_DIR="jupyter/data", JUPYTER_RUNTIME_DIR="jupyter/runtime",
                IPYTHONDIR="ipython", MPLCONFIGDIR="matplotlib", XDG_CONFIG_HOME="xdg/config", XDG_CACHE_HOME="xdg/cache",
                XDG_DATA_HOME="xdg/data")
    for k, sub in dirs.items(): (root / sub).mkdir(parents=True, exist_ok=True); dirs[k] = str(root / sub)
    return dirs


def start_lab(work: Path, port: int, token: str, env: dict) -> subprocess.Popen:
    lab = shutil.which("jupyter-lab") or str(Path(sys.executable).parent / "jupyter-lab")
    args = [lab, "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={work}",
            "--ServerApp.open_browser=False", "--ServerApp.port_retries=0", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(work.parent / "jupyter-lab.log", "w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, port: int, token: str):
    "Shut the kernels down through the server (they run in sessions of their own), then end jupyter-lab."
    if proc.poll() is not None: return
    try:
        for k in api(port, token, "/api/kernels"):
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/api/kernels/{k['id']}?token={token}", method="DELETE"), timeout=10)
    except OSError: pass  # the server is going anyway
    os.killpg(proc.pid, signal.SIGTERM)
    try: proc.wait(timeout=15)
    except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()


def api(port: int, token: str, path: str):
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}?token={token}", timeout=5).read())


def figure_src(panel) -> str:
    return panel.locator(".widget-output img").first.get_attribute("src") or ""


def output_errors(page) -> list[str]:
    return [f"output: {t[:500]}" for t in page.locator(".jp-OutputArea-output").all_text_contents() if ERROR_IN_OUTPUT.search(t)]


def change_and_check(page, panel, name: str, change, out: Path, step: int, readout=None, shows: str | None = None):
    "Apply `change`; within 60 s the figure must be redrawn differently (and `readout` show `shows`), with no error in any output."
    before = figure_src(panel)
    t0 = time.monotonic()
    change()
    def redrawn():
        if errors := output_errors(page): raise AssertionError(f"after changing {name}: " + "; ".join(errors))
        # the readout and the figure reach the page as separate messages: wait for both, in whichever order they come
        return (src := figure_src(panel)) and src != before and (shows is None or readout.text_content().strip() == shows)
    try: wait_for(redrawn, f"the figure after changing {name}" + (f" (and the sparsity readout showing {shows})" if shows else ""), 60)
    except TimeoutError as e:
        panel.screenshot(path=str(out / f"{step:02d}_{name}_timed_out.png"))
        raise TimeoutError(f"{e}; figure changed: {figure_src(panel) != before}, readout shows {readout.text_content().strip()!r}") from None
    panel.screenshot(path=str(out / f"{step:02d}_{name}.png"))
    print(f"  {name}: the figure changed in {time.monotonic() - t0:.1f} s", flush=True)


def choose_other(select) -> str:
    "Pick an option of a <select> other than the current one; returns its label."
    options = select.locator("option").all_text_contents()
    current = select.evaluate("s => s.options[s.selectedIndex].text")
    other = next(o for o in options if o != current)
    select.select_option(label=other)
    return other


def drive(port: int, token: str, n_code: int, out: Path, env: dict):
    from playwright.sync_api import sync_playwright
    problems = []
    with sync_playwright() as p:
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"], env=env)
        page = browser.new_page(viewport=dict(width=1500, height=1100))
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(f"http://127.0.0.1:{port}/lab/tree/widgets.ipynb?token={token}")
        wait_for(lambda: [k for k in api(port, token, "/api/kernels") if k["execution_state"] == "idle"], "the kernel to start", 120)
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        t0 = time.monotonic()
        def all_ran():
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_text_contents()
            return len(prompts) == n_code and all(re.fullmatch(r"\[\d+\]:", t.strip()) for t in prompts)
        wait_for(all_ran, "all cells to run", 300, every=1)
        print(f"ran {n_code} code cells in {time.monotonic() - t0:.0f} s", flush=True)
        page.screenshot(path=str(out / "00_after_run_all.png"), full_page=True)
        problems += output_errors(page)
        panel = page.locator(".widget-vbox", has=page.locator(".widget-output img")).last
        panel.scroll_into_view_if_needed()
        method, statistic, block, module = (panel.locator(".widget-dropdown select").nth(i) for i in range(4))
        readout = panel.locator(".widget-readout").first
        typed = panel.locator(".widget-text input").first
        steps = [("method", lambda: choose_other(method), None),              # whichever method it shows now, another one
                 ("method_gw", lambda: method.select_option("gw"), None),     # the statistic acts only under GW (skipped if already there)
                 ("statistic", lambda: statistic.select_option("abs_mean" if statistic.input_value() != "abs_mean" else "mean_abs"), None),
                 ("block_size", lambda: choose_other(block), None),
                 ("sparsity", lambda: (readout.click(), page.keyboard.press("Control+A"), page.keyboard.type("10"), page.keyboard.press("Enter")), "10.00"),
                 ("matrix", lambda: choose_other(module), None),
                 # the box beside the slider reads sparsity as --sparsity does: '2%' (or 0.02) moves the slider to 2.00 (percent)
                 ("sparsity_typed", lambda: (typed.fill("2%"), typed.press("Enter")), "2.00")]
        for i, (name, change, shows) in enumerate(steps, 1):
            if name == "method_gw" and method.input_value() == "gw": continue  # already on GW
            change_and_check(page, panel, name, change, out, i, readout, shows)
        if statistic.is_disabled(): problems.append("the statistic control stayed disabled under GW")
        problems += output_errors(page)
        page.screenshot(path=str(out / "99_final.png"), full_page=True)
        browser.close()
    return problems


def main(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="smt_nb_browser_"))
    work = root / "work"; work.mkdir()
    n_code = runnable_copy(NOTEBOOK, work / "widgets.ipynb")
    env = dict(os.environ, **private_dirs(root))
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(work, port, token, env)
    try:
        def answering():
            if lab.poll() is not None: raise RuntimeError(f"jupyter-lab exited with {lab.returncode}")
            return api(port, token, "/api/status")
        wait_for(answering, "JupyterLab to answer", 90)
        problems = drive(port, token, n_code, out, env)
    except Exception:
        print((root / "jupyter-lab.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        stop(lab, port, token)
        shutil.copy(root / "jupyter-lab.log", out / "jupyter-lab.log")
        shutil.rmtree(root, ignore_errors=True)
    if problems:
        print("FAIL: the widget in the browser:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"browser test passed; screenshots in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".ci_artifacts/browser"))
