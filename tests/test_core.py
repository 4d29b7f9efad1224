"The shared helpers of nbs/00_core.ipynb, beyond the notebook's own checks."
import os
import numpy as np, torch, pytest
from sae_tutorial.core import budget, seed_everything, require_finite, get_device, images_dir

@pytest.mark.parametrize("value,expected", [("ci", "ci"), ("CPU", "cpu"), (" gpu ", "gpu")])
def test_budget_reads_env(monkeypatch, value, expected):
    monkeypatch.setenv("SAE_TUTORIAL_BUDGET", value)
    assert budget() == expected

def test_budget_default_follows_hardware(monkeypatch):
    monkeypatch.delenv("SAE_TUTORIAL_BUDGET", raising=False)
    assert budget() == ("gpu" if torch.cuda.is_available() else "cpu")

def test_bad_budget_names_the_fix(monkeypatch):
    monkeypatch.setenv("SAE_TUTORIAL_BUDGET", "huge")
    with pytest.raises(ValueError, match="one of ci, workshop, cpu, gpu"): budget()

def test_seed_everything_repeats_all_generators():
    g = seed_everything(7); first = (np.random.rand(3), torch.rand(3), torch.rand(3, generator=g))
    g = seed_everything(7); second = (np.random.rand(3), torch.rand(3), torch.rand(3, generator=g))
    for a, b in zip(first, second): np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

def test_require_finite_counts_bad_entries():
    x = torch.tensor([0., float("inf"), float("-inf"), float("nan")])
    with pytest.raises(ValueError, match="1 NaN and 2 Inf entries"): require_finite(x)
    assert require_finite(torch.arange(3)).tolist() == [0, 1, 2]  # integers pass untouched

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_require_finite_raises_exactly_when_an_entry_is_not_finite(dtype):
    "Against the elementwise test: random tensors with 0-3 NaN/±Inf planted, and finite ones whose sum overflows."
    g = torch.Generator().manual_seed(0)
    big = torch.finfo(dtype).max / 4
    overflowed = 0
    for trial in range(60):
        if trial % 3: x = torch.randn(37, 11, generator=g).to(dtype)
        else: x = (torch.rand(37, 11, generator=g, dtype=torch.float64) * big).to(dtype)   # finite, but their sum overflows
        overflowed += bool(torch.isfinite(x).all() and not torch.isfinite(x.sum()))
        for _ in range(trial % 4):
            x.view(-1)[torch.randint(0, x.numel(), (1,), generator=g)] = [float("nan"), float("inf"), -float("inf")][trial % 3]
        if torch.isfinite(x).all(): assert require_finite(x) is x
        else:
            with pytest.raises(ValueError, match="NaN and"): require_finite(x)
    assert overflowed >= 10                       # the elementwise fallback was exercised

def test_ci_budget_never_writes_images(monkeypatch):
    monkeypatch.setenv("SAE_TUTORIAL_BUDGET", "ci")
    assert images_dir().name == "sae_tutorial_images"

def test_device_env_override(monkeypatch):
    monkeypatch.setenv("SAE_TUTORIAL_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_atomic_folder_survives_sigkill_and_clears_the_debris(tmp_path):
    "A writer killed with SIGKILL mid-write publishes nothing; the next writer removes its temporary folder."
    import signal, subprocess, sys
    from sae_tutorial.core import atomic_folder
    final = tmp_path / "store"
    code = ("import sys, time; from sae_tutorial.core import atomic_folder\n"
            "with atomic_folder(sys.argv[1]) as t:\n"
            "    (t/'part.bin').write_bytes(b'x' * 1000); print('writing', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(final)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL); p.wait()
    debris = list(tmp_path.glob(".store.tmp-*"))
    assert not final.exists() and len(debris) == 1 and (debris[0] / "part.bin").exists()
    with atomic_folder(final) as t:
        (t / "done.txt").write_text("ok")
    assert (final / "done.txt").read_text() == "ok"
    assert list(tmp_path.glob(".store.tmp-*")) == []


def test_atomic_folder_overwrite_keeps_old_until_new_is_complete(tmp_path):
    from sae_tutorial.core import atomic_folder
    final = tmp_path / "ckpt"
    with atomic_folder(final) as t: (t / "v").write_text("1")
    try:
        with atomic_folder(final, overwrite=True) as t:
            (t / "v").write_text("2"); raise RuntimeError("killed half-way")
    except RuntimeError: pass
    assert (final / "v").read_text() == "1"
    with atomic_folder(final, overwrite=True) as t: (t / "v").write_text("2")
    assert (final / "v").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_folder_never_replaces_a_folder_that_appeared_meanwhile(tmp_path):
    "overwrite=False: a folder published by someone else during our build is kept, ours is dropped, nothing is left."
    from sae_tutorial.core import atomic_folder
    final = tmp_path / "model"
    with pytest.raises(FileExistsError, match="someone else"):
        with atomic_folder(final) as t:
            (t / "ours").write_text("1")
            final.mkdir(); (final / "theirs").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["theirs"] and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_file_gets_the_usual_mode(tmp_path):
    from sae_tutorial.core import atomic_file
    umask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "run.json") as f: f.write("{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "run.json").stat().st_mode & 0o777 == 0o644

def _record_fsync_and_rename(monkeypatch):
    "Log (event, path) for every os.fsync (path of its descriptor, via /proc) and os.replace, in order."
    import sae_tutorial.core as core
    log, fsync, replace = [], os.fsync, os.replace
    def rec_fsync(fd):
        log.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}"))); return fsync(fd)
    def rec_replace(a, b):
        log.append(("replace", os.path.realpath(b))); return replace(a, b)
    monkeypatch.setattr(core.os, "fsync", rec_fsync); monkeypatch.setattr(core.os, "replace", rec_replace)
    return log

@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="maps descriptors to paths through /proc")
def test_atomic_folder_flushes_every_file_before_the_rename_and_the_parent_after(tmp_path, monkeypatch):
    from sae_tutorial.core import atomic_folder
    log = _record_fsync_and_rename(monkeypatch)
    with atomic_folder(tmp_path/"run") as t:
        (t/"a.bin").write_bytes(b"1" * 10); (t/"sub").mkdir(); (t/"sub"/"b.json").write_text("{}")
    names = [os.path.basename(p) for _, p in log]
    i = [e for e, _ in log].index("replace")
    assert {"a.bin", "b.json", "sub"} <= set(names[:i])                # files and the inner folder: before
    assert log[i] == ("replace", str((tmp_path/"run").resolve()))
    assert log[i + 1:] == [("fsync", str(tmp_path.resolve()))]         # the parent, which holds the new name: after

@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="maps descriptors to paths through /proc")
def test_atomic_file_flushes_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    from sae_tutorial.core import atomic_file
    log = _record_fsync_and_rename(monkeypatch)
    with atomic_file(tmp_path/"x.txt") as f: f.write("hello")
    assert [e for e, _ in log] == ["fsync", "replace", "fsync"]
    assert os.path.basename(log[0][1]).startswith(".x.txt.tmp-")       # the temporary file's bytes ...
    assert log[2][1] == str(tmp_path.resolve())                          # ... and the folder's new name
    assert (tmp_path/"x.txt").read_text() == "hello"
