"""Reliability of the data half (#13): one atomic-publish recipe, disk full, damaged stores and caches, bad inputs
that name the fix, and no unpickling anywhere. Most cases use a tiny fake model so they run in a second; the hook
and model-name errors use the real offline SmolLM2 (its 30 layers and hook names are the ground truth)."""
import ast, errno, gzip, hashlib, json, os, shutil, socket, subprocess, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np, pytest, torch
from lm_fixtures import lm, one_thread  # noqa: F401 (autouse fixture)
from sae_tutorial import activations as act_mod, lm as lm_mod
from sae_tutorial.activations import (ActivationStore, Contexts, HarvestConfig, harvest_activations,
                                      tokenize_contexts, validate_hook)
from sae_tutorial.corpus import CorpusConfig, build_corpus
from sae_tutorial.lm import PinnedArchive, fetch_archive, load_lm
from sae_tutorial.reproduce import run_stage, stage_done, write_json_atomic, encode_rows, evaluate_sae, SAESpec, ReproConfig

def enospc(): return OSError(errno.ENOSPC, "No space left on device")   # what a full disk raises

# ---------------------------------------------------------------- a fake model: activations = a table of token rows
class FakeLM:
    "x[b, t] = table[token]: a hooked 'model' whose activations we know exactly (3 layers, d_in = 8)."
    def __init__(self, n_layers=3, d_in=8, vocab=50):
        self.hook_dict = {f"blocks.{l}.{k}": None for l in range(n_layers) for k in ("hook_resid_post", "hook_mlp_out")}
        self.table = torch.randn(vocab, d_in, generator=torch.Generator().manual_seed(0)) + 3.0
        self.cfg = SimpleNamespace(n_layers=n_layers, model_name="fake")
    def parameters(self): yield self.table
    def run_with_cache(self, tokens, names_filter, stop_at_layer=None): return None, {names_filter: self.table[tokens]}

def fake_contexts(n_ctx=6, T=10):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 50, (n_ctx, T), generator=g); tokens[:, 0] = 0; tokens[2, 5] = 0   # <|endoftext|>s
    return Contexts(tokens, torch.zeros(n_ctx, T, dtype=torch.int32), ["doc0"])

def expected_rows(model, ctx):
    "The kept rows computed independently: every position except column 0 and token 0, in row-major order."
    keep = ctx.tokens != 0
    return model.table[ctx.tokens[keep]]

def harvest_fake(path, **kw):
    return harvest_activations(FakeLM(), fake_contexts(), HarvestConfig(hook="blocks.1.hook_resid_post", store="disk",
                               path=str(path), batch_size=2, progress=False, **kw), special_ids=(0,))

def entries(folder: Path) -> list[str]: return sorted(p.name for p in folder.iterdir())

def test_fake_disk_store_holds_exactly_the_kept_rows(tmp_path):
    s = harvest_fake(tmp_path/"s")
    ref = expected_rows(FakeLM(), fake_contexts())
    assert s.n_rows == len(ref) == 6 * 9 - 1
    assert torch.equal(s.get(np.arange(s.n_rows), normalize=False), ref)
    assert entries(tmp_path) == ["s"]                          # no temporary sibling left

# ---------------------------------------------------------------- disk full while writing
class _FullAfter:
    "A file whose write() raises ENOSPC after `n` successful writes."
    def __init__(self, f, n): self.f, self.n = f, n
    def write(self, b):
        if self.n == 0: raise enospc()
        self.n -= 1; return self.f.write(b)
    def close(self): self.f.close()

def assert_disk_full_error(e: pytest.ExceptionInfo, final: Path):
    assert e.value.errno == errno.ENOSPC
    msg = str(e.value)
    assert str(final) in msg and "free some space" in msg and "SAE_TUTORIAL_CACHE" in msg and "path=" in msg

