"Every check passes a correct implementation and names each mistake it claims to diagnose."
from types import SimpleNamespace
from typing import NamedTuple
import math
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from sae_tutorial.checks import (CHECKS, CheckFailed, check_auxk_loss, check_ce_loss_recovered, check_dead_penalty,
                                 check_explained_variance, check_feature_density, check_feature_dimensionality,
                                 check_hoyer_penalty, check_l0, check_l1_penalty, check_l1_wdec_penalty, check_mmcs,
                                 check_normalize_decoder, check_normalized_mse, check_reconstruction_loss,
                                 check_relu_sae, check_remove_parallel_grad, check_resample_dead_features,
                                 check_smooth_l0_penalty, check_sparsity_coeff_at, check_coeff_for_target_l0, check_tanh_penalty, check_topk_sae,
                                 check_toy_forward, check_toy_loss)
from sae_tutorial.checks import _is_solution
from sae_tutorial.sae import ReLUSAE, TopKSAE, SAEConfig

torch.set_num_threads(1)

def fails(check, impl, *needles):
    with pytest.raises(CheckFailed) as e: check(impl)
    for n in needles: assert n in str(e.value), f"{n!r} not in: {e.value}"
    return str(e.value)

# --- losses -------------------------------------------------------------------------------------------
def recon_ok(x, x_hat): return ((x - x_hat) ** 2).sum(-1).mean()

@pytest.mark.parametrize("impl,needle", [
    (lambda x, y: F.mse_loss(y, x), "averaged over d_in as well"),
    (lambda x, y: ((x - y) ** 2).sum(), "summed over the batch too"),
    (lambda x, y: ((x - y) ** 2).sum(0).mean(), "axes are swapped"),
    (lambda x, y: (x - y).norm(dim=-1).mean(), "without squaring"),
    (lambda x, y: (x - y).sum(-1).mean(), "signs cancel"),
    (lambda x, y: (x - y).abs().sum(-1).mean(), "|x - x_hat|"),
    (lambda x, y: ((x - y) ** 2).sum(-1).mean() + 0.1, "matches none of the usual mistakes"),
])
def test_reconstruction_loss(impl, needle):
    assert check_reconstruction_loss(recon_ok)
    fails(check_reconstruction_loss, impl, "reconstruction_loss", needle)

