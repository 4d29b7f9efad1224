"SAE architectures (nbs/02_sae.ipynb): properties, references in float64/numpy, bad inputs, checkpoints."
import json, math
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as np_load_file
from sae_tutorial.sae import (SAE, SAEConfig, ARCHITECTURES, make_sae, TiedReLUSAE, TopKSAE,
                              JumpReLUSAE, jumprelu, step, rectangle, geometric_median,
                              init_b_dec_, load_config)

def cfg(**kw):
    return SAEConfig(**{"d_in": 8, "expansion_factor": 4, **kw})

def randomize_(sae, seed=0):
    "Give every parameter/buffer non-trivial values so round trips and references are not vacuous."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "log_threshold": p.copy_(torch.rand(p.shape, generator=g) * -2 - 1)   # θ in (e^-3, e^-1)
            else: p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return sae

# ---------------------------------------------------------------- config errors
@pytest.mark.parametrize("kw,msg", [
    (dict(expansion_factor=0.5), "expansion_factor >= 1"),
    (dict(architecture="topk", k=33), "k=33 must lie in 1..d_sae=32"),
    (dict(architecture="batchtopk", k=0), "k=0 must lie in 1..d_sae=32"),
    (dict(architecture="nope"), "architecture='nope' is unknown"),
    (dict(architecture="topk", tied=True), "tied=True is only supported"),
    (dict(init_decoder_norm=0.0), "init_decoder_norm must be > 0"),
    (dict(jumprelu_bandwidth=0.0), "jumprelu_bandwidth"),
])
def test_bad_config_names_the_fix(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(".", r"\.")): cfg(**kw)

def test_d_sae_rounds():
    assert cfg(expansion_factor=2.5).d_sae == 20 and SAEConfig(d_in=3, expansion_factor=1.5).d_sae == 4   # round(4.5) = 4

# ---------------------------------------------------------------- input checks
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_wrong_width_names_expected_and_actual(arch):
    sae = make_sae(cfg(architecture=arch, k=4))
    with pytest.raises(ValueError) as e: sae(torch.randn(3, 7))
    assert "expected last dimension 8" in str(e.value) and "got 7" in str(e.value)
    with pytest.raises(ValueError, match="expected last dimension 8"): sae.encode(torch.randn(3, 9))

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_raises(bad):
    sae = make_sae(cfg())
    x = torch.randn(4, 8); x[2, 3] = bad
    with pytest.raises(ValueError, match="SAE x has"): sae(x)

def test_dtype_mismatch_names_the_fix():
    with pytest.raises(ValueError, match="dtype torch.float64"): make_sae(cfg())(torch.randn(2, 8, dtype=torch.float64))

def test_leading_dimensions_are_batch():
    sae = randomize_(make_sae(cfg()))
    x = torch.randn(3, 5, 8)
    out = sae(x)
    assert out.x_hat.shape == (3, 5, 8) and out.f.shape == (3, 5, 32)
    torch.testing.assert_close(out.x_hat.reshape(15, 8), sae(x.reshape(15, 8)).x_hat)

# ---------------------------------------------------------------- the equations, against numpy float64
@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "gated"])
def test_forward_matches_numpy(arch):
    torch.manual_seed(0)
    sae = randomize_(make_sae(cfg(architecture=arch, k=5), dtype=torch.float64))
    x = torch.randn(6, 8, dtype=torch.float64)
    P = {k: v.detach().numpy() for k, v in sae.state_dict().items()}
    xn = x.numpy()
    pre = (xn - P["b_dec"]) @ P["W_enc"] + P["b_enc"]
    if arch == "relu": f = np.maximum(pre, 0)
    elif arch == "topk":
        f = np.zeros_like(pre)
        for r in range(len(pre)):
            idx = np.argsort(-pre[r])[:5]; f[r, idx] = np.maximum(pre[r, idx], 0)
    elif arch == "jumprelu": f = pre * (pre > np.exp(P["log_threshold"]))
    else:
        mag = ((xn - P["b_dec"]) @ (P["W_enc"] * np.exp(P["r_mag"])[None])) + P["b_mag"]
        f = (pre > 0) * np.maximum(mag, 0)
    out = sae(x)
    np.testing.assert_allclose(out.pre.detach().numpy(), pre, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.f.detach().numpy(), f, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.x_hat.detach().numpy(), f @ P["W_dec"] + P["b_dec"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sae.encode(x), out.f); torch.testing.assert_close(sae.decode(out.f), out.x_hat)

def test_init_as_literature():
    sae = make_sae(cfg())
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))
    assert sae.b_enc.abs().sum() == 0 and sae.b_dec.abs().sum() == 0
    s24 = make_sae(cfg(normalize_decoder=False))
    torch.testing.assert_close(s24.W_dec.norm(dim=1), torch.full((32,), 0.1))
    s = make_sae(cfg(init_decoder_norm=0.3))
    torch.testing.assert_close(s.W_dec.norm(dim=1), torch.full((32,), 0.3))
    j = make_sae(cfg(architecture="jumprelu", jumprelu_init_threshold=0.02))
    torch.testing.assert_close(j.threshold, torch.full((32,), 0.02))

