"""A reproduction's SAE training (the `sae-tutorial train` / `reproduce` path, issue #13) killed with SIGKILL
mid-run continues from its last checkpoint: at most a tenth of the run is lost, and the finished SAE, loss curve and
training curve equal an uninterrupted run's. The store is a small disk ActivationStore of planted sparse features
(distributed.write_disk_store) and there is no language model (model=None), so the test needs no harvest."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sae_tutorial.activations import ActivationStore
from sae_tutorial.distributed import write_disk_store
from sae_tutorial.reproduce import ReproConfig, ReluSettings, TopKSettings, SAESpec, train_sae
from sae_tutorial.sae import SAE

pytestmark = pytest.mark.usefixtures("torch_one_thread")   # bit-identical runs need a fixed thread count
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STEPS, BATCH = 200, 64


def planted_store(folder: Path) -> Path:
    "A real disk ActivationStore (distributed.write_disk_store) of rows made of planted sparse features."
    if not folder.exists():
        g = torch.Generator().manual_seed(0)
        D = F.normalize(torch.randn(48, 16, generator=g), dim=1)
        acts = (torch.rand(2048, 48, generator=g) < 3 / 48) * torch.rand(2048, 48, generator=g)
        write_disk_store(acts @ D + 0.01 * torch.randn(2048, 16, generator=g), folder)
    return folder


def open_store(folder: Path, pause: float = 0.0, report: bool = False) -> ActivationStore:
    "The store; `pause` slows each batch (so the parent can kill the child mid-run), `report` prints its index."
    store = ActivationStore.load(folder)
    if pause or report:
        plain, drawn = store.batches, [0]
        def batches(*args, **kw):
            for x in plain(*args, **kw):
                time.sleep(pause)
                if report: print(f"batch {drawn[0]}", flush=True)
                drawn[0] += 1
                yield x
        store.batches = batches
    return store


CFG = ReproConfig(preset="ci", expansion=4, archs="relu", steps=STEPS, batch_size=BATCH,
                  relu=ReluSettings(l1_coeff=3e-3, lr=3e-3), topk=TopKSettings(k=4),
                  curve_points=5, ctx_len=8, ce_tokens=32, progress=False)
SPEC = SAESpec("relu", "relu", 4, 0, True)


def run_child(store: str, out: str, ck: str) -> None:
    "What the killed subprocess runs (it imports this module, so both sides train exactly the same thing)."
    torch.set_num_threads(1)
    train_sae(SPEC, CFG, open_store(Path(store), pause=0.01, report=True), open_store(Path(store)), Path(out), None,
              log=lambda s: None, ckpt_dir=Path(ck))


def test_sigkill_mid_training_then_resume_equals_uninterrupted(tmp_path):
    ck, store = tmp_path/"ck", planted_store(tmp_path/"store")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", f"import test_reproduce_resume as t; "
                              f"t.run_child({str(store)!r}, {str(tmp_path/'out_killed')!r}, {str(ck)!r})"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 90
    try:
        while len(list(ck.glob("step_*"))) < 2:              # two checkpoints written: well into the run
            assert child.poll() is None, "the child stopped early:\n" + child.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the child is too slow"
            time.sleep(0.05)
        time.sleep(0.3)                                      # mid-interval
        child.send_signal(signal.SIGKILL)
        printed, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None: child.kill(); child.wait()
    assert child.returncode == -signal.SIGKILL
    newest = max(ck.glob("step_*"))
    state = json.loads((newest/"state.json").read_text())["state"]
    saved = state["step"]
    assert saved >= 2 * (STEPS // 10) and saved < STEPS        # killed part-way, after two checkpoints
    drawn = int(printed.split()[-1]) + 1                       # training batches the child had drawn when it died
    # lost: at most one checkpoint interval of steps, plus the batches a resampling draws (512 inputs = 8 batches)
    assert 0 < drawn - state["batches_drawn"] <= STEPS // 10 + 8, (drawn, state)

    logs = []
    resumed = train_sae(SPEC, CFG, open_store(store), open_store(store), tmp_path/"out_resumed", None, log=logs.append, ckpt_dir=ck)
    assert any(f"resuming from {newest.name}" in s for s in logs), logs
    assert resumed["resumed_at_batch"] == state["batches_drawn"]
    full = train_sae(SPEC, CFG, open_store(store), open_store(store), tmp_path/"out_full", None, log=lambda s: None,
                     ckpt_dir=tmp_path/"ck_full")
    assert full["resumed_at_batch"] is None
    a, b = SAE.load(tmp_path/"out_full"), SAE.load(tmp_path/"out_resumed")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    assert resumed["history"] == full["history"]               # the killed child's part, then the resumed part
    assert resumed["curve"] == full["curve"] and len(full["curve"]) == 5   # points before the kill came from curve.json
    assert resumed["steps"] == full["steps"] == STEPS