def nmse_ok(x, y): return ((x - y) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()

@pytest.mark.parametrize("impl,needle", [
    (lambda x, y: ((x - y) ** 2).sum() / (x ** 2).sum(), "spread around zero"),
    (lambda x, y: ((x - y) ** 2).sum() / ((x - x.mean(-1, keepdim=True)) ** 2).sum(), "mean over features"),
    (lambda x, y: (((x - y) ** 2).sum(-1) / ((x - x.mean(0)) ** 2).sum(-1)).mean(), "per-row ratios"),
    (lambda x, y: ((x - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum(), "variance of x_hat"),
])
def test_normalized_mse(impl, needle):
    assert check_normalized_mse(nmse_ok)
    fails(check_normalized_mse, impl, needle)

@pytest.mark.parametrize("impl,needle", [
    (lambda f: f.abs().sum(0).mean(), "wrong axis"),
    (lambda f: f.abs().mean(), "averaged over the features too"),
    (lambda f: f.abs().sum(), "summed over the batch too"),
    (lambda f: f.sum(-1).mean(), "absolute value"),
    (lambda f: f.norm(dim=-1).mean(), "L2 norm"),
    (lambda f: (f != 0).float().sum(-1).mean(), "counted nonzero"),
])
def test_l1_penalty(impl, needle):
    assert check_l1_penalty(lambda f: f.abs().sum(-1).mean())
    fails(check_l1_penalty, impl, needle)

@pytest.mark.parametrize("impl,needle", [
    (lambda f, W: (f.abs() * W.norm(dim=1) ** 2).sum(-1).mean(), "squared norm"),
    (lambda f, W: f.abs().sum(-1).mean(), "left out the decoder norms"),
    (lambda f, W: (f.abs() * W.norm(dim=1)).sum(0).mean(), "summed over the batch (dim 0)"),
    (lambda f, W: (f.abs() * W.norm(dim=1)).sum(), "summed over the batch too"),
    (lambda f, W: (f * W.norm(dim=1)).sum(-1).mean(), "absolute value"),
    (lambda f, W: (f.abs() * W.norm(dim=0)).sum(-1).mean(), "columns"),
])
def test_l1_wdec_penalty(impl, needle):
    assert check_l1_wdec_penalty(lambda f, W: (f.abs() * W.norm(dim=1)).sum(-1).mean())
    fails(check_l1_wdec_penalty, impl, needle)

# --- SAE ------------------------------------------------------------------------------------------------
class NoBdec(ReLUSAE):
    def pre_acts(self, x): return x @ self.W_enc + self.b_enc
class AddBdec(ReLUSAE):
    def pre_acts(self, x): return (x + self.b_dec) @ self.W_enc + self.b_enc
class NoBenc(ReLUSAE):
    def pre_acts(self, x): return (x - self.b_dec) @ self.W_enc
class WdecT(ReLUSAE):
    def pre_acts(self, x): return (x - self.b_dec) @ self.W_dec.T + self.b_enc
class NoRelu(ReLUSAE):
    def activation(self, pre): return pre
class DecodeNoBdec(ReLUSAE):
    def decode(self, f): return f @ self.W_dec
class DecodeMinusBdec(ReLUSAE):
    def decode(self, f): return f @ self.W_dec - self.b_dec
class DecodeWencT(ReLUSAE):
    def decode(self, f): return f @ self.W_enc.T + self.b_dec

@pytest.mark.parametrize("cls,needle", [
    (NoBdec, "b_dec is not subtracted before encoding"), (AddBdec, "added instead of subtracted"),
    (NoBenc, "b_enc is missing"), (WdecT, "W_dec.T instead of W_enc"), (NoRelu, "activation function is missing"),
    (DecodeNoBdec, "not added back when decoding"), (DecodeMinusBdec, "subtracted when decoding"),
    (DecodeWencT, "W_enc.T instead of W_dec"),
])
def test_relu_sae(cls, needle):
    assert check_relu_sae(ReLUSAE)
    assert check_relu_sae(ReLUSAE(SAEConfig(d_in=3, expansion_factor=2.0)))      # an instance works too
    fails(check_relu_sae, cls, needle)

def _topk_variant(select):
    class V(TopKSAE):
        def activation(self, pre): return select(pre, self.cfg.k)
    return V

def _keep(pre, idx, vals): return torch.zeros_like(pre).scatter(-1, idx, vals)

@pytest.mark.parametrize("select,needle", [
    (lambda p, k: _keep(p, p.abs().topk(k, -1).indices, F.relu(p.gather(-1, p.abs().topk(k, -1).indices))), "|pre|"),
    (lambda p, k: _keep(p, p.topk(k, -1).indices, p.topk(k, -1).values), "no ReLU after TopK"),
    (lambda p, k: _keep(p, p.topk(k, -1, largest=False).indices, F.relu(p.topk(k, -1, largest=False).values)), "smallest"),
    (lambda p, k: _keep(p, p.topk(k + 1, -1).indices, F.relu(p.topk(k + 1, -1).values)), "k+1"),
    (lambda p, k: _keep(p, p.topk(k - 1, -1).indices, F.relu(p.topk(k - 1, -1).values)), "k-1"),
    (lambda p, k: torch.zeros_like(p).scatter(0, p.topk(k, 0).indices, F.relu(p.topk(k, 0).values)), "wrong axis"),
])
def test_topk_sae(select, needle):
    assert check_topk_sae(TopKSAE)
    fails(check_topk_sae, _topk_variant(select), "TopKSAE", needle)

def _norm_variant(body):
    class V(ReLUSAE):
        @torch.no_grad()
        def normalize_decoder_(self): body(self)
    return V

def _replace(s): s.W_dec = nn.Parameter(s.W_dec / s.W_dec.norm(dim=1, keepdim=True))

@pytest.mark.parametrize("body,needle", [
    (lambda s: None, "not normalised"),
    (lambda s: s.W_dec.div_(s.W_dec.norm(dim=0, keepdim=True)), "columns"),
    (lambda s: s.W_dec.div_(s.W_dec.norm()), "Frobenius"),
    (lambda s: s.W_dec.div_(s.W_dec.pow(2).sum(1, keepdim=True)), "squared row norms"),
    (_replace, "replaced sae.W_dec"),
])
def test_normalize_decoder(body, needle):
    assert check_normalize_decoder(ReLUSAE)
    fails(check_normalize_decoder, _norm_variant(body), needle)

def _grad_variant(body):
    class V(ReLUSAE):
        @torch.no_grad()
        def remove_parallel_grad_(self): body(self.W_dec, self.W_dec.grad)
    return V

def _unit(W): return W / W.norm(dim=1, keepdim=True)

@pytest.mark.parametrize("body,needle", [
    (lambda W, g: None, "unchanged"),
    (lambda W, g: g.copy_((g * _unit(W)).sum(1, keepdim=True) * _unit(W)), "kept only the parallel"),
    (lambda W, g: g.sub_((g * _unit(W)).sum(0, keepdim=True) * _unit(W)), "columns"),
    (lambda W, g: g.sub_(2 * (g * _unit(W)).sum(1, keepdim=True) * _unit(W)), "twice"),
])
def test_remove_parallel_grad(body, needle):
    assert check_remove_parallel_grad(ReLUSAE)
    fails(check_remove_parallel_grad, _grad_variant(body), needle)

# --- metrics --------------------------------------------------------------------------------------------
def ev_ok(x, y): return float(1 - ((x - y) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())

@pytest.mark.parametrize("impl,needle", [
    (lambda x, y: 1 - ((x - y) ** 2).sum() / (x ** 2).sum(), "around zero instead of the mean"),
    (lambda x, y: ((x - y) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), "UNexplained"),
    (lambda x, y: (1 - ((x - y) ** 2).sum(0) / ((x - x.mean(0)) ** 2).sum(0)).mean(), "each dimension separately"),
    (lambda x, y: 1 - ((x - y) ** 2).sum() / ((x - x.mean(-1, keepdim=True)) ** 2).sum(), "mean over features"),
    (lambda x, y: 1 - ((x - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum(), "variance of x_hat"),
    (lambda x, y: 1 - (((x - y) ** 2).sum(1) / ((x - x.mean(0)) ** 2).sum(1)).mean(), "per-row ratios"),
])
def test_explained_variance(impl, needle):
    assert check_explained_variance(ev_ok)
    fails(check_explained_variance, impl, needle)

@pytest.mark.parametrize("impl,needle", [
    (lambda f: (f != 0).sum(0).float().mean(), "counted over the batch"),
    (lambda f: (f != 0).float().mean(), "fraction of nonzero entries"),
    (lambda f: (f != 0).float().sum(), "summed the counts"),
    (lambda f: f.sum(1).mean(), "that is L1"),
])
def test_l0(impl, needle):
    assert check_l0(lambda f: (f != 0).sum(1).float().mean())
    fails(check_l0, impl, needle)

@pytest.mark.parametrize("impl,needle", [
    (lambda f: (f != 0).float().mean(1), "wrong axis"),
    (lambda f: (f != 0).float().sum(0), "counts"),
    (lambda f: f.mean(0), "averaged the activation values"),
])
def test_feature_density(impl, needle):
    assert check_feature_density(lambda f: (f != 0).double().mean(0))
    fails(check_feature_density, impl, needle)

@pytest.mark.parametrize("impl,needle", [
    (lambda c, s, a: (s - c) / (a - c), "LOST"),
    (lambda c, s, a: (a - s) / a, "denominator"),
    (lambda c, s, a: c / s, "ratio"),
])
def test_ce_loss_recovered(impl, needle):
    assert check_ce_loss_recovered(lambda c, s, a: (a - s) / (a - c))
    fails(check_ce_loss_recovered, impl, needle)

def _cos(A, B): return F.normalize(A, dim=1) @ F.normalize(B, dim=1).T

@pytest.mark.parametrize("impl,needle", [
    (lambda T, L: _cos(T, L).max(0).values.mean(), "wrong axis"),
    (lambda T, L: (T @ L.T).max(1).values.mean(), "without normalising"),
    (lambda T, L: _cos(T, L).mean(), "averaged the cosines"),
    (lambda T, L: _cos(T, L).abs().max(1).values.mean(), "|cos|"),
])
def test_mmcs(impl, needle):
    assert check_mmcs(lambda T, L: _cos(T, L).max(1).values.mean())
    fails(check_mmcs, impl, needle)

# --- toy model ------------------------------------------------------------------------------------------
class ToyOut(NamedTuple):
    h: torch.Tensor
    x_hat: torch.Tensor

class Toy(nn.Module):
    "An independent minimal toy model with the toy.py interface: W [n_inst, m, n], b [n_inst, n]."
    def __init__(self, n_inst=3, m=2, n=5):
        super().__init__()
        self.cfg = SimpleNamespace(hidden_relu=False, signed_inputs=False)
        self.W = nn.Parameter(torch.randn(n_inst, m, n)); self.b = nn.Parameter(torch.zeros(n_inst, n))
        self.register_buffer("importance", torch.ones(n_inst, n))
    def loss_per_instance(self, x, x_hat): return (self.importance[:, None] * (x - x_hat) ** 2).sum(-1).mean(-1)
    def hidden(self, x): return torch.einsum("imn,ibn->ibm", self.W, x)
    def out(self, h): return F.relu(torch.einsum("imn,ibm->ibn", self.W, h) + self.b[:, None])
    def forward(self, x):
        h = self.hidden(x); return ToyOut(h, self.out(h))

def _toy(**over):
    t = Toy()
    for k, f in over.items(): setattr(t, k, f.__get__(t))
    return t

@pytest.mark.parametrize("over,needle", [
    (dict(out=lambda s, h: torch.einsum("imn,ibm->ibn", s.W, h) + s.b[:, None]), "output ReLU is missing"),
    (dict(out=lambda s, h: F.relu(torch.einsum("imn,ibm->ibn", s.W, h))), "bias b is missing"),
    (dict(out=lambda s, h: F.relu(torch.einsum("imn,ibm->ibn", s.W, h)) + s.b[:, None]), "after the ReLU"),
    (dict(hidden=lambda s, x: F.relu(torch.einsum("imn,ibn->ibm", s.W, x))), "ReLU to the hidden layer"),
    (dict(hidden=lambda s, x: torch.einsum("mn,ibn->ibm", s.W[0], x),
          out=lambda s, h: F.relu(torch.einsum("mn,ibm->ibn", s.W[0], h) + s.b[:, None])), "instance 0's W"),
])
def test_toy_forward(over, needle):
    assert check_toy_forward(Toy())
    fails(check_toy_forward, _toy(**over), needle)

def test_toy_forward_x_hat_only():
    "A forward returning x_hat as a plain tensor is accepted; with the ReLU on the hidden layer it is diagnosed."
    t = Toy(); t.forward = lambda x: F.relu(torch.einsum("imn,ibm->ibn", t.W, F.relu(t.hidden(x))) + t.b[:, None])
    fails(check_toy_forward, t, "ReLU to the hidden layer too")

@pytest.mark.parametrize("loss,needle", [
    (lambda s, x, y: ((x - y) ** 2).sum(-1).mean(-1), "importance weights I_i are missing"),
    (lambda s, x, y: (s.importance[:, None] * (x - y) ** 2).mean(-1).mean(-1), "averaged over the features"),
    (lambda s, x, y: (s.importance[:, None] * (x - y) ** 2).sum(-1).mean(), "one number for all instances"),
    (lambda s, x, y: (s.importance[:, None] * (x - y) ** 2).sum(-1).sum(-1), "summed over the batch"),
    (lambda s, x, y: (s.importance[:, None] ** 2 * (x - y) ** 2).sum(-1).mean(-1), "squared the importance"),
    (lambda s, x, y: (s.importance[:, None] * (x - y)).pow(2).sum(-1).mean(-1), "weighted the error before squaring"),
])
def test_toy_loss(loss, needle):
    assert check_toy_loss(Toy())
    fails(check_toy_loss, _toy(loss_per_instance=loss), needle)

def _fd(W, den):
    num = W.norm(dim=-2) ** 2
    return torch.where(num > 1e-8, num / den.clamp_min(1e-8), torch.zeros_like(num))
def _ov(W): return (W / W.norm(dim=-2, keepdim=True).clamp_min(1e-8)).transpose(-1, -2) @ W

@pytest.mark.parametrize("impl,needle", [
    (lambda W: _fd(W, ((W.transpose(-1, -2) @ W) ** 2).sum(-1)), "did not normalise"),
    (lambda W: _fd(W, (_ov(W) ** 2).sum(-1) - _ov(W).diagonal(dim1=-2, dim2=-1) ** 2), "left out j = i"),
    (lambda W: _fd(W, _ov(W).abs().sum(-1)), "|Ŵ_i · W_j|"),
    (lambda W: _fd(W, (_ov(W) ** 2).sum(-2)), "wrong index"),
    (lambda W: W.norm(dim=-2) ** 2 / (_ov(W) ** 2).sum(-1), "NaN for a feature with W_i = 0"),
])
def test_feature_dimensionality(impl, needle):
    assert check_feature_dimensionality(lambda W: _fd(W, (_ov(W) ** 2).sum(-1)))
    fails(check_feature_dimensionality, impl, needle)

@pytest.mark.parametrize("impl,needle", [
    (lambda s, c, w: c if w <= 0 else c * min(1.0, s / w), "off by one"),
    (lambda s, c, w: c if w <= 0 else c * (s + 1) / w, "keeps growing"),
    (lambda s, c, w: c * min(1.0, (s + 1) / w), "raised ZeroDivisionError"),
    (lambda s, c, w: 0.0 if w <= 0 else c * min(1.0, (s + 1) / w), "no warm-up"),
])
def test_sparsity_coeff_at(impl, needle):
    assert check_sparsity_coeff_at(lambda s, c, w: c if w <= 0 else c * min(1.0, (s + 1) / w))
    fails(check_sparsity_coeff_at, impl, needle)

def _lam(coeffs, l0s, target, sort=True, log_l0=True, log_c=True, extrapolate=False):
    "An independent coeff_for_target_l0 (a scan over neighbours), with switches that introduce one mistake each."
    pairs = sorted(zip(coeffs, l0s)) if sort else list(zip(coeffs, l0s))
    fl, fc = (math.log if log_l0 else (lambda v: v)), (math.log if log_c else (lambda v: v))
    ic = math.exp if log_c else (lambda v: v)
    for (ca, la), (cb, lb) in zip(pairs, pairs[1:]):
        if la >= target >= lb and lb > 0:
            return ic(fc(ca) + (fl(target) - fl(la)) / (fl(lb) - fl(la)) * (fc(cb) - fc(ca)))
    if extrapolate: return pairs[-1][0]
    raise ValueError("no bracket")

@pytest.mark.parametrize("impl,needle", [
    (lambda c, l, t: _lam(c, l, t, sort=False), "not sorted"),
    (lambda c, l, t: _lam(c, l, t, log_l0=False, log_c=False), "linearly in L0"),
    (lambda c, l, t: _lam(c, l, t, log_l0=False), "log λ linearly in L0 itself"),
    (lambda c, l, t: _lam(c, l, t, log_c=False), "λ itself linearly in log L0"),
    (lambda c, l, t: min(zip(l, c), key=lambda p: abs(p[0] - t))[1], "nearest"),
    (lambda c, l, t: _lam(c, l, t, extrapolate=True), "raise ValueError instead of extrapolating"),
])
def test_coeff_for_target_l0(impl, needle):
    assert check_coeff_for_target_l0(_lam)
    fails(check_coeff_for_target_l0, impl, needle)

# --- resampling -------------------------------------------------------------------------------------------
@torch.no_grad()
def resample_ok(sae, dead, x, optimizer=None, reset="dead", point="x-bdec", unit=True, benc=True, touch_alive=False,
                enc_rows=False):
    "An independent implementation of Anthropic resampling, with switches that introduce one mistake each."
    idx = dead.nonzero().flatten()
    err = (sae(x).x_hat - x).pow(2).sum(-1)
    pick = torch.multinomial(err.pow(2).double(), len(idx), replacement=True, generator=torch.Generator().manual_seed(0))
    dirs = x[pick] - (sae.b_dec if point == "x-bdec" else 0)
    if point == "random": dirs = torch.randn(len(idx), x.shape[1])
    if unit: dirs = dirs / dirs.norm(dim=1, keepdim=True)
    else: dirs = dirs * 3
    enc_norm = sae.W_enc[:, ~dead].norm(dim=0).mean()
    rows = slice(None) if touch_alive else idx
    sae.W_dec[idx] = dirs
    if touch_alive: sae.W_dec[~dead] *= 0.5
    sae.W_enc[:, idx] = (dirs * 0.2 * enc_norm).T
    if benc: sae.b_enc[idx] = 0.0
    if optimizer is None or reset is None: return idx
    if reset == "all": optimizer.state.clear(); return idx
    for name, where in (("W_enc", (slice(None), rows) if not enc_rows else (rows,)), ("b_enc", (rows,)), ("W_dec", (rows,))):
        st = optimizer.state[getattr(sae, name)]
        for k in ("exp_avg", "exp_avg_sq"):
            if reset == "everything_zeroed": st[k].zero_()
            else: st[k][where] = 0.0
    return idx

def _replace_param(sae, dead, x, optimizer=None):
    resample_ok(sae, dead, x, optimizer); sae.W_dec = nn.Parameter(sae.W_dec.detach().clone())

@pytest.mark.parametrize("kw,needle", [
    (dict(reset=None), "Adam state not reset after resampling"),
    (dict(reset="all"), "WHOLE optimizer state"),
    (dict(reset="everything_zeroed"), "ALIVE latents too"),
    (dict(point="x"), "subtract b_dec first"),
    (dict(point="random"), "do not point at inputs"),
    (dict(unit=False), "unit norm"),
    (dict(benc=False), "b_enc of resampled latents"),
    (dict(touch_alive=True), "ALIVE latents changed"),
])
def test_resample_dead_features(kw, needle):
    assert check_resample_dead_features(resample_ok)
    fails(check_resample_dead_features, lambda *a, **k: resample_ok(*a, **k, **kw), needle)

def test_resample_wrong_axis_and_replaced_parameter():
    fails(check_resample_dead_features, lambda *a, **k: resample_ok(*a, **k, enc_rows=True), "raised IndexError")
    fails(check_resample_dead_features, _replace_param, "replaced sae.W_dec")
    def no_change(sae, dead, x, optimizer=None): return dead.nonzero().flatten()
    fails(check_resample_dead_features, no_change, "unchanged")

def test_random_resampling_allowed_when_not_anthropic():
    assert check_resample_dead_features(lambda *a, **k: resample_ok(*a, **k, point="random"), anthropic=False)

# --- plumbing ---------------------------------------------------------------------------------------------
def test_not_implemented_passes_through():
    def stub(f): raise NotImplementedError("Exercise l1_penalty: the hint")
    with pytest.raises(NotImplementedError, match="the hint"): check_l1_penalty(stub)

def test_errors_become_check_failures():
    fails(check_l1_penalty, lambda f: f.foo(), "l1_penalty raised AttributeError")

def test_solution_is_flagged(capsys):
    from sae_tutorial.losses import l1_penalty
    assert _is_solution(l1_penalty) and not _is_solution(lambda f: f)
    check_l1_penalty(l1_penalty)
    assert "package's own solution" in capsys.readouterr().out

def test_checks_table_names_real_checks():
    import sae_tutorial.checks as C, ast
    for name, call in CHECKS.items():
        fn = ast.parse(call).body[0].value.func.id
        assert callable(getattr(C, fn)), (name, call)

# --- the package's own solutions pass every check -------------------------------------------------------
def test_package_solutions_pass():
    from sae_tutorial import sae, losses, metrics
    for ok in (check_reconstruction_loss(losses.reconstruction_loss), check_normalized_mse(losses.normalized_mse),
               check_l1_penalty(losses.l1_penalty), check_l1_wdec_penalty(losses.l1_wdec_penalty),
               check_relu_sae(sae.ReLUSAE), check_topk_sae(sae.TopKSAE), check_normalize_decoder(sae.ReLUSAE),
               check_remove_parallel_grad(sae.ReLUSAE), check_explained_variance(metrics.explained_variance),
               check_l0(metrics.l0), check_feature_density(metrics.feature_density),
               check_ce_loss_recovered(metrics.ce_loss_recovered), check_mmcs(metrics.mmcs)):
        assert ok is True

def test_toy_solutions_pass():
    toy = pytest.importorskip("sae_tutorial.toy")
    assert check_toy_forward(toy.ToyModel) and check_toy_loss(toy.ToyModel)
    assert check_feature_dimensionality(toy.feature_dimensionality)

def test_train_solutions_pass():
    train = pytest.importorskip("sae_tutorial.train")
    assert check_sparsity_coeff_at(train.sparsity_coeff_at) and check_resample_dead_features(train.resample_dead_features)
    assert check_coeff_for_target_l0(train.coeff_for_target_l0)

# --- the other losses ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl,needle", [
    (lambda f, s: torch.tanh(f).sum(-1).mean(), "ignored `scale`"),
    (lambda f, s: (s * torch.tanh(f)).sum(-1).mean(), "outside the tanh"),
    (lambda f, s: torch.tanh(s * f).mean(), "averaged over the features"),
    (lambda f, s: torch.tanh(s * f).sum(), "summed over the batch"),
])
def test_tanh_penalty(impl, needle):
    assert check_tanh_penalty(lambda f, s: torch.tanh(s * f).sum(-1).mean())
    fails(check_tanh_penalty, impl, needle)

def _sl0(f, a, b, sub=True, div=True, swap=False):
    if swap: a, b = b, a
    sb = torch.sigmoid(torch.tensor(b, dtype=f.dtype))
    v = torch.sigmoid(a * f + b) - (sb if sub else 0)
    return (v / (1 - sb) if div else v).sum(-1).mean()

@pytest.mark.parametrize("kw,needle", [
    (dict(sub=False), "did not subtract σ(β)"), (dict(div=False), "did not divide by 1 - σ(β)"),
    (dict(sub=False, div=False), "left out both"), (dict(swap=True), "swapped"),
])
def test_smooth_l0_penalty(kw, needle):
    assert check_smooth_l0_penalty(_sl0)
    fails(check_smooth_l0_penalty, lambda f, a, b: _sl0(f, a, b, **kw), needle)

def _hoyer(f):
    l1, l2 = f.abs().sum(-1), f.norm(dim=-1)
    return torch.where(l2 > 0, l1 / torch.where(l2 > 0, l2, torch.ones_like(l2)), torch.zeros_like(l2)).mean()

@pytest.mark.parametrize("impl,needle", [
    (lambda f: (f.abs().sum(-1) / f.norm(dim=-1)).mean(), "NaN"),
    (lambda f: f.abs().sum() / f.norm(), "batch totals"),
    (lambda f: torch.nan_to_num(f.abs().sum(-1) / f.norm(dim=-1) ** 2).mean(), "squared L2"),
    (lambda f: torch.nan_to_num(f.norm(dim=-1) / f.abs().sum(-1)).mean(), "inverted"),
    (lambda f: (f.abs().sum(-1) / f.norm(dim=-1))[f.norm(dim=-1) > 0].mean(), "only over the nonzero rows"),
])
def test_hoyer_penalty(impl, needle):
    assert check_hoyer_penalty(_hoyer)
    fails(check_hoyer_penalty, impl, needle)

@pytest.mark.parametrize("impl,needle", [
    (lambda W, m: W[~m].pow(2).sum(), "ALIVE"), (lambda W, m: W[m].norm(dim=1).sum(), "instead of squared norms"),
    (lambda W, m: W[m].pow(2).mean(), "averaged instead of summing"), (lambda W, m: W[m].pow(2).sum(1).mean(), "averaged over the dead"),
    (lambda W, m: W.pow(2).sum(), "every feature"), (lambda W, m: W[:, m].pow(2).sum(), "raised IndexError"),
])
def test_dead_penalty(impl, needle):
    assert check_dead_penalty(lambda W, m: W[m].pow(2).sum())
    fails(check_dead_penalty, impl, needle)

def _auxk(x, out, W_dec, dead, k_aux, only_dead=True, relu=True, residual=True, detach=True, topk=True, mean_d=False):
    n_dead = int(dead.sum())
    if n_dead == 0: return out.pre.new_zeros(())
    e = x - out.x_hat
    if detach: e = e.detach()
    if not residual: e = x
    p = out.pre.masked_fill(~dead, float("-inf")) if only_dead else out.pre
    if topk:
        vals, idx = p.topk(min(k_aux, n_dead), dim=-1)
        f = torch.zeros_like(out.pre).scatter(-1, idx, F.relu(vals) if relu else vals)
    else: f = F.relu(out.pre.masked_fill(~dead, 0.0))
    sq = (e - f @ W_dec).pow(2)
    return sq.mean() if mean_d else sq.sum(-1).mean()

@pytest.mark.parametrize("kw,needle", [
    (dict(only_dead=False), "over ALL latents"), (dict(relu=False), "no ReLU"), (dict(residual=False), "reconstructed x itself"),
    (dict(topk=False), "every dead latent"), (dict(mean_d=True), "averaged over d_in"), (dict(detach=False), "detach the residual"),
])
def test_auxk_loss(kw, needle):
    assert check_auxk_loss(_auxk)
    fails(check_auxk_loss, lambda *a: _auxk(*a, **kw), needle)

def test_auxk_no_dead_must_be_zero():
    fails(check_auxk_loss, lambda x, out, W, dead, k: _auxk(x, out, W, dead, k) if dead.any() else torch.tensor(1.0), "must be 0")

def test_other_loss_solutions_pass():
    from sae_tutorial import losses as L
    assert check_tanh_penalty(L.tanh_penalty) and check_smooth_l0_penalty(L.smooth_l0_penalty)
    assert check_hoyer_penalty(L.hoyer_penalty) and check_dead_penalty(L.dead_penalty) and check_auxk_loss(L.auxk_loss)

# --- reading and steering features (06b, 08) ----------------------------------------------------------------
from sae_tutorial.checks import check_feature_direction, check_logit_effects, check_merge_topk, check_sink_mask, check_steering_hook

def _sink(tokens, norms, special_ids=(0,), outlier_factor=10.0, pos0=True, special=True, pos0_first=False, med="kept",
          ids=None, as_bool=False):
    "A learner's sink_mask, written independently of the check's reference, with one switch per mistake."
    m = torch.zeros(tokens.shape, dtype=torch.uint8)
    s = torch.isin(tokens, torch.tensor(list(ids if ids is not None else special_ids)))
    if pos0 and pos0_first: m[:, 0] = 1
    if special: m[s] = 2
    if pos0 and not pos0_first: m[:, 0] = 1
    if outlier_factor is not None:
        kept = m == 0
        if med == "kept": ref = norms[kept].median()
        elif med == "all": ref = norms.median()
        elif med == "mean": ref = norms[kept].mean()
        elif med == "row": ref = torch.tensor([norms[i][kept[i]].median() for i in range(norms.shape[0])])[:, None]
        else: ref = torch.tensor([norms[:, j][kept[:, j]].median() if kept[:, j].any() else float("inf")
                                  for j in range(norms.shape[1])])[None]
        m[kept & (norms > outlier_factor * ref)] = 3
    return m != 0 if as_bool else m

@pytest.mark.parametrize("kw,needle", [
    (dict(pos0=False), "position 0 is not masked"), (dict(special=False), "special tokens are not masked"),
    (dict(pos0_first=True), "position 0 comes first"), (dict(med="all"), "median of ALL positions"),
    (dict(med="mean"), "used the mean"), (dict(med="row"), "median per context"), (dict(med="col"), "median per position"),
    (dict(ids=(0,)), "every id in special_ids"), (dict(as_bool=True), "yes/no mask"),
])
def test_sink_mask(kw, needle):
    assert check_sink_mask(_sink)
    fails(check_sink_mask, lambda *a, **k: _sink(*a, **k, **kw), "sink_mask", needle)

def test_sink_mask_factor_none():
    fails(check_sink_mask, lambda t, n, special_ids=(0,), outlier_factor=10.0: _sink(t, n, special_ids, 10.0), "switch the norm rule off")

class _Unembed(nn.Module):
    def __init__(self, W_U, gamma=None):
        super().__init__(); self.W_U = nn.Parameter(W_U)
        if gamma is not None: self.ln_final = nn.Module(); self.ln_final.weight = nn.Parameter(gamma)

def _logits(directions, model, n=10, gamma=True, divide=False, axis=1, down_sign=-1, ascending=False, pos_ids=False):
    "A learner's logit_effects (no chunking), with one switch per mistake."
    W = model.W_U.detach(); ln = getattr(model, "ln_final", None)
    d = directions.to(W)
    if gamma and ln is not None: d = d / ln.weight.detach() if divide else d * ln.weight.detach()
    eff = d @ W
    up, ui = eff.topk(n, dim=axis); down, di = (-eff).topk(n, dim=axis)
    if ascending: up = up.flip(1)
    if pos_ids: ui = torch.arange(n).expand_as(ui)
    return up, ui, down_sign * down, di

@pytest.mark.parametrize("kw,needle", [
    (dict(gamma=False), "left out the final norm's weight γ"), (dict(divide=True), "divided by γ"),
    (dict(axis=0), "wrong axis"), (dict(down_sign=1), "sizes of the negative effects"),
    (dict(ascending=True), "largest first"), (dict(pos_ids=True), "not token ids"),
])
def test_logit_effects(kw, needle):
    assert check_logit_effects(_logits)
    fails(check_logit_effects, lambda *a, **k: _logits(*a, **k, **kw), "logit_effects", needle)

def test_logit_effects_needs_no_final_norm():
    def needs_ln(directions, model, n=10): return _logits(directions * model.ln_final.weight.detach(), model, n, gamma=False)
    fails(check_logit_effects, needs_ln, "raised AttributeError")

@pytest.mark.parametrize("impl,needle", [
    (lambda sae, i, s=1.0: sae.W_enc.detach()[:, i] / s, "encoder"),
    (lambda sae, i, s=1.0: sae.W_dec.detach()[i] * s, "multiplied by scale"),
    (lambda sae, i, s=1.0: sae.W_dec.detach()[i], "ignored scale"),
    (lambda sae, i, s=1.0: F.normalize(sae.W_dec.detach()[i], dim=0) / s, "normalised the row"),
    (lambda sae, i, s=1.0: sae.W_dec.detach()[:, i] / s, "column of W_dec"),
])
def test_feature_direction(impl, needle):
    assert check_feature_direction(lambda sae, i, s=1.0: sae.W_dec.detach()[int(i)] / s)
    fails(check_feature_direction, impl, "feature_direction", needle)

def _steer(direction, coeff, skip_first=True, sign=1, use_coeff=True, unit=False, last=False, row=False, every=False,
           cast=True):
    "A learner's steering_hook, with one switch per mistake."
    def hook(act, hook=None):
        v = direction / direction.norm() if unit else direction
        v = sign * (coeff if use_coeff else 1.0) * v
        v = v.to(act) if cast else v
        out = act + torch.zeros_like(act)
        if last: return out.index_add(1, torch.tensor([act.shape[1] - 1]), v.expand(act.shape[0], 1, -1))
        if row: return torch.cat([out[:1], out[1:] + v])
        if every or not skip_first: return out + v
        return torch.cat([out[:, :1], out[:, 1:] + v], dim=1)
    return hook

@pytest.mark.parametrize("kw,needle", [
    (dict(every=True), "position 0 was steered too"), (dict(sign=-1), "wrong sign"), (dict(use_coeff=False), "coeff is missing"),
    (dict(unit=True), "normalised the direction"), (dict(last=True), "last position only"), (dict(row=True), "batch row 0"),
    (dict(cast=False), "add (coeff * direction).to(act)"),
])
def test_steering_hook(kw, needle):
    assert check_steering_hook(_steer)
    fails(check_steering_hook, lambda d, c, skip_first=True: _steer(d, c, skip_first, **kw), "steering_hook", needle)

def test_steering_hook_must_steer_position0_without_skip():
    def never_pos0(d, c, skip_first=True): return _steer(d, c, True)
    fails(check_steering_hook, never_pos0, "position 0 included")
    fails(check_steering_hook, lambda d, c, skip_first=True: 3, "return a function")

def test_feature_solutions_pass():
    from sae_tutorial.activations import sink_mask
    from sae_tutorial.dashboard import feature_direction, logit_effects, steering_hook
    assert check_sink_mask(sink_mask) and check_logit_effects(logit_effects)
    assert check_feature_direction(feature_direction) and check_steering_hook(steering_hook)

def _merge(vals, idx, new_vals, new_idx, k, *payload, axis=0, largest=True, only_new=False, ascending=False,
           raw_j=False, row_index=False, drop_payload=False, stale_payload=False):
    "A learner's merge_topk, with one switch per mistake."
    allv = new_vals if only_new else torch.cat([vals, new_vals])
    alli = new_idx if only_new else torch.cat([idx, new_idx])
    v, j = allv.topk(k, dim=axis, largest=largest)
    if ascending: v, j = v.flip(0), j.flip(0)
    ids = j if raw_j else (alli[j] if row_index else alli.gather(axis, j))
    pays = []
    for old, new in payload:
        p = torch.cat([old, new])
        pays.append(old if stale_payload else p[:k] if drop_payload else
                    p.gather(0, j[..., None].expand(-1, -1, p.shape[-1])))
    return (v, ids, *pays)

@pytest.mark.parametrize("kw,needle", [
    (dict(axis=1), "wrong axis"), (dict(largest=False), "k smallest"), (dict(only_new=True), "old winners must compete"),
    (dict(ascending=True), "largest first"), (dict(raw_j=True), "positions in the concatenated"),
    (dict(row_index=True), "indexed whole rows"), (dict(drop_payload=True), "payload is not carried"),
    (dict(stale_payload=True), "payload is not carried"),
])
def test_merge_topk(kw, needle):
    assert check_merge_topk(_merge)
    fails(check_merge_topk, lambda *a: _merge(*a, **kw), "merge_topk", needle)

def test_merge_topk_solution_passes():
    from sae_tutorial.dashboard import merge_topk
    assert check_merge_topk(merge_topk)