def test_disk_full_while_writing_acts_leaves_nothing(tmp_path, monkeypatch):
    real_open = open
    monkeypatch.setattr(act_mod, "open", lambda p, m="r", *a, **k: _FullAfter(real_open(p, m, *a, **k), 1), raising=False)
    with pytest.raises(OSError) as e: harvest_fake(tmp_path/"s")
    assert_disk_full_error(e, tmp_path/"s")
    assert entries(tmp_path) == []                             # no store, no temporary folder
    monkeypatch.undo()
    assert harvest_fake(tmp_path/"s").n_rows == 53             # the failed try does not block the path

def test_disk_full_while_saving_npy_leaves_nothing(tmp_path, monkeypatch):
    real_save, calls = np.save, []
    def save(path, arr, **kw):
        calls.append(Path(path).name)
        if len(calls) == 3: Path(path).write_bytes(b"\x93NUMPY partial"); raise enospc()   # half a file, then full
        return real_save(path, arr, **kw)
    monkeypatch.setattr(np, "save", save)
    with pytest.raises(OSError) as e: harvest_fake(tmp_path/"s")
    assert_disk_full_error(e, tmp_path/"s")
    assert calls == ["tokens.npy", "doc_index.npy", "mask.npy"] and entries(tmp_path) == []

def test_disk_full_while_caching_corpus_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_TUTORIAL_CACHE", str(tmp_path/"cache"))
    text = "\n\n".join(f"Paragraph {i}: " + " ".join(f"word{j * i % 9973}" for j in range(300)) for i in range(60))
    f = tmp_path/"notes.txt"; f.write_text(text)
    cfg = CorpusConfig(sources={}, files=(str(f),))       # paragraphs < max_doc_chars: never cut mid-word
    real_write, n = gzip.GzipFile.write, [0]
    def write(self, data):
        n[0] += 1
        if n[0] > 1: raise enospc()                              # the first compressed block got out, then the disk filled
        return real_write(self, data)
    monkeypatch.setattr(gzip.GzipFile, "write", write)
    path = tmp_path/"cache"/"corpus"/f"{cfg.key()}.jsonl.gz"
    with pytest.raises(OSError) as e: build_corpus(cfg)
    assert_disk_full_error(e, path)
    assert n[0] >= 2 and entries(path.parent) == []
    monkeypatch.undo(); monkeypatch.setenv("SAE_TUTORIAL_CACHE", str(tmp_path/"cache"))
    built = build_corpus(cfg)                                  # works once there is space, and round-trips
    assert entries(path.parent) == [path.name] and list(build_corpus(cfg)) == list(built)
    assert sorted(" ".join(d.text for d in built).split()) == sorted(text.split())   # every word, nothing else

def test_damaged_corpus_cache_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_TUTORIAL_CACHE", str(tmp_path))
    f = tmp_path/"a.txt"; f.write_text("Some text.\n\nMore text.")
    cfg = CorpusConfig(sources={}, files=(str(f),))
    build_corpus(cfg)
    path = tmp_path/"corpus"/f"{cfg.key()}.jsonl.gz"
    path.write_bytes(path.read_bytes()[:-12])                  # truncated gzip
    with pytest.raises(ValueError, match="damaged") as e: build_corpus(cfg)
    assert f"rm {path}" in str(e.value)
    path.write_bytes(gzip.compress(b'{"text": "x"}\n'))         # valid gzip, wrong rows
    with pytest.raises(ValueError, match="damaged"): build_corpus(cfg)

# ---------------------------------------------------------------- damaged activation stores are refused, never half-loaded
@pytest.fixture
def store_dir(tmp_path):
    harvest_fake(tmp_path/"good")
    def copy():
        d = tmp_path/f"bad{len(list(tmp_path.iterdir()))}"; shutil.copytree(tmp_path/"good", d); return d
    return copy

def _refused(d, exc=ValueError, what=""):
    with pytest.raises(exc) as e: ActivationStore.load(d)
    msg = str(e.value)
    assert what in msg and "harvest it again" in msg and str(d) in msg, msg
    return msg