# ---------------------------------------------------------------- TopK / BatchTopK
def test_topk_exactly_k_per_row():
    torch.manual_seed(1)
    sae = make_sae(cfg(architecture="topk", k=5))
    with torch.no_grad(): sae.b_enc.fill_(10.0)                   # every pre-activation positive
    f = sae.encode(torch.randn(50, 8))
    assert (f != 0).sum(-1).tolist() == [5] * 50
    # the kept ones are the 5 largest pre-activations of the row
    pre = sae(torch.randn(50, 8)).pre
    f = sae.activation(pre)
    kth = pre.topk(5, dim=-1).values[:, -1:]
    assert torch.equal(f != 0, pre >= kth)

def test_topk_never_more_than_k_and_never_negative():
    sae = make_sae(cfg(architecture="topk", k=5))
    with torch.no_grad(): sae.b_enc.fill_(-10.0)                  # all pre-activations negative
    f = sae.encode(torch.randn(20, 8))
    assert (f != 0).sum() == 0

def test_batchtopk_exactly_k_times_batch_and_threshold():
    torch.manual_seed(2)
    sae = make_sae(cfg(architecture="batchtopk", k=3, batchtopk_threshold_decay=0.5))
    with torch.no_grad(): sae.b_enc.fill_(5.0)
    sae.train()
    x1, x2 = torch.randn(16, 8), torch.randn(16, 8)
    out1 = sae(x1)
    assert int((out1.f != 0).sum()) == 3 * 16
    flat = torch.relu(out1.pre).flatten()
    kept = flat.topk(48).values
    torch.testing.assert_close(sae.threshold, kept.min())       # first batch: the threshold is its smallest kept value
    m2 = torch.relu(sae(x2).pre).flatten().topk(48).values.min()
    torch.testing.assert_close(sae.threshold, 0.5 * kept.min() + 0.5 * m2)   # EMA with decay 0.5
    sae.eval()
    pre = sae(x1).pre
    torch.testing.assert_close(sae.encode(x1), torch.relu(pre) * (torch.relu(pre) > sae.threshold))
    t_before = sae.threshold.clone(); sae(x2)
    assert torch.equal(sae.threshold, t_before)                   # eval never moves the threshold

def test_batchtopk_eval_without_threshold_warns():
    sae = make_sae(cfg(architecture="batchtopk", k=3)).eval()
    with pytest.warns(UserWarning, match="no inference threshold yet"): f = sae.encode(torch.randn(4, 8))
    assert int((f != 0).sum()) <= 12

# ---------------------------------------------------------------- tied weights, decoder constraint
def test_tied_shares_storage_and_trains_as_one():
    sae = make_sae(cfg(tied=True))
    assert isinstance(sae, TiedReLUSAE) and sae.W_enc.data_ptr() == sae.W_dec.data_ptr()
    assert "W_enc" not in dict(sae.named_parameters())
    opt = torch.optim.SGD(sae.parameters(), lr=0.1)
    x = torch.randn(10, 8)
    sae(x).x_hat.pow(2).sum().backward(); opt.step()
    assert sae.W_enc.data_ptr() == sae.W_dec.data_ptr() and torch.equal(sae.W_enc, sae.W_dec.T)

