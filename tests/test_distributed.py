"""Data-parallel training (sae_tutorial.distributed): sharded reading of the disk store, synchronised dead-latent
statistics, memory arithmetic, and the main check: `torchrun --nproc_per_node 2` (gloo on CPU) trains to the
weights one process gets with the same global batch and seed (the training notebook's `train` is the reference)."""
import itertools, json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from sae_tutorial.sae import SAE, SAEConfig, make_sae
from sae_tutorial.losses import LossConfig
from sae_tutorial.train import TrainConfig, FeatureUsage, train
from sae_tutorial.toy import SparseFeatureData
from sae_tutorial.activations import ActivationStore
from sae_tutorial.distributed import (DDPJob, SyncedFeatureUsage, global_batches, memory_estimate, n_params,
                                      activation_bytes, shard_indices, sharded_batches, train_ddp, write_disk_store,
                                      ACT_TENSORS_SAE, ACT_TENSORS_IN)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("torch_one_thread")   # tiny SAEs: one thread (conftest.py)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    data = SparseFeatureData(d_in=16, n_features=48, mean_active=3, seed=0)
    x = data.sample(1000, torch.Generator().manual_seed(1))
    return ActivationStore.load(write_disk_store(x, tmp_path_factory.mktemp("s")/"store", seed=7))