def test_truncated_or_padded_acts_bin(store_dir):
    d = store_dir(); b = (d/"acts.bin").read_bytes()
    (d/"acts.bin").write_bytes(b[:-4])
    assert f"{len(b) - 4:,} bytes" in _refused(d, what="truncated")
    (d/"acts.bin").write_bytes(b + b"\0" * 32); _refused(d, what="truncated")

def test_bad_meta_json(store_dir):
    d = store_dir(); (d/"meta.json").write_text('{"d_in": 8, "n_rows":')
    _refused(d, what="not valid JSON")
    d = store_dir(); m = json.loads((d/"meta.json").read_text()); del m["d_in"]; (d/"meta.json").write_text(json.dumps(m))
    _refused(d, what="['d_in']")
    d = store_dir(); m = json.loads((d/"meta.json").read_text()); m["n_rows"] += 1; (d/"meta.json").write_text(json.dumps(m))
    _refused(d, what="meta.json promises")                      # acts.bin is now one row short
    d = store_dir(); m = json.loads((d/"meta.json").read_text()); m["dtype"] = "int8"; (d/"meta.json").write_text(json.dumps(m))
    _refused(d, what="impossible values")

@pytest.mark.parametrize("key, value, what", [("scale", True, "['scale']"), ("n_rows", True, "['n_rows']"),
                                             ("train_batch_size", 0, "train_batch_size 0"),
                                             ("train_batch_size", -4, "train_batch_size -4")])
def test_meta_json_values_of_the_wrong_kind(store_dir, key, value, what):
    "A JSON true where a number belongs (Python reads it as 1) and a batch size below 1 are refused, not coerced."
    d = store_dir(); m = json.loads((d/"meta.json").read_text()); m[key] = value; (d/"meta.json").write_text(json.dumps(m))
    _refused(d, what=what)

def test_meta_json_that_is_not_a_regular_file_is_refused_at_once(store_dir):
    "A named pipe where meta.json should be would block a read forever: refused before any read."
    import os
    d = store_dir(); (d/"meta.json").unlink(); os.mkfifo(d/"meta.json")
    with pytest.raises(FileNotFoundError, match="no meta.json file"): ActivationStore.load(d)

@pytest.mark.parametrize("name", ["rows.npy", "tokens.npy", "doc_sources.json", "acts.bin"])
def test_missing_file(store_dir, name):
    d = store_dir(); (d/name).unlink()
    _refused(d, FileNotFoundError, f"lacks ['{name}']")

