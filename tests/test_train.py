"Trainer: resampling, exact resume, clipping, schedules, NaN handling, dead-latent counts (ci budget, CPU)."
import math
import numpy as np
import pytest
import torch
from sae_tutorial.sae import SAEConfig, make_sae
from sae_tutorial.losses import LossConfig
from sae_tutorial.train import TrainConfig, FeatureUsage, train, resample_dead_features
from sae_tutorial.toy import SparseFeatureData
from sae_tutorial.checkpoint import latest_checkpoint

torch.set_num_threads(1)
D_IN = 16

def _sae(seed=0, ef=2.0, **kw):
    torch.manual_seed(seed)
    return make_sae(SAEConfig(d_in=D_IN, expansion_factor=ef, **kw))

def _data(seed=0):
    return SparseFeatureData(d_in=D_IN, n_features=32, mean_active=3, seed=seed)

def _fires(sae, x):
    "Which latents fire on any row of x (independent forward pass)."
    with torch.no_grad(): return (sae(x).f > 0).any(0)

# ---------------------------------------------------------------- resampling
def _kill(sae, idx):
    "Make latents `idx` dead: a very negative encoder bias keeps their pre-activation below 0."
    with torch.no_grad(): sae.b_enc[idx] = -1e3

@pytest.mark.parametrize("method", ["anthropic", "random"])
def test_resampling_revives_dead_latents_and_resets_only_their_adam_rows(method):
    data, g = _data(), torch.Generator().manual_seed(0)
    sae = _sae()
    dead_idx = torch.tensor([1, 5, 6, 20])
    _kill(sae, dead_idx)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for _ in range(3):                                   # give Adam some history
        x = data.sample(64, g); opt.zero_grad(); out = sae(x)
        ((out.x_hat - x).pow(2).sum(-1).mean() + 1e-3 * out.f.sum(-1).mean()).backward(); opt.step()
    x = data.sample(512, g)
    fires_before = _fires(sae, x)
    assert not fires_before[dead_idx].any()              # they really are dead
    n_dead_before = int((~fires_before).sum())
    dead = ~fires_before
    before = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in sae.named_parameters()}
    params_before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    idx = resample_dead_features(sae, dead, x, method, opt, generator=torch.Generator().manual_seed(1))
    assert sorted(idx.tolist()) == sorted(dead.nonzero().flatten().tolist())
    fires_after = _fires(sae, x)
    assert int((~fires_after).sum()) < n_dead_before     # count of dead latents went down ...
    assert fires_after[dead_idx].sum() >= len(dead_idx) - 1   # ... and (nearly) all the killed ones fire again
    alive = (~dead).nonzero().flatten()
    # Adam moments: zero for the modified rows/columns, bit-for-bit unchanged elsewhere
    where = {"W_enc": lambda t, i: t[:, i], "b_enc": lambda t, i: t[i], "W_dec": lambda t, i: t[i]}
    for name, p in sae.named_parameters():
        st = opt.state[p]
        for k in ("exp_avg", "exp_avg_sq"):
            if name in where:
                assert torch.count_nonzero(where[name](st[k], idx)) == 0, (name, k)
                assert torch.equal(where[name](st[k], alive), where[name](before[name][k], alive)), (name, k)
            else:
                assert torch.equal(st[k], before[name][k]), (name, k)
        assert torch.equal(st["step"], before[name]["step"])
    # parameters of alive latents untouched; new rows unit norm, encoder 0.2 x mean alive norm, bias 0
    assert torch.equal(sae.W_dec[alive], params_before["W_dec"][alive])
    assert torch.equal(sae.W_enc[:, alive], params_before["W_enc"][:, alive])
    torch.testing.assert_close(sae.W_dec[idx].norm(dim=1).double(), torch.ones(len(idx), dtype=torch.float64))
    want = 0.2 * params_before["W_enc"][:, alive].double().norm(dim=0).mean()
    torch.testing.assert_close(sae.W_enc[:, idx].double().norm(dim=0), want.expand(len(idx)), rtol=1e-5, atol=0)
    assert torch.count_nonzero(sae.b_enc[idx]) == 0
    if method == "anthropic":                            # each new direction is one of the (centred) inputs
        cos = torch.nn.functional.normalize(sae.W_dec[idx], dim=1) @ torch.nn.functional.normalize(x - sae.b_dec, dim=1).T
        torch.testing.assert_close(cos.max(1).values, torch.ones(len(idx)), rtol=0, atol=1e-5)