def test_tied_gradient_is_encoder_plus_decoder():
    "W_dec.grad of a tied SAE = (decoder grad) + (encoder grad)ᵀ of an untied SAE with the same weights."
    torch.manual_seed(3)
    tied = randomize_(make_sae(cfg(tied=True), dtype=torch.float64))
    untied = make_sae(cfg(), dtype=torch.float64)
    with torch.no_grad():
        untied.W_dec.copy_(tied.W_dec); untied.W_enc.copy_(tied.W_dec.T); untied.b_enc.copy_(tied.b_enc); untied.b_dec.copy_(tied.b_dec)
    x = torch.randn(10, 8, dtype=torch.float64)
    for m in (tied, untied): (m(x).x_hat - x).pow(2).sum().backward()
    torch.testing.assert_close(tied.W_dec.grad, untied.W_dec.grad + untied.W_enc.grad.T)

@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_unit_norm_after_step_and_parallel_grad_removed(arch):
    torch.manual_seed(4)
    sae = make_sae(cfg(architecture=arch, k=4), dtype=torch.float64)
    opt = torch.optim.Adam(sae.parameters(), lr=0.05)
    x = torch.randn(32, 8, dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        out = sae(x); (out.x_hat - x).pow(2).sum(-1).mean().add(out.f.sum(-1).mean() * 0.1).backward()
        g_before = sae.W_dec.grad.clone().numpy(); W = sae.W_dec.detach().numpy()
        sae.remove_parallel_grad_()
        u = W / np.linalg.norm(W, axis=1, keepdims=True)
        expected = g_before - (g_before * u).sum(1, keepdims=True) * u        # numpy projection
        np.testing.assert_allclose(sae.W_dec.grad.numpy(), expected, atol=1e-12)
        np.testing.assert_allclose((sae.W_dec.grad * sae.W_dec).sum(1).detach().numpy(), 0, atol=1e-12)
        opt.step(); sae.normalize_decoder_()
        np.testing.assert_allclose(sae.W_dec.norm(dim=1).detach().numpy(), 1.0, atol=1e-12)

def test_constraint_off_is_a_no_op():
    sae = make_sae(cfg(normalize_decoder=False))
    sae(torch.randn(4, 8)).x_hat.sum().backward()
    W, g = sae.W_dec.detach().clone(), sae.W_dec.grad.clone()
    sae.remove_parallel_grad_(); sae.normalize_decoder_()
    assert torch.equal(sae.W_dec, W) and torch.equal(sae.W_dec.grad, g)

# ---------------------------------------------------------------- JumpReLU / Step autograd
def test_jumprelu_gradcheck_wrt_input_float64():
    torch.manual_seed(5)
    theta = torch.full((6,), 0.5, dtype=torch.float64)
    z = torch.rand(4, 6, dtype=torch.float64) * 2 - 0.5
    z = torch.where((z - 0.5).abs() < 0.05, z + 0.2, z).requires_grad_()   # stay clear of the jump for finite differences
    assert torch.autograd.gradcheck(lambda z: jumprelu(z, theta, 1e-3), (z,), eps=1e-6, atol=1e-8)

def test_sae_gradcheck_float64_jumprelu_gated_topk():
    "End-to-end gradcheck of W_enc, b_enc, W_dec, b_dec through JumpReLU's Function, the gate, and TopK (away from jumps)."
    from torch.func import functional_call
    torch.manual_seed(6)
    names = ["W_enc", "b_enc", "W_dec", "b_dec"]
    for arch in ("jumprelu", "gated", "topk"):
        sae = randomize_(make_sae(SAEConfig(d_in=4, expansion_factor=2, architecture=arch, k=3), dtype=torch.float64))
        x = torch.randn(3, 4, dtype=torch.float64)
        r = torch.randn(3, 4, dtype=torch.float64)
        pre = sae(x).pre
        if arch == "jumprelu": gap = (pre - sae.threshold).abs().min()
        elif arch == "gated": gap = pre.abs().min()
        else: top = pre.topk(4, -1).values; gap = (top[:, 2] - top[:, 3]).min()
        assert gap > 1e-4, "test data sits on a discontinuity; change the seed"
        loss = lambda *ps: (functional_call(sae, dict(zip(names, ps)), (x,)).x_hat * r).sum()
        inputs = tuple(getattr(sae, n).detach().clone().requires_grad_() for n in names)
        assert torch.autograd.gradcheck(loss, inputs, eps=1e-7, atol=1e-6)

def ramp(u, eps):
    "E over θ-jitter U(-ε/2, ε/2) of H(u + jitter): the rectangle-smoothed step."
    return ((u / eps) + 0.5).clamp(0, 1)

def test_step_threshold_pseudo_gradient_is_gradient_of_smoothed_step():
    eps = 1e-3
    z = torch.tensor([0.4996, 0.4999, 0.5, 0.5003, 0.5006, 0.7, 0.2], dtype=torch.float64)
    theta = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    for i in range(len(z)):
        theta.grad = None
        step(z[i:i + 1], theta, eps).sum().backward()
        h = 1e-7   # central finite difference of the smoothed step, independent of our backward
        fd = (ramp(z[i] - (theta.detach() + h), eps) - ramp(z[i] - (theta.detach() - h), eps)) / (2 * h)
        torch.testing.assert_close(theta.grad, fd, atol=1e-6, rtol=1e-6)

def test_jumprelu_threshold_pseudo_gradient_close_to_smoothed_jumprelu():
    "∂/∂θ E[z·H(z-θ+u)] = -(z/ε)K; ours uses θ for z (exact up to |z-θ|/θ < ε/(2θ) inside the window)."
    eps, t0 = 1e-3, 0.5
    z = t0 + (torch.arange(-20, 21, dtype=torch.float64) * 1e-4 + 0.37e-4)   # no point on a window edge
    theta = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
    jumprelu(z, theta, eps).sum().backward()
    h = 1e-8
    smoothed = lambda t: (z * ramp(z - t, eps)).sum()
    fd = (smoothed(t0 + h) - smoothed(t0 - h)) / (2 * h)
    torch.testing.assert_close(theta.grad, fd, rtol=eps / (2 * t0) * 1.01, atol=1e-3)
    assert theta.grad.item() == pytest.approx(-(t0 / eps) * int(((z - t0).abs() < eps / 2).sum()))

def test_log_threshold_gets_chain_rule_gradient():
    sae = make_sae(cfg(architecture="jumprelu"), dtype=torch.float64)
    with torch.no_grad(): sae.log_threshold.fill_(math.log(0.3))
    pre = torch.full((1, 32), 0.3002, dtype=torch.float64)   # every feature within ε/2 of θ
    jumprelu(pre, sae.threshold, 1e-3).sum().backward()
    torch.testing.assert_close(sae.log_threshold.grad, torch.full((32,), -(0.3 / 1e-3) * 0.3, dtype=torch.float64))

def test_rectangle_is_open_interval():
    assert rectangle(torch.tensor([-0.5, -0.49, 0.0, 0.49, 0.5])).tolist() == [0., 1., 1., 1., 0.]

# ---------------------------------------------------------------- b_dec initialisation
def test_geometric_median_on_a_line_is_the_median():
    pts = torch.tensor([[0., 0.], [1., 0.], [2.5, 0.], [10., 0.], [100., 0.]], dtype=torch.float64)
    torch.testing.assert_close(geometric_median(pts, n_iter=2000), torch.tensor([2.5, 0.], dtype=torch.float64), atol=1e-3, rtol=0)

def test_geometric_median_minimises_sum_of_distances():
    torch.manual_seed(7)
    x = torch.randn(200, 5, dtype=torch.float64) ** 3
    m = geometric_median(x, n_iter=200)
    cost = lambda c: (x - c).norm(dim=1).sum()
    assert cost(m) < cost(x.mean(0))
    for _ in range(20):
        assert cost(m) <= cost(m + 1e-3 * torch.randn(5, dtype=torch.float64)) + 1e-9

@pytest.mark.parametrize("method", ["mean", "geometric_median", "zeros"])
def test_init_b_dec(method):
    sae = make_sae(cfg())
    x = torch.randn(100, 8) + 3
    init_b_dec_(sae, x, method=method)
    ref = {"mean": x.numpy().mean(0), "zeros": np.zeros(8), "geometric_median": geometric_median(x).numpy()}[method]
    np.testing.assert_allclose(sae.b_dec.detach().numpy(), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="method='median' is unknown"): init_b_dec_(sae, x, method="median")
    with pytest.raises(ValueError, match="expected last dimension 8"): init_b_dec_(sae, torch.randn(10, 3))

# ---------------------------------------------------------------- save / load
@pytest.mark.parametrize("kw", [dict(architecture=a, k=4) for a in ARCHITECTURES] + [dict(tied=True), dict(normalize_decoder=False)])
def test_save_load_round_trip_identical(tmp_path, kw):
    torch.manual_seed(8)
    sae = randomize_(make_sae(cfg(**kw)))
    x = torch.randn(16, 8)
    if kw.get("architecture") in ("batchtopk", "matryoshka"): sae.train(); sae(x)   # estimate the inference threshold
    sae.eval()
    sae.save(tmp_path/"ck")
    back = SAE.load(tmp_path/"ck").eval()
    assert type(back) is type(sae) and back.cfg == sae.cfg
    for k, v in sae.state_dict().items(): assert torch.equal(back.state_dict()[k], v), k
    a, b = sae(x), back(x)
    assert torch.equal(a.x_hat, b.x_hat) and torch.equal(a.f, b.f)

def test_checkpoint_is_readable_without_our_code(tmp_path):
    sae = randomize_(make_sae(cfg(architecture="topk", k=3)))
    sae.save(tmp_path/"ck")
    c = json.loads((tmp_path/"ck"/"cfg.json").read_text())
    w = np_load_file(str(tmp_path/"ck"/"sae.safetensors"))
    assert c["format"] == "sae_tutorial.sae/v1" and c["architecture"] == "topk" and c["d_sae"] == 32
    assert {k: v.shape for k, v in w.items()} == {"W_enc": (8, 32), "b_enc": (32,), "W_dec": (32, 8), "b_dec": (8,)}

def test_load_errors_name_the_file(tmp_path):
    sae = make_sae(cfg()); sae.save(tmp_path/"ck")
    with pytest.raises(FileNotFoundError, match="nope.cfg.json not found"): SAE.load(tmp_path/"nope")
    (tmp_path/"ck"/"sae.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="sae.safetensors could not be read"): SAE.load(tmp_path/"ck")
    (tmp_path/"ck"/"sae.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sae.safetensors not found"): SAE.load(tmp_path/"ck")
    (tmp_path/"ck"/"cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="cfg.json is not valid JSON"): SAE.load(tmp_path/"ck")

def test_load_refuses_mismatches(tmp_path):
    make_sae(cfg(architecture="jumprelu")).save(tmp_path/"j")
    with pytest.raises(ValueError, match="architecture='jumprelu'.*TopKSAE.load"): TopKSAE.load(tmp_path/"j")
    assert isinstance(JumpReLUSAE.load(tmp_path/"j"), JumpReLUSAE)
    d = json.loads((tmp_path/"j"/"cfg.json").read_text())
    json.dump({**d, "expansion_factor": 2, "d_sae": 16}, open(tmp_path/"j"/"cfg.json", "w"))
    with pytest.raises(ValueError, match=r"'W_dec' has shape \(32, 8\), cfg.json implies \(16, 8\)"): SAE.load(tmp_path/"j")
    json.dump({**d, "architecture": "relu"}, open(tmp_path/"j"/"cfg.json", "w"))
    with pytest.raises(ValueError, match="unexpected tensor 'log_threshold'"): SAE.load(tmp_path/"j")
    json.dump({**d, "colour": "red"}, open(tmp_path/"j"/"cfg.json", "w"))
    with pytest.raises(ValueError, match=r"unknown SAEConfig fields \['colour'\]"): load_config(tmp_path/"j")
    json.dump({**d, "d_sae": 31}, open(tmp_path/"j"/"cfg.json", "w"))
    with pytest.raises(ValueError, match="d_sae=31 disagrees"): load_config(tmp_path/"j")

def test_wrong_class_constructor_refused():
    with pytest.raises(ValueError, match="build it with make_sae"): TopKSAE(cfg(architecture="relu"))

def test_load_to_dtype(tmp_path):
    sae = randomize_(make_sae(cfg())); sae.save(tmp_path/"ck")
    back = SAE.load(tmp_path/"ck", dtype=torch.float64)
    assert back.W_dec.dtype == torch.float64
    torch.testing.assert_close(back.W_dec.float(), sae.W_dec)


def test_batchtopk_without_threshold_warns_unless_told():
    "Eval mode before any training batch: the batch rule with a warning, or silently for a null used on purpose."
    import warnings
    torch.manual_seed(0)
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2, architecture="batchtopk", k=2)).eval()
    x = torch.randn(4, 8)
    with pytest.warns(UserWarning, match="no inference threshold"): f = sae.encode(x)
    assert int((f > 0).sum()) <= 2 * 4                                 # the batch rule: at most k·B non-zeros
    sae.warn_without_threshold = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(sae.encode(x), f)                           # the same rule, no warning