def test_truncated_or_inconsistent_npy(store_dir):
    d = store_dir(); b = (d/"norms.npy").read_bytes(); (d/"norms.npy").write_bytes(b[:len(b) // 2])
    _refused(d, what="norms.npy cannot be read")
    d = store_dir(); np.save(d/"mask.npy", np.zeros((3, 3), np.uint8)); _refused(d, what="expected shape [6, 10]")
    d = store_dir(); r = np.load(d/"rows.npy"); np.save(d/"rows.npy", r[::-1].copy())
    _refused(d, what="not the list of kept positions")
    d = store_dir(); (d/"doc_sources.json").write_text("[]"); _refused(d, what="does not name every document")

def test_pickled_npy_is_refused_not_unpickled(store_dir, tmp_path):
    "An object array (a pickle inside .npy) must not be unpickled: the pickle would create a marker file."
    d = store_dir(); marker = tmp_path/"unpickled"
    np.save(d/"tokens.npy", np.array([_Marker(str(marker))], dtype=object), allow_pickle=True)
    _refused(d, what="tokens.npy cannot be read")
    assert not marker.exists()

class _Marker:
    def __init__(self, path): self.path = path
    def __reduce__(self): return (Path.touch, (Path(self.path),))

# ---------------------------------------------------------------- the shared recipe in lm and reproduce
def test_atomic_dir_failure_and_another_process_first(tmp_path):
    final = tmp_path/"m"
    def boom(tmp): (tmp/"w.safetensors").write_bytes(b"half"); raise enospc()
    with pytest.raises(OSError) as e: lm_mod._atomic_dir(final, boom)
    assert_disk_full_error(e, final); assert entries(tmp_path) == []
    def raced(tmp):                                            # another process publishes while we build
        (tmp/"who").write_text("us"); final.mkdir(); (final/"who").write_text("them")
    assert lm_mod._atomic_dir(final, raced) == final
    assert (final/"who").read_text() == "them" and entries(tmp_path) == ["m"]
    assert lm_mod._atomic_dir(final, lambda tmp: pytest.fail("must not build again")) == final

def test_run_stage_clears_dead_writers_debris_only(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
    (tmp_path/f".s.tmp-{dead.pid}-x").mkdir(); (tmp_path/f".s.tmp-{os.getppid()}-y").mkdir()   # killed try; a live writer
    run_stage(tmp_path/"s", "k", lambda t: (t/"out").write_text("1"), log=lambda m: None)
    assert entries(tmp_path) == [f".s.tmp-{os.getppid()}-y", "s"] and stage_done(tmp_path/"s", "k")
    with pytest.raises(OSError) as e:
        run_stage(tmp_path/"s", "k2", lambda t: (_ for _ in ()).throw(enospc()), log=lambda m: None)
    assert_disk_full_error(e, tmp_path/"s")
    assert stage_done(tmp_path/"s", "k") and (tmp_path/"s"/"out").read_text() == "1"   # old result untouched
    (tmp_path/"s"/"stage.json").write_text("{half")           # an unreadable stage.json: not done, recomputed
    assert not stage_done(tmp_path/"s", "k")

def test_write_json_atomic_keeps_old_file_on_failure(tmp_path):
    p = write_json_atomic(tmp_path/"m.json", {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    with pytest.raises(TypeError): write_json_atomic(p, {"a": object()})
    assert json.loads(p.read_text()) == {"a": 1} and entries(tmp_path) == ["m.json"]

# ---------------------------------------------------------------- bad inputs name the fix
def test_hook_out_of_range_says_how_many_layers():
    model = lm().model
    n = model.cfg.n_layers
    assert n == 30 and "blocks.29.hook_resid_post" in model.hook_dict and "blocks.30.hook_resid_post" not in model.hook_dict
    with pytest.raises(ValueError) as e: harvest_activations(model, fake_contexts(), hook="blocks.99.hook_resid_post")
    msg = str(e.value)
    assert "layer 99 is out of range" in msg and "30 layers" in msg and "blocks.29" in msg and "'blocks.15.hook_resid_post'" in msg

@pytest.mark.parametrize("typo,want", [("blocks.15.hook_resid_pots", "blocks.15.hook_resid_post"),
                                      ("blocks.3.hook_mlp_outt", "blocks.3.hook_mlp_out")])
def test_unknown_hook_lists_closest_names(typo, want):
    model = lm().model
    with pytest.raises(ValueError) as e: validate_hook(model, typo)
    msg = str(e.value)
    assert "not a hook point" in msg and f"'{want}'" in msg.split("Closest names:")[1].split("]")[0]
    assert "hook_resid_pre" in msg and f"all {len(model.hook_dict)} names" in msg
    assert validate_hook(model, want) == want

def test_unknown_hook_on_fake_model_fails_before_any_forward(tmp_path):
    m = FakeLM(); m.run_with_cache = lambda *a, **k: pytest.fail("no forward pass for a bad hook")
    with pytest.raises(ValueError, match=r"has 3 layers \(blocks.0 to blocks.2\)"):
        harvest_activations(m, fake_contexts(), hook="blocks.3.hook_resid_post", store="disk", path=str(tmp_path/"s"))
    assert entries(tmp_path) == []

@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k): raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

def test_unknown_model_offline_suggests_the_local_name(no_network, tmp_path):
    with pytest.raises(ValueError) as e: load_lm("smollm2-135", device="cpu")
    assert "Did you mean 'smollm2-135m'?" in str(e.value) and "not reachable" in str(e.value)
    with pytest.raises(ValueError) as e: load_lm("no-such-org/no-such-model", device="cpu")
    assert "Did you mean" not in str(e.value) and "Available offline: 'smollm2-135m'" in str(e.value)
    (tmp_path/"weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="folder without config.json"): load_lm(str(tmp_path), device="cpu")

def test_empty_corpus_is_named(tmp_path):
    empty = tmp_path/"empty.txt"; empty.write_text("  \n\n \n")
    with pytest.raises(ValueError) as e: build_corpus(CorpusConfig(sources={}, files=(str(empty),)), cache=False)
    assert "The corpus is empty" in str(e.value) and str(empty) in str(e.value)
    with pytest.raises(ValueError, match="The corpus is empty: give some sources"):
        build_corpus(CorpusConfig(sources={"sotu": 0.0}), cache=False)
    with pytest.raises(ValueError, match="corpus is empty"): tokenize_contexts([], tokenizer=None)

def test_download_with_wrong_sha256_is_not_cached(tmp_path, monkeypatch):
    "pip (faked, no network) delivers a file whose hash is not the pin: nothing enters the cache."
    payload = b"a wheel from a strange mirror"
    arch = PinnedArchive("pkg==1.0", "pkg-1.0-py3-none-any.whl", hashlib.sha256(b"the real wheel").hexdigest())
    cmds = []
    def fake_pip(cmd, **kw):
        cmds.append(cmd); d = Path(cmd[cmd.index("-d") + 1]); (d/arch.filename).write_bytes(payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(subprocess, "run", fake_pip)
    with pytest.raises(ValueError) as e: fetch_archive(arch, dest=tmp_path)
    msg = str(e.value)
    assert hashlib.sha256(payload).hexdigest() in msg and arch.sha256 in msg and "nothing was saved" in msg
    assert "--no-deps" in cmds[0] and "pkg==1.0" in cmds[0] and entries(tmp_path) == []
    good = arch._replace(sha256=hashlib.sha256(payload).hexdigest())      # the same file under the right pin is kept
    assert fetch_archive(good, dest=tmp_path).read_bytes() == payload and entries(tmp_path) == [arch.filename]

def test_download_killed_earlier_leaves_nothing(tmp_path, monkeypatch):
    """A pip download killed mid-way leaves its temporary folder; the next fetch removes it (its process is gone),
    keeps a live process's, and leaves only the verified file."""
    payload = b"the real wheel"
    arch = PinnedArchive("pkg==1.0", "pkg-1.0-py3-none-any.whl", hashlib.sha256(payload).hexdigest())
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()          # a pid that no longer runs
    stale = tmp_path/f".{arch.filename}.tmp-{dead.pid}-abc"; stale.mkdir(); (stale/"partial").write_bytes(b"x")
    live = tmp_path/f".{arch.filename}.tmp-{os.getppid()}-def"; live.mkdir()      # a running process's: kept
    def fake_pip(cmd, **kw):
        d = Path(cmd[cmd.index("-d") + 1]); (d/arch.filename).write_bytes(payload)
        assert d.name.startswith(f".{arch.filename}.tmp-{os.getpid()}-")           # named so a later run can clean it
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(subprocess, "run", fake_pip)
    assert fetch_archive(arch, dest=tmp_path).read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([arch.filename, live.name])

def test_sae_and_store_of_different_width(tmp_path):
    from sae_tutorial.sae import SAEConfig, make_sae
    store = harvest_activations(FakeLM(), fake_contexts(), hook="blocks.0.hook_resid_post", progress=False, special_ids=(0,))
    sae = make_sae(SAEConfig(d_in=16, expansion_factor=2.0))
    for call in (lambda: encode_rows(sae, store),
                 lambda: evaluate_sae(sae, SAESpec("x", "relu", 2.0, 0, False), ReproConfig(preset="ci").resolved(), store)):
        with pytest.raises(ValueError) as e: call()
        assert "d_in=16" in str(e.value) and "d_in=8" in str(e.value) and "hook it was trained on" in str(e.value)
    ok = make_sae(SAEConfig(d_in=8, expansion_factor=2.0))
    assert encode_rows(ok, store).shape == (store.n_rows, 16)

# ---------------------------------------------------------------- nothing unpickles
def unsafe_loads(source: str, name: str = "<src>") -> list[str]:
    "Calls that could unpickle: torch.load without weights_only=True, np.load without allow_pickle=False, pickle-family loads, allow_pickle=True."
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call): continue
        kw = {k.arg: k.value for k in node.keywords}
        const = lambda k: getattr(kw.get(k), "value", None)
        f = node.func
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
        attr = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        where = f"{name}:{node.lineno}"
        if owner == "torch" and attr == "load" and const("weights_only") is not True: bad.append(f"{where} torch.load")
        if owner in ("np", "numpy") and attr == "load" and const("allow_pickle") is not False: bad.append(f"{where} np.load")
        if owner in ("pickle", "cPickle", "dill", "joblib", "cloudpickle") and attr in ("load", "loads"): bad.append(f"{where} {owner}.{attr}")
        if "allow_pickle" in kw and const("allow_pickle") is not False and not (owner in ("np", "numpy") and attr == "save"):
            bad.append(f"{where} allow_pickle")
    return bad

def test_scanner_catches_each_unsafe_pattern():
    src = ("import torch, numpy as np, pickle\ntorch.load('a')\ntorch.load('a', weights_only=False)\n"
           "np.load('a')\nnp.load('a', allow_pickle=True)\npickle.load(f)\npickle.loads(b)\n"
           "torch.load('a', weights_only=True)\nnp.load('a', allow_pickle=False)\n")
    assert [b.split()[1] for b in unsafe_loads(src)] == ["torch.load", "torch.load", "np.load", "np.load", "allow_pickle",
                                                         "pickle.load", "pickle.loads"]

def test_package_never_unpickles():
    root = Path(act_mod.__file__).parent
    files = sorted(root.glob("*.py"))
    assert len(files) > 10
    bad = [b for p in files for b in unsafe_loads(p.read_text(), p.name)]
    assert bad == [], f"unpickling calls: {bad}"
    text = "\n".join(p.read_text() for p in files)
    assert "pickle.load" not in text and "allow_pickle=True" not in text


@pytest.mark.parametrize("file, edit, what", [
    ("doc_index", lambda a: a.__setitem__((0, 1), -7), "document indices are >= -1"),
    ("tokens", lambda a: a.__setitem__((0, 1), -5), "outside any vocabulary"),
    ("norms", lambda a: a.__setitem__((0, 1), np.nan), "norms.npy holds NaN or Inf"),
])
def test_store_arrays_with_impossible_values(store_dir, file, edit, what):
    "Negative document indices, negative token ids and NaN norms are refused at load, naming the file."
    d = store_dir(); a = np.load(d/f"{file}.npy"); edit(a); np.save(d/f"{file}.npy", a)
    _refused(d, what=what)

def test_nan_in_acts_bin_is_refused_when_read(store_dir):
    "A NaN inside acts.bin (same size, so meta.json cannot tell) is refused when its row is read, naming the row."
    d = store_dir(); s = ActivationStore.load(d)
    raw = np.fromfile(d/"acts.bin", dtype=np.float32); raw[3 * s.d_in + 2] = np.nan; raw.tofile(d/"acts.bin")
    s = ActivationStore.load(d)
    with pytest.raises(ValueError, match=r"Rows \[3\].*hold NaN or Inf.*harvest it again"): s.get([1, 3])
    with pytest.raises(ValueError, match="hold NaN or Inf"): list(s.batches(4, shuffle=False))