def test_disk_store_round_trip(store):
    "write_disk_store writes what ActivationStore.load reads back, row for row."
    x = SparseFeatureData(d_in=16, n_features=48, mean_active=3, seed=0).sample(1000, torch.Generator().manual_seed(1))
    assert len(store) == 1000 and store.d_in == 16
    idx = np.array([0, 999, 5, 5, 123])
    torch.testing.assert_close(store.get(idx), x[idx], rtol=0, atol=0)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_shards_partition_each_global_batch(store, world):
    "Shards are disjoint, equal-sized and, side by side, are exactly store.batches(B, seed, drop_last=True)."
    B = 96
    ref = list(store.batches(B, seed=3, drop_last=True))
    shards = [list(sharded_batches(store, B, r, world, seed=3)) for r in range(world)]
    assert len(ref) == 1000 // B and all(len(s) == len(ref) for s in shards)
    for i, g in enumerate(ref):
        torch.testing.assert_close(torch.cat([s[i] for s in shards]), g, rtol=0, atol=0)
    idx = [np.concatenate(list(shard_indices(1000, B, r, world, seed=3))) for r in range(world)]
    allidx = np.concatenate(idx)
    assert len(np.unique(allidx)) == len(allidx) == (1000 // B) * B        # disjoint, nothing read twice


def test_shards_bad_sizes(store):
    with pytest.raises(ValueError, match="divisible by world_size"): next(sharded_batches(store, 99, 0, 2))
    with pytest.raises(ValueError, match="exceeds"): next(sharded_batches(store, 2000, 0, 2))
    with pytest.raises(ValueError, match="rank"): next(shard_indices(100, 10, 2, 2))


def test_epochs_reshuffle(store):
    "Epoch e uses seed + e, like ActivationStore.__iter__."
    two = list(sharded_batches(store, 100, 0, 1, seed=0, epochs=2))
    torch.testing.assert_close(two[10], next(store.batches(100, seed=1, drop_last=True)), rtol=0, atol=0)


def test_synced_usage_without_group_equals_feature_usage():
    "With no process group, SyncedFeatureUsage is FeatureUsage (same counts, last-fired times and dead masks)."
    g = torch.Generator().manual_seed(0)
    a, b = FeatureUsage(12, window=50, threshold=0.1), SyncedFeatureUsage(12, window=50, threshold=0.1)
    for _ in range(20):
        f = torch.rand(7, 12, generator=g) * (torch.rand(7, 12, generator=g) < 0.05)
        a.update(f); b.update(f)
        assert torch.equal(a.counts, b.counts) and torch.equal(a.last_fired, b.last_fired)
        assert torch.equal(a.dead_mask(), b.dead_mask()) and a.window_tokens == b.window_tokens


def test_memory_numbers_by_hand():
    "The two sizes of the issue, worked by hand: P = 2·d_in·d_sae + d_sae + d_in; 16 bytes per parameter."
    assert n_params(768, 24576) == 2 * 768 * 24576 + 24576 + 768 == 37_774_080
    m = memory_estimate(768, 32, 4096)
    assert m.weights == 4 * 37_774_080 and m.adam == 8 * 37_774_080
    assert m.activations == 4096 * (5 * 768 + 4 * 24576) * 4
    assert m.total == 16 * 37_774_080 + 4096 * (5 * 768 + 4 * 24576) * 4 == 2_277_912_576  # 2.12 GiB
    m2 = memory_estimate(2304, 16, 4096)
    assert m2.params == 2 * 2304 * 36864 + 36864 + 2304
    assert m2.total == 16 * 169_908_480 + 4096 * (5 * 2304 + 4 * 36864) * 4 == 5_323_198_464  # 4.96 GiB


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka"])
@pytest.mark.parametrize("ef", [4, 32])
def test_activation_factor_is_an_upper_bound(arch, ef):
    "Tensors alive when backward starts plus the transient gradients stay within the table's floats per row."
    d_in, b = 16, 128
    sae = make_sae(SAEConfig(d_in=d_in, expansion_factor=ef, architecture=arch, k=4))
    lc = LossConfig(sparsity="jumprelu_l0" if arch == "jumprelu" else "l1")
    alive = activation_bytes(sae, torch.randn(b, d_in), lc) / (b * 4)          # floats per row
    assert alive >= 2 * sae.cfg.d_sae + d_in              # independent floor: f, pre and x_hat are alive
    assert alive + 2 * sae.cfg.d_sae + d_in <= ACT_TENSORS_SAE[arch] * sae.cfg.d_sae + ACT_TENSORS_IN * d_in


def test_train_ddp_single_process_is_train(store):
    "Without a process group, train_ddp is train: same history and same weights."
    sae_cfg = SAEConfig(d_in=16, expansion_factor=2)
    tc = TrainConfig(lr=3e-3, steps=15, progress=False, dead_window=64, resample="random", resample_steps=[8], log_every=5)
    torch.manual_seed(0); s0 = make_sae(sae_cfg)
    with torch.no_grad(): s0.b_enc[:3] = -100.0
    a, b = make_sae(sae_cfg), make_sae(sae_cfg)
    a.load_state_dict(s0.state_dict()); b.load_state_dict(s0.state_dict())
    ra = train(a, global_batches(store, 50, epochs=None), LossConfig(), tc)
    rb = train_ddp(b, global_batches(store, 50, epochs=None), LossConfig(), tc)
    assert ra.resamples == rb.resamples and len(ra.resamples) == 1
    assert ra.history.loss == rb.history.loss and ra.history.dead == rb.history.dead
    for k, v in ra.sae.state_dict().items(): torch.testing.assert_close(rb.sae.state_dict()[k], v, rtol=0, atol=0)


def torchrun_two_ranks(job: DDPJob, tmp_path, timeout: int) -> subprocess.CompletedProcess:
    "`torchrun --nproc_per_node 2 -m sae_tutorial.distributed --job ... --cpu` (gloo) on `job`, saved in tmp_path."
    job.save(tmp_path/"job.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "sae_tutorial.distributed", "--job", str(tmp_path/"job.json"), "--cpu"],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)


def test_torchrun_two_ranks_match_one_process(store, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) with AuxK, a short dead window and Anthropic resampling gives the
    weights, losses and resampling events of one process with the same global batch (float64: rounding ~1e-15)."""
    B, steps = 64, 30
    sae_cfg = SAEConfig(d_in=16, expansion_factor=4)
    loss_cfg = LossConfig(sparsity="l1", sparsity_coeff=3e-3, aux="auxk", k_aux=4)
    tc = TrainConfig(lr=3e-3, steps=steps, warmup_steps=5, dead_window=4 * B, resample="anthropic",
                     resample_steps=[8, 16], resample_inputs=2 * B, progress=False, log_every=10)
    torch.manual_seed(0); s0 = make_sae(sae_cfg, dtype=torch.float64)
    with torch.no_grad(): s0.b_enc[:6] = -100.0                         # dead from the start: resampling must happen
    s0.save(tmp_path/"init")
    ref = train(SAE.load(tmp_path/"init"), global_batches(store, B, epochs=None), loss_cfg, tc)
    job = DDPJob(store=str(store.path), out=str(tmp_path/"out"), sae_cfg=sae_cfg, loss_cfg=loss_cfg, train_cfg=tc,
                 global_batch_size=B, init=str(tmp_path/"init"), dtype="float64")
    r = torchrun_two_ranks(job, tmp_path, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    out = json.loads((tmp_path/"out"/"history.json").read_text())
    assert out["world_size"] == 2 and out["steps"] == steps
    assert [tuple(e.values()) for e in out["resamples"]] == [tuple(e) for e in ref.resamples]
    assert len(ref.resamples) >= 1 and ref.resamples[0].n_dead >= 6
    assert out["history"]["dead"] == ref.history.dead
    np.testing.assert_allclose(out["history"]["loss"], ref.history.loss, rtol=1e-9)
    ddp = SAE.load(tmp_path/"out"/"sae")
    assert ddp.W_dec.dtype == torch.float64
    for k, v in ref.sae.state_dict().items():
        assert (ddp.state_dict()[k] - v).abs().max().item() < 1e-9, k
    # and the run really moved: the result is far from the initial weights
    assert (ddp.W_dec - s0.W_dec).abs().max().item() > 1e-2


def test_torchrun_two_ranks_steer_lambda_like_one_process(store, tmp_path):
    """The L0 controller under torchrun: every rank steers λ from the rank-averaged L0 of each log block, so two
    ranks use the λ sequence and reach the weights of one process with the same global batch."""
    B, steps = 64, 40
    sae_cfg = SAEConfig(d_in=16, expansion_factor=4)
    loss_cfg = LossConfig(sparsity="l1", sparsity_coeff=1e-3)
    tc = TrainConfig(lr=3e-3, steps=steps, progress=False, log_every=5, target_l0=4.0, decay="constant")
    torch.manual_seed(0); make_sae(sae_cfg, dtype=torch.float64).save(tmp_path/"init")
    ref = train(SAE.load(tmp_path/"init"), global_batches(store, B, epochs=None), loss_cfg, tc)
    assert max(ref.history.sparsity_coeff) > 2 * min(ref.history.sparsity_coeff)     # λ really was steered
    job = DDPJob(store=str(store.path), out=str(tmp_path/"out"), sae_cfg=sae_cfg, loss_cfg=loss_cfg, train_cfg=tc,
                 global_batch_size=B, init=str(tmp_path/"init"), dtype="float64")
    r = torchrun_two_ranks(job, tmp_path, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    out = json.loads((tmp_path/"out"/"history.json").read_text())
    np.testing.assert_allclose(out["history"]["sparsity_coeff"], ref.history.sparsity_coeff, rtol=1e-9)
    ddp = SAE.load(tmp_path/"out"/"sae")
    for k, v in ref.sae.state_dict().items():
        assert (ddp.state_dict()[k] - v).abs().max().item() < 1e-9, k


def test_job_json_round_trip(tmp_path):
    job = DDPJob(store="s", out="o", sae_cfg=SAEConfig(d_in=8, architecture="topk", k=3),
                 train_cfg=TrainConfig(resample_steps=[3, 5]), global_batch_size=32)
    assert DDPJob.load(job.save(tmp_path/"j.json")) == job


def test_train_ddp_checkpoint_resume_is_exact(store, tmp_path):
    "A run stopped at a checkpoint and resumed with train_ddp ends with the weights of the uninterrupted run."
    sae_cfg = SAEConfig(d_in=16, expansion_factor=2)
    tc = dict(lr=3e-3, progress=False, dead_window=64, resample="random", resample_steps=[8], log_every=4)
    torch.manual_seed(0); s0 = make_sae(sae_cfg)
    with torch.no_grad(): s0.b_enc[:3] = -100.0
    def fresh():
        s = make_sae(sae_cfg); s.load_state_dict(s0.state_dict()); return s
    full = train_ddp(fresh(), global_batches(store, 50, epochs=None), LossConfig(), TrainConfig(steps=16, **tc))
    ck = tmp_path/"ck"
    cut = itertools.islice(global_batches(store, 50, epochs=None), 7)      # the data runs out: the run stops at step 7
    train_ddp(fresh(), cut, LossConfig(), TrainConfig(steps=16, checkpoint_every=6, checkpoint_dir=str(ck), **tc))
    resumed = train_ddp(fresh(), global_batches(store, 50, epochs=None), LossConfig(), TrainConfig(steps=16, **tc),
                        resume_from=ck/"step_000000006")
    assert resumed.steps == 16 and resumed.resamples == full.resamples
    for k, v in full.sae.state_dict().items(): torch.testing.assert_close(resumed.sae.state_dict()[k], v, rtol=0, atol=0)


def test_write_disk_store_publishes_whole_or_nothing(tmp_path, monkeypatch):
    "A disk full half-way through write_disk_store leaves no store and no debris; an existing folder is never replaced."
    import errno
    from sae_tutorial import distributed as D
    x = torch.randn(10, 4)
    real_save = D.np.save
    calls = []
    def full_on_third(path, arr, *a, **k):
        calls.append(path)
        if len(calls) == 3: raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, arr, *a, **k)
    monkeypatch.setattr(D.np, "save", full_on_third)
    with pytest.raises(OSError, match="free some space"): D.write_disk_store(x, tmp_path/"store")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(D.np, "save", real_save)
    back = ActivationStore.load(D.write_disk_store(x, tmp_path/"store"))
    assert torch.equal(back.get(range(10)), x)
    with pytest.raises(FileExistsError): D.write_disk_store(x, tmp_path/"store")


def test_torchrun_ranks_stop_together_on_non_finite_loss(store, tmp_path):
    """A run whose loss overflows (lr 1e30) stops on both ranks at the same step with the trainer's message, and
    torchrun exits with an error instead of hanging; rank 0 publishes nothing."""
    tc = TrainConfig(lr=1e30, steps=20, warmup_steps=0, progress=False, log_every=1)
    job = DDPJob(store=str(store.path), out=str(tmp_path/"out"), sae_cfg=SAEConfig(d_in=16, expansion_factor=2),
                 loss_cfg=LossConfig(), train_cfg=tc, global_batch_size=32)
    r = torchrun_two_ranks(job, tmp_path, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    steps = {l.split("Non-finite loss or gradient at step ")[1].split(" ")[0] for l in out.splitlines()
             if "Non-finite loss or gradient at step" in l and ", rank " in l}
    ranks = {l.split(", rank ")[1][0] for l in out.splitlines() if "Non-finite loss or gradient at step" in l and ", rank " in l}
    assert ranks == {"0", "1"} and len(steps) == 1, out[-3000:]
    assert not (tmp_path/"out"/"sae").exists()


def test_main_parses_the_configs_with_their_own_defaults(tmp_path):
    "torchrun's options are SAEConfig / LossConfig / TrainConfig fields: unset ones keep those classes' defaults."
    from dataclasses import replace
    from sae_tutorial.distributed import parse_ddp_args
    store = write_disk_store(torch.randn(64, 8), tmp_path/"store")
    o = parse_ddp_args(["--store", str(store), "--out", str(tmp_path/"out")])
    assert o.train == replace(TrainConfig(), batch_size=o.global_batch_size) and o.loss == LossConfig()
    assert o.sae == SAEConfig(d_in=8) and not o.cpu
    o = parse_ddp_args(["--job", "j.json", "--cpu", "--train.lr", "1e-3", "--warmup-steps", "7", "--checkpoint-every", "5",
                        "--out", str(tmp_path/"o2")])
    assert (o.train.lr, o.train.warmup_steps, o.train.checkpoint_every, o.cpu) == (1e-3, 7, 5, True)
    assert o.train.checkpoint_dir == str(tmp_path/"o2"/"checkpoints")
    with pytest.raises(SystemExit): parse_ddp_args(["--steps", "3"])
