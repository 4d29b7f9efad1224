"""The L0 controller of nbs/04_training.ipynb (`TrainConfig.target_l0`, `steer_sparsity`): the update against its
formula, the λ the trainer uses replayed from its own history, the target reached on planted data from a λ ten
times off (beside the unsteered run), an exact resume, and the refusals."""
import math
import numpy as np
import pytest
import torch
from sae_tutorial.sae import SAEConfig, make_sae
from sae_tutorial.losses import LossConfig
from sae_tutorial.train import TrainConfig, sparsity_coeff_at, steer_sparsity, train
from sae_tutorial.toy import SparseFeatureData
from sae_tutorial.checkpoint import latest_checkpoint

pytestmark = pytest.mark.usefixtures("torch_one_thread")
DATA = SparseFeatureData(d_in=16, n_features=32, mean_active=3, seed=0)
TARGET = float(DATA.p.sum())


def _fit(coeff, steps=400, ck=None, crash_at=None, **kw):
    torch.manual_seed(0)
    sae = make_sae(SAEConfig(d_in=16, expansion_factor=4))
    cfg = TrainConfig(**(dict(lr=1e-2, steps=steps, warmup_steps=20, sparsity_warmup_steps=40, log_every=8,
                              target_l0=TARGET, progress=False) | kw))
    batches = DATA.batches(64, seed=1)
    if crash_at is not None:
        def crashing(b=batches):
            for i, x in enumerate(b):
                if i == crash_at: raise KeyboardInterrupt
                yield x
        batches = crashing()
    return train(sae, batches, LossConfig(sparsity_coeff=coeff), cfg, resume_from=ck)


def test_steer_matches_its_formula():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scale, l0, target, gain = rng.uniform(0.01, 10), rng.uniform(0, 200), rng.uniform(0.5, 100), rng.uniform(0.05, 1)
        ref = scale * (0.5 if l0 == 0 else float(np.clip((l0 / target) ** gain, 0.5, 2.0)))
        assert math.isclose(steer_sparsity(scale, l0, target, gain), ref, rel_tol=1e-12)
    assert steer_sparsity(1.0, 0.0, 5.0) == 0.5 and steer_sparsity(1.0, float("nan"), 5.0) == 0.5   # nothing fired


def test_the_lambda_used_replays_from_the_history():
    "Every step's λ = the warmed-up λ times the product of the controller's factors of the blocks before it."
    res, base, every, warm = _fit(0.3, steps=120), 0.3, 8, 40
    h, scale = res.history, 1.0
    for start in range(0, len(h.step), every):
        block = range(start, min(start + every, len(h.step)))
        for s in block: assert math.isclose(h.sparsity_coeff[s], sparsity_coeff_at(s, base, warm) * scale, rel_tol=1e-12), s
        if start >= warm:
            l0 = float(np.mean([h.l0[s] for s in block]))
            scale *= min(2.0, max(0.5, (l0 / TARGET) ** 0.3))
    assert scale != 1.0                                             # it did steer


@pytest.mark.parametrize("start", [0.03, 3.0])
def test_reaches_the_target_from_ten_times_off(start):
    steered, fixed = _fit(start), _fit(start, target_l0=None)
    l0 = np.mean(steered.history.l0[-40:])
    assert abs(math.log(l0 / TARGET)) < math.log(1.3), l0
    assert abs(math.log(np.mean(fixed.history.l0[-40:]) / TARGET)) > math.log(2)   # the null: same λ, not steered


def test_checkpoints_and_a_resume_do_not_change_the_steered_run(tmp_path):
    "Checkpoints every 60 steps split the 8-step log blocks (an extra flush at step 60); the run must not notice."
    full = _fit(0.3, steps=120)                                                    # no checkpoints at all
    checkpointed = _fit(0.3, steps=120, checkpoint_every=60, checkpoint_dir=str(tmp_path/"ck0"))
    assert checkpointed.history.sparsity_coeff == full.history.sparsity_coeff
    ck = tmp_path/"ck"
    with pytest.raises(KeyboardInterrupt): _fit(0.3, steps=120, crash_at=70, checkpoint_every=60, checkpoint_dir=str(ck))
    assert latest_checkpoint(ck).name == "step_000000060"
    resumed = _fit(0.3, steps=120, ck=ck, checkpoint_every=60, checkpoint_dir=str(ck))
    assert resumed.history.sparsity_coeff == full.history.sparsity_coeff and resumed.history.loss == full.history.loss
    for a, b in zip(full.sae.parameters(), resumed.sae.parameters()): assert torch.equal(a, b)


@pytest.mark.parametrize("kw, match", [(dict(target_l0=0.0), "target_l0"), (dict(target_l0=-3.0), "target_l0"),
                                       (dict(target_l0=5.0, target_l0_gain=0.0), "target_l0_gain"),
                                       (dict(target_l0=5.0, target_l0_gain=1.5), "target_l0_gain")])
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match): TrainConfig(**kw)


@pytest.mark.parametrize("loss", [LossConfig(sparsity="none", sparsity_coeff=0.0), LossConfig(sparsity_coeff=0.0)])
def test_a_loss_without_a_penalty_is_refused_before_training(loss):
    sae = make_sae(SAEConfig(d_in=4, architecture="topk", k=2))
    before = [p.clone() for p in sae.parameters()]
    with pytest.raises(ValueError, match="set L0 with k"):
        train(sae, [torch.randn(8, 4)], loss, TrainConfig(target_l0=2, progress=False))
    assert all(torch.equal(a, b) for a, b in zip(before, sae.parameters()))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_a_fixed_k_sae_is_refused_even_with_a_penalty(arch):
    sae = make_sae(SAEConfig(d_in=16, expansion_factor=4, architecture=arch, k=4))
    with pytest.raises(ValueError, match="set L0 with k"):
        train(sae, DATA.batches(64, seed=1), LossConfig(sparsity_coeff=1e-3), TrainConfig(target_l0=1, steps=5, progress=False))


def test_an_unreachable_target_holds_lambda_at_a_bound_and_says_why():
    "L0 cannot exceed d_sae = 64: λ halves every block until its bound, stays there, and one warning names the cause."
    with pytest.warns(UserWarning, match="cannot reach that target") as rec:
        res = _fit(0.3, steps=800, target_l0=500.0, target_l0_gain=1.0)
    assert sum("cannot reach" in str(w.message) for w in rec) == 1
    lam = np.array(res.history.sparsity_coeff)
    assert np.isfinite(res.history.loss).all() and math.isclose(lam[-1], 0.3 * 1e-6, rel_tol=1e-9)


def test_resuming_with_other_controller_settings_is_refused(tmp_path):
    from sae_tutorial.checkpoint import CheckpointError
    ck = tmp_path/"ck"
    _fit(0.3, steps=40, checkpoint_every=16, checkpoint_dir=str(ck))
    for change in (dict(target_l0=None), dict(target_l0=2.0), dict(target_l0_gain=0.5), dict(log_every=4)):
        with pytest.raises(CheckpointError, match="other settings"):
            _fit(0.3, steps=40, ck=ck, checkpoint_every=16, checkpoint_dir=str(ck), **change)
