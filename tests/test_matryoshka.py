"""Matryoshka BatchTopK SAEs (nbs/02_sae.ipynb, 03_losses.ipynb, 02b_fast_paths.ipynb): the config's prefixes, the
forward, the nested loss and its gradients against a plain float64 reference, the fast path against the plain one,
save/load, and `train()` on planted-feature toy data."""
import json
import numpy as np
import pytest
import torch
from sae_tutorial.sae import SAE, SAEConfig, MatryoshkaSAE, BatchTopKSAE, make_sae, load_config
from sae_tutorial.losses import LossConfig, matryoshka_loss, reconstruction_loss, sae_loss
from sae_tutorial.fast import nested_decode
from sae_tutorial.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_one_thread")
PREFIXES = [3, 8, 20, 32]

def cfg(**kw):
    return SAEConfig(**{"d_in": 8, "expansion_factor": 4, "architecture": "matryoshka", "k": 3,
                        "matryoshka_prefixes": PREFIXES, **kw})

def randomized(seed=0, dtype=torch.float64, **kw):
    "A Matryoshka SAE with every parameter random (so references are not vacuous)."
    sae = make_sae(cfg(**kw), dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters(): p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    return sae

def reference(sae, x):
    "Plain float64 formulas, written out here: pre, the k·B largest ReLU(pre) of the batch, x_hat, every x̂_m, the loss."
    W_enc, b_enc, W_dec, b_dec = (t.detach().double() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    x = x.double()
    pre = (x - b_dec) @ W_enc + b_enc
    acts = pre.clamp_min(0).reshape(-1)
    keep = acts.argsort(descending=True)[: sae.cfg.k * len(x)]
    f = torch.zeros_like(acts); f[keep] = acts[keep]; f = f.reshape(pre.shape)
    x_hats = torch.stack([f[:, :m] @ W_dec[:m] + b_dec for m in sae.prefixes])
    loss = sum(((x - xm) ** 2).sum(1).mean() for xm in x_hats) / len(sae.prefixes)
    return f, f @ W_dec + b_dec, x_hats, loss

# ---------------------------------------------------------------- config
@pytest.mark.parametrize("prefixes,msg", [
    ([8, 3, 32], "strictly increasing"), ([3, 8, 20], "whose last is d_sae=32"), ([0, 32], "sizes >= 1"),
    ([], "strictly increasing"), ([8, 8, 32], "strictly increasing")])
def test_bad_prefixes_name_the_fix(prefixes, msg):
    with pytest.raises(ValueError, match=msg) as e: cfg(matryoshka_prefixes=prefixes)
    assert "e.g. [2, 4, 8, 16, 32]" in str(e.value) and "leave it None" in str(e.value)

def test_prefixes_only_for_matryoshka_and_typed():
    with pytest.raises(ValueError, match="only read by architecture='matryoshka', not 'batchtopk'"):
        cfg(architecture="batchtopk")
    with pytest.raises(ValueError, match="matryoshka_prefixes must be a list of integers"): cfg(matryoshka_prefixes="3,32")
    with pytest.raises(ValueError, match="matryoshka_prefixes must be a list of integers"): cfg(matryoshka_prefixes=[3, 32.0])
    with pytest.raises(ValueError, match="k=40 must lie in 1..d_sae=32"): cfg(k=40)

def test_default_prefixes_halve():
    assert cfg(matryoshka_prefixes=None).prefixes == [2, 4, 8, 16, 32]
    assert SAEConfig(d_in=3, expansion_factor=3, architecture="matryoshka", k=2).prefixes == [1, 2, 4, 9]   # 9>>4 = 0 dropped
    assert cfg(matryoshka_prefixes=(3, 32)).matryoshka_prefixes == [3, 32]            # a tuple is stored as a list

def test_config_json_round_trip():
    c = cfg()
    assert SAEConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c

# ---------------------------------------------------------------- forward, loss, gradients
@pytest.mark.parametrize("fast", [False, True])
def test_forward_and_loss_match_float64_reference(fast):
    sae = randomized(fast=fast).train()
    x = torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = sae(x)
    f, x_hat, x_hats, loss = reference(sae, x)
    torch.testing.assert_close(out.f, f); torch.testing.assert_close(out.x_hat, x_hat)
    assert (out.f != 0).sum() == 3 * 16                                      # BatchTopK over the whole dictionary
    torch.testing.assert_close(sae.prefix_reconstructions(out), x_hats)
    torch.testing.assert_close(sae_loss(sae, x, out, LossConfig(sparsity="none")).recon, loss)
    assert (out.active is not None) == fast                                   # fast: the pairs, so nested_decode ran

def test_gradients_fast_equal_plain_equal_reference():
    x = torch.randn(24, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = {}
    for fast in (False, True):
        sae = randomized(fast=fast).train()
        sae_loss(sae, x, sae(x), LossConfig(sparsity="none")).total.backward()
        grads[fast] = {n: p.grad.clone() for n, p in sae.named_parameters()}
    # reference: autograd through the float64 formulas with f's support fixed to the kept entries
    sae = randomized()
    W_enc, b_enc, W_dec, b_dec = (p.detach().clone().requires_grad_() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    f_ref = reference(sae, x)[0]
    pre = (x - b_dec) @ W_enc + b_enc
    f = pre * (f_ref > 0)
    loss = sum(((x - (f[:, :m] @ W_dec[:m] + b_dec)) ** 2).sum(1).mean() for m in PREFIXES) / len(PREFIXES)
    loss.backward()
    ref = {"W_enc": W_enc.grad, "b_enc": b_enc.grad, "W_dec": W_dec.grad, "b_dec": b_dec.grad}
    for n in ref:
        torch.testing.assert_close(grads[False][n], ref[n], msg=n)
        torch.testing.assert_close(grads[True][n], ref[n], msg=n)

def test_nested_decode_matches_dense_prefixes_and_auxk_gradients():
    "With AuxK on dead latents and leading dimensions [batch, seq], fast and plain agree to float64 precision."
    x = torch.randn(4, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    dead = torch.zeros(32, dtype=torch.bool); dead[[1, 9, 25]] = True
    res = {}
    for fast in (False, True):
        sae = randomized(fast=fast).train()
        out = sae(x)
        x_hats = sae.prefix_reconstructions(out)
        assert x_hats.shape == (4, 4, 5, 8)
        lo = sae_loss(sae, x, out, LossConfig(sparsity="none", aux="auxk", k_aux=2), dead_mask=dead)
        lo.total.backward()
        res[fast] = (x_hats.detach(), lo.total.detach(), {n: p.grad for n, p in sae.named_parameters()})
    torch.testing.assert_close(res[True][0], res[False][0]); torch.testing.assert_close(res[True][1], res[False][1])
    for n in res[False][2]: torch.testing.assert_close(res[True][2][n], res[False][2][n], msg=n)

def test_nested_decode_empty_pieces_are_b_dec():
    "Rows whose kept latents all lie beyond a prefix reconstruct it as b_dec alone."
    sae = randomized().train()
    x = torch.randn(6, 8, dtype=torch.float64)
    out = sae(x)
    got = nested_decode(out.active, sae.W_dec, sae.b_dec, [1, 32])
    f = out.f.detach()
    torch.testing.assert_close(got[0], (f[:, :1] @ sae.W_dec[:1] + sae.b_dec).detach())
    torch.testing.assert_close(got[1], out.x_hat.detach())

def test_one_prefix_is_plain_batchtopk():
    "matryoshka_prefixes=[d_sae]: the same forward, loss and gradients as a BatchTopK SAE with the same weights."
    x = torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    mat = randomized(matryoshka_prefixes=[32]).train()
    bt = make_sae(SAEConfig(d_in=8, expansion_factor=4, architecture="batchtopk", k=3), dtype=torch.float64).train()
    bt.load_state_dict(mat.state_dict())
    for s in (mat, bt): sae_loss(s, x, s(x), LossConfig(sparsity="none")).total.backward()
    for (n, a), b in zip(mat.named_parameters(), bt.parameters()): torch.testing.assert_close(a.grad, b.grad, msg=n)
    torch.testing.assert_close(mat.threshold, bt.threshold)

def test_matryoshka_loss_shape_error():
    with pytest.raises(ValueError, match=r"expected \[n_prefixes, \*x.shape\]"):
        matryoshka_loss(torch.zeros(4, 8), torch.zeros(4, 8))
    assert float(matryoshka_loss(torch.ones(2, 3), torch.zeros(1, 2, 3))) == float(reconstruction_loss(torch.ones(2, 3), torch.zeros(2, 3)))

def test_input_scale_divides_every_prefix():
    sae = randomized(input_scale=0.5, fast=False).train()
    x = torch.randn(8, 8, dtype=torch.float64)
    out = sae(x)
    x_hats = sae.prefix_reconstructions(out)
    torch.testing.assert_close(x_hats[-1], out.x_hat)
    torch.testing.assert_close(x_hats[0], (out.f[:, :3] @ sae.W_dec[:3] + sae.b_dec) / 0.5)

def test_eval_uses_threshold_and_plain_prefixes():
    sae = randomized().train()
    x = torch.randn(32, 8, dtype=torch.float64)
    sae(x)                                                     # one training batch sets the threshold
    sae.eval()
    out = sae(x)
    assert out.active is None
    pre = out.pre
    torch.testing.assert_close(out.f, pre.clamp_min(0) * (pre > sae.threshold))
    torch.testing.assert_close(sae.prefix_reconstructions(out)[-1], out.x_hat)

# ---------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    sae = randomized(dtype=torch.float32).train()
    x = torch.randn(16, 8)
    sae(x); sae.eval()
    sae.save(tmp_path/"ck")
    assert json.loads((tmp_path/"ck"/"cfg.json").read_text())["matryoshka_prefixes"] == PREFIXES
    assert load_config(tmp_path/"ck") == sae.cfg
    for loader in (SAE.load, MatryoshkaSAE.load, BatchTopKSAE.load):      # a Matryoshka SAE is a BatchTopK SAE
        back = loader(tmp_path/"ck").eval()
        assert type(back) is MatryoshkaSAE and back.prefixes == PREFIXES
        for k, v in sae.state_dict().items(): assert torch.equal(back.state_dict()[k], v), k
        assert torch.equal(back(x).x_hat, sae(x).x_hat)
    d = json.loads((tmp_path/"ck"/"cfg.json").read_text()); d["matryoshka_prefixes"] = [3, 8]
    (tmp_path/"ck"/"cfg.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="cfg.json: matryoshka_prefixes=\\[3, 8\\] must be"): SAE.load(tmp_path/"ck")

# ---------------------------------------------------------------- train()
def _planted(n, seed=0):
    "n rows of x = Σ a_i D[i] over 32 planted unit directions in 8 dims; feature i fires w.p. 0.3·0.85^i (general first)."
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(32, 8, generator=g); D /= D.norm(dim=1, keepdim=True)
    p = 0.3 * 0.85 ** torch.arange(32)
    a = (torch.rand(n, 32, generator=g) < p) * (0.5 + torch.rand(n, 32, generator=g))
    return a @ D

def test_train_trains_it():
    "train() fits a Matryoshka SAE: every prefix's error falls, and error falls along the prefixes."
    x = _planted(16384)
    torch.manual_seed(0)
    sae = make_sae(cfg(matryoshka_prefixes=[4, 8, 16, 32]))
    with torch.no_grad(): before = matryoshka_loss(x[:2048], sae.prefix_reconstructions(sae.train()(x[:2048]))).item()
    batches = (x[i % 16384:i % 16384 + 128] for i in range(0, 256 * 128, 128))   # two epochs
    res = train(sae, batches, LossConfig(sparsity="none", aux="auxk", k_aux=4),
                TrainConfig(lr=3e-3, steps=256, progress=False, log_every=8))
    assert res.steps == 256 and isinstance(res.sae, MatryoshkaSAE)
    assert np.mean(res.history.recon[-8:]) < 0.5 * np.mean(res.history.recon[:8])
    sae.train()
    with torch.no_grad():
        err = (x[:2048] - sae.prefix_reconstructions(sae(x[:2048]))).pow(2).sum(-1).mean(-1)
    assert err.mean().item() < 0.5 * before
    assert (err[1:] < err[:-1]).all(), err                      # more latents, less error (after 64 steps the untrained
    # tail latents still made the whole dictionary worse than its first half: the nesting is learnt)
    assert abs(np.mean(res.history.l0[-8:]) - 3) < 1e-6         # BatchTopK: k per row on average in training
