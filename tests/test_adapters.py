"""Adapter files: what a damaged file, another base model, a hollow model, a blocked file or a second writer gives — a clear error, never a silent load."""
import json
import multiprocessing
import os
import stat
from unittest import mock

import pytest
import torch
from safetensors.torch import save_file

import smt_nb.adapters as adapters
from smt_nb.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SKETCH_SIZE, read_adapter
from smt_nb.blocks import BlockGrid, block_mask
from smt_nb.core import SMTConfig, load_smt, prepare_smt, save_smt, smt_layers
from smt_nb.selection import Selection
from conftest import ARCHS, batches


def trained(seed=0, **kw):
    return prepare_smt(ARCHS["llama"](seed), SMTConfig(block_size=16, sparsity=0.1, method="mw", init_std=0.05, **kw))


def rewrite_header(src, dst, edit):
    "Copy the adapter in `src` to `dst` with its config (in the weights file's header) changed by `edit(meta)`."
    meta = json.loads((src / ADAPTER_CONFIG).read_text())
    edit(meta)
    _, _, deltas = read_adapter(ARCHS["llama"](), src, check_base=False)
    dst.mkdir()
    save_file(deltas, dst / ADAPTER_WEIGHTS, metadata={"format": "pt", "smt_nb_adapter": json.dumps(meta)})
    return dst


def test_another_fine_tune_equal_in_the_blocks_is_refused(tmp_path):
    model = trained()
    save_smt(model, tmp_path / "a")
    other = ARCHS["llama"]()
    with torch.no_grad():  # 0.5 % off everywhere but the selected blocks, which stay bit-identical
        for n, l in smt_layers(model).items():
            w, inside = other.get_submodule(n).weight, block_mask(l.grid, l.blocks)
            w.copy_(torch.where(inside, w, w * 1.005))
    with pytest.raises(ValueError, match="the matrix outside them changed by about 0.5%"):
        load_smt(other, tmp_path / "a")
    assert smt_layers(other) == {}                                   # refused before anything changed
    loaded = load_smt(other, tmp_path / "a", check_base=False)       # the user's override still works
    assert len(smt_layers(loaded)) == len(smt_layers(model))


def test_same_base_in_another_dtype_loads_with_a_rounding_warning(tmp_path):
    save_smt(trained(), tmp_path)
    with pytest.warns(UserWarning, match="by rounding only"):
        load_smt(ARCHS["llama"]().to(torch.bfloat16), tmp_path)


@pytest.mark.parametrize("field", ["sketch", "outside_sketch"])
def test_nan_fingerprints_are_refused_not_read_as_rounding(tmp_path, field):
    save_smt(trained(), tmp_path / "a")
    def poison(meta):
        for fp in meta["fingerprint"].values(): fp[field] = [float("nan")] * SKETCH_SIZE
    bad = rewrite_header(tmp_path / "a", tmp_path / "bad", poison)
    with pytest.raises(ValueError, match=f"invalid '{field}'"):
        load_smt(ARCHS["llama"](seed=1), bad)


def test_corrupt_header_is_named(tmp_path):
    save_smt(trained(), tmp_path / "a")
    _, _, deltas = read_adapter(ARCHS["llama"](), tmp_path / "a")
    (tmp_path / "bad").mkdir()
    save_file(deltas, tmp_path / "bad" / ADAPTER_WEIGHTS, metadata={"format": "pt", "smt_nb_adapter": '{"format": "smt_nb.adap'})
    with pytest.raises(ValueError, match="config in its header is not valid JSON"):
        load_smt(ARCHS["llama"](), tmp_path / "bad")


def test_unreadable_file_is_named_as_a_permission_problem(tmp_path):
    save_smt(trained(), tmp_path)
    def denied(*a, **k): raise PermissionError(13, "Permission denied", str(tmp_path / ADAPTER_WEIGHTS))
    with mock.patch.object(adapters, "safe_open", denied), pytest.raises(PermissionError, match="permission denied.*chmod a\\+r"):
        load_smt(ARCHS["llama"](), tmp_path)


def test_meta_device_base_is_refused(tmp_path):
    save_smt(trained(), tmp_path)
    with torch.device("meta"): hollow = type(ARCHS["llama"]())(ARCHS["llama"]().config)
    with pytest.raises(ValueError, match="on the meta device"):
        load_smt(hollow, tmp_path)
    assert smt_layers(hollow) == {}


def test_selection_mixing_block_sizes_is_refused():
    model = ARCHS["llama"]()
    q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
    mixed = Selection({q: torch.tensor([[1, 0]]), k: torch.tensor([[0, 0]])}, {q: BlockGrid(48, 48, 16), k: BlockGrid(24, 48, 8)})
    with pytest.raises(ValueError, match="mixes block sizes"):
        prepare_smt(model, selection=mixed)
    assert smt_layers(model) == {} and all(p.requires_grad for p in model.parameters())


def test_empty_selection_is_refused():
    sel = trained().smt_selection
    with pytest.raises(ValueError, match="holds no block"):
        prepare_smt(ARCHS["llama"](), selection=Selection({n: b[:0] for n, b in sel.blocks.items()}, sel.grids))


def _save_repeatedly(folder, seed):
    model = trained(seed)
    for _ in range(15): save_smt(model, folder)


def test_two_processes_saving_into_one_folder_take_turns(tmp_path):
    procs = [multiprocessing.get_context("spawn").Process(target=_save_repeatedly, args=(tmp_path, s)) for s in (0, 0)]
    for p in procs: p.start()
    for p in procs: p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]   # no temporary file left, no lock file
    load_smt(ARCHS["llama"](), tmp_path)                                                      # complete and consistent


def test_saved_files_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try: save_smt(trained(), tmp_path)
    finally: os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {ADAPTER_CONFIG: 0o644, ADAPTER_WEIGHTS: 0o644}


def test_filesystems_without_folder_locks_still_save(tmp_path, monkeypatch):
    "NFS refuses flock on a folder (EBADF), Lustre without -o flock says ENOSYS: saves go on unlocked, with one warning."
    import errno
    import smt_nb.atomic as atomic
    def refuse(fd, op): raise OSError(errno.EBADF, "Bad file descriptor")
    monkeypatch.setattr(atomic.fcntl, "flock", refuse)
    monkeypatch.setattr(atomic, "_WARNED_UNLOCKED", set())
    with pytest.warns(UserWarning, match="cannot lock folders"):
        save_smt(trained(), tmp_path)
    load_smt(ARCHS["llama"](), tmp_path)


def test_only_a_full_disk_is_reported_as_one(tmp_path, monkeypatch):
    "With little space left a writer's RuntimeError (torch.save's) is named a full disk; a PermissionError stays a PermissionError."
    import shutil
    import smt_nb.atomic as atomic
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    def fail(exc):
        with atomic.atomic_write(tmp_path / "f") as tmp: raise exc
    with pytest.raises(OSError, match="No space left"): fail(RuntimeError("[enforce fail at inline_container.cc:672]"))
    with pytest.raises(PermissionError): fail(PermissionError(13, "Permission denied"))