def test_resampling_prefers_badly_reconstructed_inputs():
    "Draws follow loss**2: an input with a huge error is drawn nearly always."
    sae = _sae()
    x = torch.zeros(100, D_IN); x[:, 0] = 0.01
    x[37] = torch.randn(D_IN) * 100                       # the one input the SAE cannot reconstruct
    dead = torch.zeros(sae.W_dec.shape[0], dtype=torch.bool); dead[:3] = True
    resample_dead_features(sae, dead, x, "anthropic", generator=torch.Generator().manual_seed(0))
    target = torch.nn.functional.normalize(x[37] - sae.b_dec, dim=0)
    torch.testing.assert_close(sae.W_dec[:3] @ target, torch.ones(3), rtol=0, atol=1e-5)

def test_train_with_resampling_ends_with_fewer_dead_latents():
    data = _data()
    runs = {}
    for method in ("none", "anthropic"):
        sae = _sae(ef=4.0)
        _kill(sae, torch.arange(0, 64, 2))                 # half the latents start dead
        cfg = TrainConfig(lr=3e-3, steps=120, dead_window=640, resample=method, resample_every=40, resample_stop=0.7,
                          resample_inputs=256, progress=False, log_every=10)
        runs[method] = train(sae, data.batches(64, seed=1), LossConfig(sparsity_coeff=1e-3), cfg)
    none, anth = runs["none"], runs["anthropic"]
    assert none.resamples == [] and len(anth.resamples) >= 1
    assert anth.resamples[0].n_dead >= 32
    x = data.sample(2048, torch.Generator().manual_seed(9))
    assert int((~_fires(none.sae, x)).sum()) >= 32        # without resampling they stay dead
    assert int((~_fires(anth.sae, x)).sum()) < int((~_fires(none.sae, x)).sum()) // 2

# ---------------------------------------------------------------- exact resume
def _global_rng_batches(n_batches, batch=32, seed=0):
    "Batches drawn from the *global* torch RNG, so the checkpoint must restore RNG state and data position."
    data = _data()
    def gen():
        torch.manual_seed(seed)
        for _ in range(n_batches): yield data.sample(batch)          # generator=None: the global RNG
    return gen()

class _Crash(Exception): pass

def _crashing(batches, at):
    for i, x in enumerate(batches):
        if i == at: raise _Crash
        yield x

def test_resumed_run_gives_the_same_losses_as_an_uninterrupted_one(tmp_path):
    # a strong penalty, a high lr and a short window make latents die again after the first resampling, so that
    # there is something to resample on both sides of the checkpoint (with planted features independent of the
    # SAE's initial weights, a gentle run keeps every latent alive after step 15)
    cfg = dict(lr=1e-2, steps=60, warmup_steps=10, decay="cosine", sparsity_warmup_steps=15, clip_grad_norm=0.5,
               dead_window=32, resample="anthropic", resample_every=15, resample_stop=0.9, resample_inputs=64,
               progress=False, log_every=7)
    loss_cfg = LossConfig(sparsity_coeff=1.0)
    def half_dead(seed=0):
        sae = _sae(seed); _kill(sae, torch.arange(0, 32, 2)); return sae
    full = train(half_dead(), _global_rng_batches(200), loss_cfg, TrainConfig(**cfg))
    assert {e.step for e in full.resamples} >= {15, 45}   # resampling happens on both sides of the checkpoint
    ck = tmp_path/"ck"
    with pytest.raises(_Crash):                           # killed after 34 batches drawn (checkpoint at step 25)
        train(half_dead(), _crashing(_global_rng_batches(200), 34), loss_cfg,
              TrainConfig(**cfg, checkpoint_every=25, checkpoint_dir=str(ck)))
    assert latest_checkpoint(ck).name == "step_000000025"
    assert not list(ck.glob(".*tmp*"))                    # no half-written checkpoint left behind
    torch.manual_seed(1234); np.random.seed(1); import random; random.seed(1)   # scramble global RNGs
    resumed = train(_sae(seed=99), _global_rng_batches(200), loss_cfg, TrainConfig(**cfg), resume_from=ck)
    assert resumed.steps == full.steps == 60
    assert resumed.history.step == full.history.step
    assert resumed.history.loss[25:] == full.history.loss[25:]   # the next losses, exactly
    assert resumed.history.lr == full.history.lr
    assert resumed.resamples == full.resamples
    for (n, a), b in zip(full.sae.named_parameters(), resumed.sae.parameters()):
        assert torch.equal(a, b), n

