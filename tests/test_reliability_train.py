"""Reliability of the trainer (issue #13): a run killed with SIGKILL resumes bit-for-bit; damaged checkpoints and
checkpoints of another SAE are refused with an error naming the folder and the fix, before anything is loaded;
checkpoint writes are atomic; the same seed gives bit-identical SAEs on CPU."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from sae_tutorial.core import seed_everything
from sae_tutorial.sae import SAEConfig, make_sae
from sae_tutorial.losses import LossConfig
from sae_tutorial import checkpoint as checkpoint_mod
from sae_tutorial.train import TrainConfig, TrainHistory, FeatureUsage, train, make_optimizer, make_scheduler
from sae_tutorial.toy import SparseFeatureData
from sae_tutorial.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, latest_checkpoint, prune_checkpoints

pytestmark = pytest.mark.usefixtures("torch_one_thread")    # conftest.py: bit-identical runs need a fixed thread count
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# ---------------------------------------------------------------- the run that gets killed
D_IN, B, STEPS, EVERY, KILL_AT = 16, 64, 400, 40, 145
SAE_CFG = SAEConfig(d_in=D_IN, expansion_factor=4)
LOSS_CFG = LossConfig(sparsity_coeff=3e-3)

def _train_cfg(ck) -> TrainConfig:
    "Warm-up, cosine decay, clipping, a short dead window and Anthropic resampling on both sides of the kill."
    return TrainConfig(lr=3e-3, steps=STEPS, warmup_steps=20, clip_grad_norm=0.5, dead_window=4 * B,
                       resample="anthropic", resample_every=50, resample_stop=0.9, resample_inputs=B,  # no extra draws:
                       checkpoint_every=EVERY, checkpoint_dir=str(ck), keep_checkpoints=2,    # batch i = step i
                       progress=False, log_every=7, seed=3)

def _fresh_sae():
    torch.manual_seed(0)
    sae = make_sae(SAE_CFG)
    with torch.no_grad(): sae.b_enc[:8] = -100.0          # eight latents that cannot fire: resampling must happen
    return sae

def _batches(report: bool = False, pause: float = 0.0):
    "The data: planted sparse features from a seeded generator. `report` prints each batch index as it is drawn."
    for i, x in enumerate(SparseFeatureData(d_in=D_IN, n_features=48, mean_active=3, seed=0).batches(B, seed=1)):
        if report: print(i, flush=True)
        if pause: time.sleep(pause)                       # slow the child down so the parent can kill it mid-run
        yield x

def run_child(ck: str) -> None:
    "What the killed subprocess runs (it imports this module, so both sides train exactly the same thing)."
    torch.set_num_threads(1)
    train(_fresh_sae(), _batches(report=True, pause=0.004), LOSS_CFG, _train_cfg(ck))


def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path):
    ck = tmp_path/"ck"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", f"import test_reliability_train as t; t.run_child({str(ck)!r})"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    last, deadline = -1, time.monotonic() + 60
    try:
        while last < KILL_AT:                             # wait until it is well past a checkpoint, mid-interval
            line = child.stdout.readline()
            assert line, "the child stopped early:\n" + child.stderr.read()[-3000:]
            last = int(line)
            assert time.monotonic() < deadline, "the child is too slow"
        assert child.poll() is None                       # still training when it is killed
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None: child.kill(); child.wait()
    assert child.returncode == -signal.SIGKILL
    last = max([last] + [int(s) for s in rest.split()])   # the last batch it drew before it died
    ckpt = latest_checkpoint(ck)
    assert ckpt is not None and ckpt.name.startswith("step_")
    saved = json.loads((ckpt/"state.json").read_text())["state"]["step"]
    # (a) batch i is drawn at the start of step i, so it had done at most last + 1 steps: lost <= one interval
    assert saved % EVERY == 0 and saved >= EVERY and (last + 1) - saved <= EVERY, (last, saved)
    assert all(p.name.startswith("step_") for p in ck.iterdir() if not p.name.startswith("."))   # nothing half-made

    full = train(_fresh_sae(), _batches(), LOSS_CFG, _train_cfg(tmp_path/"ck_full"))
    torch.manual_seed(123)                                 # the resume must not depend on the global RNG as it is now
    resumed = train(make_sae(SAE_CFG), _batches(), LOSS_CFG, _train_cfg(ck), resume_from=ck)
    # (b) the same loss curve (the killed child's part and the resumed part) and bit-identical weights
    assert resumed.steps == full.steps == STEPS
    assert {e.step for e in full.resamples} & set(range(saved)) and {e.step for e in full.resamples} & set(range(saved, STEPS))
    assert resumed.resamples == full.resamples
    assert resumed.history.step == full.history.step and resumed.history.loss == full.history.loss
    assert resumed.history.dead == full.history.dead
    for (n, a), b in zip(full.sae.named_parameters(), resumed.sae.parameters()): assert torch.equal(a, b), n
    assert not [p.name for p in ck.iterdir() if p.name.startswith(".")]   # no temporary debris once it has finished


# ---------------------------------------------------------------- damaged checkpoints
def _objects(sae):
    "The objects `train` would load a checkpoint into."
    cfg = TrainConfig(lr=3e-3, steps=20, warmup_steps=3)
    opt = make_optimizer(sae, cfg)
    return opt, make_scheduler(opt, cfg, 20), FeatureUsage(sae.W_dec.shape[0], 256), torch.Generator().manual_seed(5)

def _snapshot(sae, opt, sched, usage, gen):
    return ({k: v.clone() for k, v in sae.state_dict().items()}, repr(opt.state_dict()), repr(sched.state_dict()),
            repr(usage.state_dict()), gen.get_state().clone())

def _unchanged(before, after):
    (w0, *rest0), (w1, *rest1) = before, after
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert rest0[:3] == rest1[:3] and torch.equal(rest0[3], rest1[3])

@pytest.fixture(scope="module")
def ckdir(tmp_path_factory):
    "A short run with checkpoints at steps 10 and 20 (both kept); tests copy it before damaging it."
    ck = tmp_path_factory.mktemp("ck")/"ck"
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2))
    train(sae, SparseFeatureData(d_in=8, n_features=16, seed=0).batches(32, seed=1), LossConfig(),
          TrainConfig(lr=3e-3, steps=20, warmup_steps=3, checkpoint_every=10, checkpoint_dir=str(ck), progress=False))
    assert sorted(p.name for p in ck.iterdir()) == ["step_000000010", "step_000000020"]
    return ck

def _truncate(p: Path): p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
def _flip_byte(p: Path):
    b = bytearray(p.read_bytes()); b[-5] ^= 0xFF; p.write_bytes(bytes(b))   # same size: only the sha256 can tell

def _edit_json(p: Path, change):
    meta = json.loads(p.read_text()); change(meta); p.write_text(json.dumps(meta))

DAMAGE = {
    "truncated state.safetensors": (lambda c: _truncate(c/"state.safetensors"), "state.safetensors has"),
    "flipped byte in the weights": (lambda c: _flip_byte(c/"sae"/"sae.safetensors"), "sha256"),
    "missing state.json": (lambda c: (c/"state.json").unlink(), "state.json is missing"),
    "state.json not JSON": (lambda c: (c/"state.json").write_text('{"state": {"st'), "not valid JSON"),
    "state.json without fields": (lambda c: (c/"state.json").write_text("{}"), "lacks"),
    "state.json with a wrong type": (lambda c: _edit_json(c/"state.json", lambda m: m["usage"].update(sizes=["x"])), "ValueError"),
    "state.json with a bad file list": (lambda c: _edit_json(c/"state.json", lambda m: m.update(files=[1])), "malformed"),
    "missing sae weights": (lambda c: (c/"sae"/"sae.safetensors").unlink(), "sae/sae.safetensors is missing"),
    "missing sae folder": (lambda c: __import__("shutil").rmtree(c/"sae"), "is missing"),
}

@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_refused_and_nothing_is_loaded(ckdir, tmp_path, damage):
    import shutil
    ck = tmp_path/"ck"; shutil.copytree(ckdir, ck)
    newest = ck/"step_000000020"
    hurt, says = DAMAGE[damage]
    hurt(newest)
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2))
    objs = _objects(sae)
    before = _snapshot(sae, *objs)
    for where in (ck, newest):                             # the checkpoint_dir (newest is used) or the folder itself
        with pytest.raises(CheckpointError) as e: load_checkpoint(where, sae, *objs)
        msg = str(e.value)
        assert str(newest) in msg and says in msg, msg
        assert f"Delete {newest}" in msg and str(ck/"step_000000010") in msg, msg   # the fix: the previous checkpoint
        _unchanged(before, _snapshot(sae, *objs))           # never half-loaded
    # the advice works: without the damaged folder the run resumes from step 10
    shutil.rmtree(newest)
    ckpt = load_checkpoint(ck, sae, *objs)
    assert ckpt.state["step"] == 10 and ckpt.path == ck/"step_000000010"
    assert not torch.equal(sae.state_dict()["W_dec"], before[0]["W_dec"])

def test_damaged_only_checkpoint_says_to_start_again(ckdir, tmp_path):
    import shutil
    ck = tmp_path/"one"; shutil.copytree(ckdir/"step_000000010", ck/"step_000000010")
    _truncate(ck/"step_000000010"/"state.safetensors")
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2))
    with pytest.raises(CheckpointError, match="no earlier step_"): train(sae, [], resume_from=ck)

def test_truncated_file_without_a_manifest_is_still_caught(ckdir, tmp_path):
    "Checkpoints written before the manifest existed: safetensors itself notices a truncated file."
    import shutil
    c = tmp_path/"c"; shutil.copytree(ckdir/"step_000000010", c)
    meta = json.loads((c/"state.json").read_text()); del meta["files"]; del meta["state_sha256"]   # neither existed then
    (c/"state.json").write_text(json.dumps(meta))
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2))
    objs = _objects(sae)
    load_checkpoint(c, sae, *objs)                         # intact: loads
    _truncate(c/"state.safetensors")
    sae2 = make_sae(SAEConfig(d_in=8, expansion_factor=2)); objs2 = _objects(sae2); before = _snapshot(sae2, *objs2)
    with pytest.raises(CheckpointError, match="state.safetensors cannot be read"): load_checkpoint(c, sae2, *objs2)
    _unchanged(before, _snapshot(sae2, *objs2))


# ---------------------------------------------------------------- a checkpoint of another SAE
@pytest.mark.parametrize("other", [dict(architecture="topk", k=4), dict(expansion_factor=4), dict(d_in=12)])
def test_checkpoint_of_another_sae_names_both_configs(ckdir, other):
    cfg = SAEConfig(**{"d_in": 8, "expansion_factor": 2, **other})
    sae = make_sae(cfg)
    objs = _objects(sae); before = _snapshot(sae, *objs)
    with pytest.raises(CheckpointError) as e: load_checkpoint(ckdir, sae, *objs)
    msg = str(e.value)
    assert "architecture='relu', d_in=8, d_sae=16," in msg                        # the checkpoint's SAE
    want = f"architecture={cfg.architecture!r}, d_in={cfg.d_in}, d_sae={cfg.d_sae}" + (", k=4" if "k" in other else "")
    assert want in msg and "SAE.load(" in msg and str(ckdir/"step_000000020") in msg, msg   # this SAE, and the fix
    _unchanged(before, _snapshot(sae, *objs))

def test_topk_checkpoint_with_another_k_is_refused(tmp_path):
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2, architecture="topk", k=4))
    train(sae, SparseFeatureData(d_in=8, n_features=16, seed=0).batches(32, seed=1), LossConfig(sparsity="none"),
          TrainConfig(steps=4, checkpoint_every=4, checkpoint_dir=str(tmp_path), progress=False))
    other = make_sae(SAEConfig(d_in=8, expansion_factor=2, architecture="topk", k=3))
    with pytest.raises(CheckpointError, match=r"k=4.*k=3"): load_checkpoint(tmp_path, other, *_objects(other))

def test_checkpoint_with_another_schedule_is_refused(ckdir):
    "A warm-up checkpoint (SequentialLR) resumed without warm-up (a bare cosine) would silently mix two schedules."
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2))
    opt, _, usage, gen = _objects(sae)
    cosine = make_scheduler(opt, TrainConfig(steps=20), 20)
    with pytest.raises(CheckpointError, match="learning-rate schedule"): load_checkpoint(ckdir, sae, opt, cosine, usage, gen)


# ---------------------------------------------------------------- atomic writes
def test_failed_checkpoint_write_leaves_the_old_one_untouched(ckdir, tmp_path, monkeypatch):
    "A write that dies half-way (disk full, say) neither publishes a partial folder nor damages the one it would replace."
    import shutil
    ck = tmp_path/"ck"; shutil.copytree(ckdir, ck)
    target = ck/"step_000000020"
    old = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2)); opt, sched, usage, gen = _objects(sae)
    def full_disk(tensors, path, *a, **k):
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint_mod, "save_file", full_disk)
    args = (sae, opt, sched, usage, gen, {"step": 20, "batches_drawn": 20}, TrainHistory(), [], TrainConfig())
    for folder in (target, ck/"step_000000030"):          # overwriting an existing checkpoint, and a new one
        with pytest.raises(OSError, match="No space left"): save_checkpoint(folder, *args)
    assert sorted(p.name for p in ck.iterdir()) == ["step_000000010", "step_000000020"]   # no debris, nothing new
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == old
    fresh = make_sae(SAEConfig(d_in=8, expansion_factor=2))
    assert load_checkpoint(ck, fresh, *_objects(fresh)).state["step"] == 20   # and it still loads

def test_prune_keeps_the_newest_and_clears_a_killed_prune(tmp_path):
    for s in (5, 10, 15, 20): (tmp_path/f"step_{s:09d}").mkdir(); (tmp_path/f"step_{s:09d}"/"x").write_text("1")
    (tmp_path/".trash-step_000000001").mkdir()             # what a kill in the middle of a prune leaves behind
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000015", "step_000000020"]


# ---------------------------------------------------------------- determinism
def _seeded_run(arch: str, seed: int, trainer_seed: int | None = None):
    "Everything from one seed: init, data, trainer (resampling draws). Dead latents are planted so resampling happens."
    seed_everything(seed)
    sae = make_sae(SAEConfig(d_in=D_IN, expansion_factor=4, architecture=arch, k=4))
    with torch.no_grad(): sae.b_enc[:6] = -100.0
    data = SparseFeatureData(d_in=D_IN, n_features=48, mean_active=3, seed=seed)
    loss_cfg = LossConfig(sparsity="l1", sparsity_coeff=3e-3) if arch == "relu" else LossConfig(sparsity="none", aux="auxk")
    cfg = TrainConfig(lr=3e-3, steps=40, warmup_steps=5, dead_window=4 * 32, resample="anthropic", resample_steps=[20],
                      resample_inputs=64, progress=False, log_every=10, seed=seed if trainer_seed is None else trainer_seed)
    return train(sae, data.batches(32, seed=seed + 1), loss_cfg, cfg)

@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_same_seed_gives_bit_identical_weights_on_cpu(arch):
    a, b = _seeded_run(arch, 0), _seeded_run(arch, 0)
    assert len(a.resamples) == 1 and a.resamples == b.resamples
    assert a.history.loss == b.history.loss
    for (n, p), q in zip(a.sae.named_parameters(), b.sae.parameters()): assert torch.equal(p, q), n

@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_another_seed_gives_other_weights(arch):
    a = _seeded_run(arch, 0)
    assert not torch.equal(a.sae.W_dec, _seeded_run(arch, 1).sae.W_dec)
    # the trainer's own seed alone (resampling draws) changes the result too: it is really used
    c = _seeded_run(arch, 0, trainer_seed=7)
    assert a.history.loss[:20] == c.history.loss[:20] and not torch.equal(a.sae.W_dec, c.sae.W_dec)


# ---------------------------------------------------------------- a checkpoint whose state.json was edited, or another run's
EDITS = {
    "betas removed": (lambda m: [g.pop("betas") for g in m["param_groups"]], "betas are None"),
    "lr a string": (lambda m: [g.update(lr="fast") for g in m["param_groups"]], "learning rate is 'fast'"),
    "step past the run": (lambda m: m["state"].update(step=1_000_000, batches_drawn=1_000_000), "past the 20 steps of this run"),
    "step after the data": (lambda m: m["state"].update(step=15), None),   # well-formed: only the hash can tell
}

@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_state_json_is_refused(ckdir, tmp_path, edit):
    "state.json is validated (Adam's settings, the position) and covered by its own sha256: an edit is named, nothing loads."
    import shutil
    ck = tmp_path/"ck"; shutil.copytree(ckdir, ck)
    change, says = EDITS[edit]
    _edit_json(ck/"step_000000020"/"state.json", change)
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2)); objs = _objects(sae); before = _snapshot(sae, *objs)
    cfg = TrainConfig(lr=3e-3, steps=20, warmup_steps=3, checkpoint_every=10, checkpoint_dir=str(ck), progress=False)
    with pytest.raises(CheckpointError) as e: load_checkpoint(ck, sae, *objs, cfg, 20)
    assert (says or "does not match the sha256 recorded in it") in str(e.value), str(e.value)
    _unchanged(before, _snapshot(sae, *objs))

def test_resuming_under_other_settings_says_what_differs(ckdir, tmp_path):
    "The same checkpoint resumed with more steps and another lr: refused with both differences named, unless asked."
    import shutil
    ck = tmp_path/"ck"; shutil.copytree(ckdir, ck)
    data = lambda: SparseFeatureData(d_in=8, n_features=16, seed=0).batches(32, seed=1)
    other = TrainConfig(lr=1e-3, steps=40, warmup_steps=3, progress=False)
    with pytest.raises(CheckpointError, match="steps: 20 then, 40 now.*resume_changed_config=True"):
        train(make_sae(SAEConfig(d_in=8, expansion_factor=2)), data(), LossConfig(), other, resume_from=ck)
    with pytest.raises(CheckpointError, match="lr: 0.003 then, 0.001 now"):
        train(make_sae(SAEConfig(d_in=8, expansion_factor=2)), data(), LossConfig(), other, resume_from=ck)
    res = train(make_sae(SAEConfig(d_in=8, expansion_factor=2)), data(), LossConfig(),
                TrainConfig(lr=1e-3, steps=40, warmup_steps=3, progress=False, resume_changed_config=True), resume_from=ck)
    assert res.steps == 40
