"""`smt_nb demo`, through the Python entry point and the installed console script."""
import json
import subprocess

import pytest

from smt_nb.cli import main, run_demo


def test_demo_trains_and_writes_outputs(tmp_path):
    r = run_demo(str(tmp_path), steps=30, progress=False)
    assert r["loss_after"] < r["loss_before"] - 0.2
    assert (tmp_path / "selection_layer0.png").stat().st_size > 1000
    assert (tmp_path / "selection_overview.png").stat().st_size > 1000
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["config"]["method"] == "mw" and cfg["config"]["block_size"] == 16
    assert r["trainable"] <= 0.1 * sum(o * i for o, i in (m["shape"] for m in cfg["selection"]["modules"].values()))


def test_console_script(tmp_path):
    out = subprocess.run(["smt_nb", "demo", "--out", str(tmp_path), "--steps", "3", "--method", "random"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "trainable params" in out.stdout and "held-out loss" in out.stdout
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_bad_flag_says_why(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--method", "magnitude"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