# ---------------------------------------------------------------- clipping
def test_clipping_bounds_the_global_grad_norm():
    "A global optimiser pre-step hook sees the gradients Adam will use: their float64 norm is <= max_norm."
    seen = []
    def hook(opt, args, kwargs):
        g = [p.grad.double() for grp in opt.param_groups for p in grp["params"] if p.grad is not None]
        seen.append(math.sqrt(sum(float((x * x).sum()) for x in g)))
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    h = register_optimizer_step_pre_hook(hook)
    try:
        res = train(_sae(), _data().batches(64, seed=1), LossConfig(sparsity_coeff=1e-2),
                    TrainConfig(lr=1e-3, steps=30, clip_grad_norm=0.05, progress=False, log_every=5))
        unclipped = train(_sae(), _data().batches(64, seed=1), LossConfig(sparsity_coeff=1e-2),
                          TrainConfig(lr=1e-3, steps=1, clip_grad_norm=None, progress=False))
    finally: h.remove()
    clipped, free = seen[:30], seen[30]
    assert max(clipped) <= 0.05 * (1 + 1e-5)
    pre = np.array(res.history.grad_norm)                 # recorded norm before clipping
    assert (pre > 0.05).any()                             # the bound was active, so the test means something
    np.testing.assert_allclose(clipped, np.minimum(pre, 0.05), rtol=1e-5)   # clip_grad_norm_ semantics: g * min(1, c/|g|)
    np.testing.assert_allclose(free, unclipped.history.grad_norm[0], rtol=1e-5)   # recorded norm == float64 norm

# ---------------------------------------------------------------- schedules
def _lr_formula(s, lr, w, a, T, decay, r):
    if s < w: return lr * (a + (1 - a) * s / w)
    t, n = s - w, max(T - w, 1)
    if decay == "cosine": return lr * (r + (1 - r) * (1 + math.cos(math.pi * t / n)) / 2)
    if decay == "linear": return lr * (1 - (1 - r) * t / n)
    return lr

@pytest.mark.parametrize("decay,w,r", [("cosine", 20, 0.0), ("cosine", 0, 0.1), ("linear", 15, 0.05), ("constant", 10, 0.0)])
def test_scheduler_lrs_match_the_closed_form(decay, w, r):
    T = 120
    res = train(_sae(), _data().batches(16, seed=1), LossConfig(),
                TrainConfig(lr=2e-3, steps=T, warmup_steps=w, warmup_start=0.05, decay=decay, min_lr_frac=r,
                            progress=False, log_every=40))
    for s in (0, 1, w // 2, max(w - 1, 0), w, w + 1, 60, 99, T - 1):
        assert res.history.lr[s] == pytest.approx(_lr_formula(s, 2e-3, w, 0.05, T, decay, r), rel=1e-9, abs=1e-15), s

def test_sparsity_coefficient_warmup_is_linear():
    res = train(_sae(), _data().batches(16, seed=1), LossConfig(sparsity_coeff=0.4),
                TrainConfig(steps=12, sparsity_warmup_steps=8, progress=False))
    assert res.history.sparsity_coeff == pytest.approx([0.4 * min(1, (s + 1) / 8) for s in range(12)])

# ---------------------------------------------------------------- bad data
@pytest.mark.parametrize("check_input", [True, False])
def test_nan_batch_stops_training_before_the_weights_change(check_input):
    "The SAE's own input check (ValueError) or, with it off, the trainer's loss/grad check (FloatingPointError)."
    clean = list(_data().batches(32, n_batches=20, seed=1))
    bad = [x.clone() for x in clean]; bad[7][3, 2] = float("nan")
    cfg = TrainConfig(lr=1e-3, steps=20, progress=False)
    sae = _sae(check_input=check_input)
    with pytest.raises(ValueError if check_input else FloatingPointError, match="batch index 7"):
        train(sae, bad, LossConfig(), cfg)
    ref = train(_sae(check_input=check_input), clean[:7], LossConfig(), TrainConfig(lr=1e-3, steps=20, progress=False))
    assert ref.steps == 7
    for (n, a), b in zip(ref.sae.named_parameters(), sae.parameters()):
        assert torch.isfinite(b).all() and torch.equal(a, b), n

@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_every_architecture_trains_and_resamples(arch):
    "Loss goes down for every architecture; resampling touches only the dead latents' entries."
    extra = {"k": 4} if "topk" in arch else {}
    sae = _sae(architecture=arch, **extra)
    loss_cfg = LossConfig(sparsity="jumprelu_l0" if arch == "jumprelu" else "l1", sparsity_coeff=1e-3,
                          aux="gated" if arch == "gated" else "none", aux_coeff=1.0)
    # 120 steps: TopK's reconstruction of data it did not start out knowing falls by 30% only after about 90
    res = train(sae, _data().batches(64, seed=1), loss_cfg, TrainConfig(lr=3e-3, steps=120, progress=False, log_every=20))
    assert np.mean(res.history.recon[-10:]) < 0.7 * np.mean(res.history.recon[:10])
    dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool); dead[[0, 3]] = True
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    resample_dead_features(sae, dead, _data().sample(128), "anthropic")
    for n, p in sae.named_parameters():
        if n in ("W_dec", "b_enc", "b_mag", "r_mag"): assert torch.equal(p[~dead], before[n][~dead]), n
        elif n == "W_enc": assert torch.equal(p[:, ~dead], before[n][:, ~dead]), n
        else: assert torch.equal(p, before[n]), n          # b_dec, log_threshold untouched

def test_wrong_shape_names_expected_and_actual():
    with pytest.raises(ValueError, match=r"\(8, 15\).*d_in=16"):
        train(_sae(), [torch.zeros(8, 15)], LossConfig(), TrainConfig(steps=1, progress=False))

# ---------------------------------------------------------------- dead-latent statistics
def test_usage_and_dead_mask_match_a_brute_force_window():
    g = torch.Generator().manual_seed(0)
    d_sae, window, batch = 12, 40, 8
    u, seen = FeatureUsage(d_sae, window, threshold=0.5), []
    for t in range(30):
        f = torch.rand(batch, d_sae, generator=g) * (torch.rand(d_sae, generator=g) < 0.1)   # rare firing
        u.update(f); seen.append(f)
        allf = torch.cat(seen).numpy()
        last = allf[-window:] > 0.5                       # window is a multiple of the batch size here
        np.testing.assert_array_equal(u.usage().numpy(), last.mean(0))
        want_dead = (~last.any(0)) if len(allf) >= window else np.zeros(d_sae, bool)
        np.testing.assert_array_equal(u.dead_mask().numpy(), want_dead)


def test_make_optimizer_fused_adam_is_adam():
    "make_optimizer's (fused, where torch has it) Adam takes the steps of torch's default Adam, to float64 rounding."
    from sae_tutorial.train import make_optimizer
    torch.manual_seed(0)
    a = make_sae(SAEConfig(d_in=8, expansion_factor=2), dtype=torch.float64)
    b = make_sae(SAEConfig(d_in=8, expansion_factor=2), dtype=torch.float64); b.load_state_dict(a.state_dict())
    cfg = TrainConfig(lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-7)
    opt_a, opt_b = make_optimizer(a, cfg), torch.optim.Adam(b.parameters(), lr=1e-2, betas=(0.8, 0.95), eps=1e-7)
    assert opt_a.param_groups[0]["fused"] in (True, None)
    x = torch.randn(16, 8, dtype=torch.float64)
    for _ in range(5):
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad(); ((m(x).x_hat - x) ** 2).sum().backward(); o.step()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14, msg=lambda s: f"{n}: {s}")

# ---------------------------------------------------------------- the deferred NaN/Inf check (a GPU's), forced on the CPU
@pytest.fixture
def deferred(monkeypatch):
    "Run `train` as it runs on one GPU with fused Adam: StepGuard(deferred=True), the SAE's input check off."
    import sae_tutorial.train as T
    monkeypatch.setattr(T, "_defer_checks", lambda *a: True)

@pytest.mark.parametrize("arch", ["relu", "topk"])
@pytest.mark.parametrize("check_input", [True, False])
def test_deferred_check_stops_one_step_late_with_the_weights_before_the_bad_step(deferred, check_input, arch, tmp_path):
    "The bad step's update is skipped on the device; the error names its batch; no checkpoint is written after it."
    kw = dict(check_input=check_input, architecture=arch, **({"k": 4} if arch == "topk" else {}))
    clean = list(_data().batches(32, n_batches=20, seed=1))
    bad = [x.clone() for x in clean]; bad[7][3, 2] = float("nan")
    sae = _sae(**kw)
    with pytest.raises(ValueError if check_input else FloatingPointError, match="batch index 7"):
        train(sae, bad, LossConfig(), TrainConfig(lr=1e-3, steps=20, progress=False, log_every=3,
                                                   checkpoint_dir=str(tmp_path), checkpoint_every=4))
    assert latest_checkpoint(tmp_path).name == "step_000000004"      # the one due after step 7 was never written
    ref = train(_sae(**kw), clean[:7], LossConfig(), TrainConfig(lr=1e-3, steps=20, progress=False))
    assert ref.steps == 7
    for (n, a), b in zip(ref.sae.named_parameters(), sae.parameters()):
        if n == "W_dec":                                              # renormalised once more on the skipped step
            a = a.detach() / a.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)
        assert torch.isfinite(b).all() and torch.equal(a, b), n

@pytest.mark.parametrize("clip", [None, 0.05])
def test_deferred_and_plain_checks_train_alike(monkeypatch, clip):
    "No clipping: bit-identical runs. An active clip: Adam divides by the factor instead of multiplying, so float32 rounding."
    import sae_tutorial.train as T
    runs = []
    for defer in (False, True):
        monkeypatch.setattr(T, "_defer_checks", lambda *a, d=defer: d)
        runs.append(train(_sae(), _data().batches(64, seed=1), LossConfig(sparsity_coeff=1e-2),
                          TrainConfig(lr=1e-3, steps=30, clip_grad_norm=clip, progress=False, log_every=7)))
    plain, dfr = runs
    if clip: assert (np.array(plain.history.grad_norm) > clip).mean() > 0.5   # the clip acted on most steps
    for key in ("loss", "grad_norm", "l0"):
        np.testing.assert_allclose(getattr(dfr.history, key), getattr(plain.history, key), rtol=0 if clip is None else 1e-5)
    for (n, a), b in zip(plain.sae.named_parameters(), dfr.sae.parameters()):
        if clip is None: assert torch.equal(a, b), n
        else: torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)

def test_deferred_training_keeps_the_input_check_where_the_forward_updates_state(deferred):
    "BatchTopK's forward moves its threshold EMA: with deferral its input check still runs, so a NaN batch never reaches it."
    clean = list(_data().batches(32, n_batches=10, seed=1))
    bad = [x.clone() for x in clean]; bad[4][0, 0] = float("inf")
    sae = _sae(architecture="batchtopk", k=4)
    with pytest.raises(ValueError, match="batch index 4"):
        train(sae, bad, LossConfig(sparsity="none", sparsity_coeff=0.0), TrainConfig(lr=1e-3, steps=10, progress=False))
    assert torch.isfinite(sae.threshold)

def test_input_check_deferred_skips_only_the_finiteness_test():
    from sae_tutorial.sae import input_check_deferred
    sae, x = _sae(), torch.randn(4, D_IN); x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"): sae(x)
    with input_check_deferred():
        assert torch.isnan(sae(x).x_hat[1]).all()                    # no error: the trainer checks the loss instead
        with pytest.raises(ValueError, match="last dimension"): sae(torch.randn(4, D_IN + 1))
    with pytest.raises(ValueError, match="1 NaN"): sae(x)           # the block ended: the check is back
