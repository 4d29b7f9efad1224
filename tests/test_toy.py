"The toy models of nbs/01_toy_models.ipynb, beyond the notebook's own checks: hand-worked geometry, float64 references, bad inputs."
import math
import numpy as np, torch, pytest
from sae_tutorial.toy import (ToyConfig, ToyModel, generate_batch, train_toy, train_sweep, feature_superposition,
                              feature_dimensionality, dimensions_per_feature, feature_angles, angular_gaps, classify_features,
                              regular_polygon, neuron_monosemanticity, reproduce_toy, NOT_REPRESENTED, DEDICATED, SUPERPOSITION)

# ---------- geometry against hand-worked numbers ----------
@pytest.mark.parametrize("k,expected", [(2, 1 / 2), (3, 2 / 3), (4, 1 / 2), (5, 2 / 5), (6, 1 / 3)])
def test_regular_polygon_dimensionality(k, expected):
    # k unit vectors evenly spaced in a plane: sum_j cos^2(2πj/k) = k/2 for k >= 3, so D = 2/k; a digon (k=2) is an antipodal pair
    W = regular_polygon(k)
    np.testing.assert_allclose(feature_dimensionality(W).numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(dimensions_per_feature(W).item(), 2 / k, atol=1e-12)

def test_dimensionality_simple_cases():
    np.testing.assert_allclose(feature_dimensionality(torch.tensor([[1.0, -1.0]])).numpy(), [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(feature_dimensionality(torch.eye(4)).numpy(), np.ones(4), atol=1e-6)
    # a tetrahedron in 3-D: D = 3/4 for each corner
    tet = torch.tensor([[1., 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64).T / math.sqrt(3)
    np.testing.assert_allclose(feature_dimensionality(tet).numpy(), 0.75, atol=1e-12)
    # orthogonal features own a dimension whatever their length
    np.testing.assert_allclose(feature_dimensionality(torch.diag(torch.tensor([2.0, 0.3]))).numpy(), [1, 1], atol=1e-6)
    # a dropped feature has dimensionality 0
    assert feature_dimensionality(torch.tensor([[1.0, 0.0]]))[1].item() == 0

def test_dimensionality_matches_float64_numpy():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(3, 7, 11))
    Wn = W / np.linalg.norm(W, axis=-2, keepdims=True)
    ref = (np.linalg.norm(W, axis=-2) ** 2) / (np.einsum("kmi,kmj->kij", Wn, W) ** 2).sum(-1)
    np.testing.assert_allclose(feature_dimensionality(torch.tensor(W)).numpy(), ref, rtol=1e-10)
    sup = (np.einsum("kmi,kmj->kij", Wn, W) ** 2).sum(-1) - np.linalg.norm(W, axis=-2) ** 2
    np.testing.assert_allclose(feature_superposition(torch.tensor(W)).numpy(), sup, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dimensions_per_feature(torch.tensor(W)).numpy(), 7 / (W ** 2).sum((-2, -1)), rtol=1e-12)

def test_angles_and_gaps():
    rot = torch.tensor([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]], dtype=torch.float64)
    gaps = angular_gaps(rot @ regular_polygon(5))                     # rotating does not change the gaps
    np.testing.assert_allclose(gaps.numpy(), 72.0, atol=1e-9)
    assert abs(gaps.sum().item() - 360) < 1e-9
    A = feature_angles(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]))
    np.testing.assert_allclose(A.numpy(), [[0, 90, 180], [90, 0, 90], [180, 90, 0]], atol=1e-3)
    # dropped features are left out of the gaps
    W = torch.tensor([[1.0, 0.0, 0.01], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(angular_gaps(W).numpy(), [90, 270], atol=1e-4)
    with pytest.raises(ValueError, match=r"shape \[2, n\]"): angular_gaps(torch.eye(3))

def test_classify_features_hand_examples():
    assert classify_features(torch.tensor([[1.0, -1.0]])).tolist() == [SUPERPOSITION, SUPERPOSITION]    # antipodal pair
    assert classify_features(torch.tensor([[0.02, 1.0]])).tolist() == [NOT_REPRESENTED, DEDICATED]      # feature 2 owns the dim
    assert classify_features(torch.tensor([[1.0, 0.03]])).tolist() == [DEDICATED, NOT_REPRESENTED]
    assert classify_features(torch.eye(3)).tolist() == [DEDICATED] * 3
    assert classify_features(regular_polygon(5)).tolist() == [SUPERPOSITION] * 5
    # batched: leading instance dims are kept
    W = torch.stack([torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 1.0]])])
    assert classify_features(W).tolist() == [[2, 2], [0, 1]]

def test_neuron_monosemanticity():
    W = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])     # monosemantic, 50/50, dead
    mono = neuron_monosemanticity(W)
    np.testing.assert_allclose(mono[:2].numpy(), [1.0, 0.5])
    assert math.isnan(mono[2].item())

# ---------- model against float64 numpy ----------
def _np_forward(W, b, x, W_out=None):
    if W_out is None: return np.maximum(np.einsum("imn,imk,ibk->ibn", W, W, x) + b[:, None], 0)
    h = np.maximum(np.einsum("imn,ibn->ibm", W, x), 0)
    return np.maximum(np.einsum("inm,ibm->ibn", W_out, h) + b[:, None], 0)

@pytest.mark.parametrize("hidden_relu", [False, True])
def test_forward_and_loss_match_float64_numpy(hidden_relu):
    cfg = ToyConfig(6, 3, 4, feature_probability=[0.1, 0.3, 0.6, 1.0], importance=0.8 ** torch.arange(6),
                    hidden_relu=hidden_relu, signed_inputs=hidden_relu)
    model = ToyModel(cfg, device="cpu", seed=3)
    with torch.no_grad(): model.b.normal_()
    x = model.generate_batch(128, torch.Generator().manual_seed(0))
    W, b, I = (t.detach().double().numpy() for t in (model.W, model.b, model.importance))
    W_out = model.W_out.detach().double().numpy() if hidden_relu else None
    xn = x.double().numpy()
    x_hat = _np_forward(W, b, xn, W_out)
    target = np.abs(xn) if hidden_relu else xn
    np.testing.assert_allclose(model(x).x_hat.detach().numpy(), x_hat, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.loss_per_instance(x).detach().numpy(), (I[:, None] * (target - x_hat) ** 2).sum(-1).mean(-1), rtol=1e-5)
    h = model.hidden(x).detach().numpy()
    h_ref = np.einsum("imn,ibn->ibm", W, xn)
    np.testing.assert_allclose(h, np.maximum(h_ref, 0) if hidden_relu else h_ref, rtol=1e-5, atol=1e-6)

def test_single_instance_accepts_2d_batch():
    model = ToyModel(ToyConfig(5, 2, 1), device="cpu", seed=0)
    x = torch.rand(7, 5)
    assert model.hidden(x).shape == (1, 7, 2)
    np.testing.assert_allclose(model.hidden(x)[0].detach().numpy(), (x @ model.W[0].detach().T).numpy(), rtol=1e-6)
    assert model.feature_directions(0).shape == (5, 2)

# ---------- data ----------
def test_generate_batch_statistics():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.05] * 4, [0.5] * 4])
    x = generate_batch(p, 40_000, g)
    np.testing.assert_allclose((x > 0).float().mean((1, 2)).numpy(), [0.05, 0.5], atol=0.01)
    active = x[x > 0]
    assert active.max() <= 1 and abs(active.mean().item() - 0.5) < 0.01 and abs(active.var().item() - 1 / 12) < 0.005

def test_correlated_and_anticorrelated_pairs():
    g = torch.Generator().manual_seed(0)
    p = torch.full((1, 4), 0.2)
    xc = generate_batch(p, 20_000, g, correlation="correlated")[0] > 0
    xa = generate_batch(p, 20_000, g, correlation="anticorrelated")[0] > 0
    for x in (xc, xa): np.testing.assert_allclose(x.float().mean(0).numpy(), 0.2, atol=0.015)   # marginals stay p
    assert torch.equal(xc[:, 0], xc[:, 1]) and torch.equal(xc[:, 2], xc[:, 3])                 # always together
    assert not (xa[:, 0] & xa[:, 1]).any() and not (xa[:, 2] & xa[:, 3]).any()                 # never together
    assert (xa[:, 0] & xa[:, 2]).float().mean().item() == pytest.approx(0.04, abs=0.01)          # independent across pairs
    xs = generate_batch(p, 20_000, g, signed=True)
    assert (xs < 0).any() and xs.abs().max() <= 1

# ---------- reproducibility ----------
def test_fixed_seed_gives_identical_weights():
    def run(seed):
        m = ToyModel(ToyConfig(5, 2, 3, feature_probability=0.1), device="cpu", seed=seed)
        train_toy(m, steps=30, batch_size=64, seed=seed)
        return m.W.detach().clone(), m.b.detach().clone()
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])

def test_train_sweep_keeps_the_best_copy():
    r = train_sweep(5, 2, [1.0, 0.05], 0.9 ** torch.arange(5), copies=3, steps=20, batch_size=64, device="cpu")
    assert r.W.shape == (2, 2, 5) and r.b.shape == (2, 5) and r.loss.shape == (2,)
    np.testing.assert_allclose(r.feature_probability[:, 0].numpy(), [1.0, 0.05])

# ---------- bad inputs name the fix ----------
@pytest.mark.parametrize("kwargs,match", [
    (dict(n_features=2, n_hidden=5), "n_hidden=5 > n_features=2"),
    (dict(feature_probability=1.5), "feature_probability must be <= 1"),
    (dict(feature_probability=-0.1), "feature_probability must be >= 0"),
    (dict(importance=-1.0), "importance must be >= 0"),
    (dict(feature_probability=[0.1, 0.2, 0.3]), "expected a float"),
    (dict(correlation="sideways"), "use one of none, correlated, anticorrelated"),
    (dict(n_features=5, correlation="correlated"), "must be even"),
    (dict(n_hidden=0), "positive int"),
    (dict(signed_inputs=True), "needs hidden_relu=True"),
    (dict(feature_probability=float("nan")), "NaN"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match): ToyConfig(**kwargs)

def test_bad_batch_shape_and_values():
    model = ToyModel(ToyConfig(5, 2, 2), device="cpu", seed=0)
    with pytest.raises(ValueError, match=r"expected \[n_inst=2, batch, n=5\]"): model(torch.rand(2, 8, 4))
    with pytest.raises(ValueError, match="NaN"): model(torch.full((2, 3, 5), float("nan")))
    with pytest.raises(ValueError, match="steps must be >= 1"): train_toy(model, steps=0)
    with pytest.raises(ValueError, match="unknown toy experiment"): reproduce_toy(["pentagons"])

def test_reproduce_toy_runs_and_checks_one_experiment(monkeypatch, tmp_path):
    monkeypatch.setenv("SAE_TUTORIAL_BUDGET", "ci")          # figures go to a temporary folder at the ci budget
    facts = reproduce_toy(["correlated"], device="cpu", verbose=False)
    assert set(facts) == {"correlated"}
    assert all(abs(a - 90) < 10 for a in facts["correlated"]["correlated_pair_angles"])
    assert all(a > 170 for a in facts["correlated"]["anticorrelated_pair_angles"])

# ---------- planted features are independent of the SAE's initial weights ----------
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("d_in,n_features,d_sae", [(256, 512, 512), (256, 512, 1024), (32, 64, 128)])
def test_untrained_sae_mmcs_is_the_random_baseline(seed, d_in, n_features, d_sae):
    # seed_everything(seed) starts the global stream that make_sae's W_dec is drawn from; SparseFeatureData(seed=seed)
    # must not draw its planted features from that same stream, or an untrained SAE would already hold them
    from sae_tutorial.core import seed_everything
    from sae_tutorial.metrics import mmcs
    from sae_tutorial.sae import SAEConfig, make_sae
    from sae_tutorial.toy import SparseFeatureData, feature_stream_seed
    data = SparseFeatureData(d_in=d_in, n_features=n_features, seed=seed)
    seed_everything(seed)
    untrained = mmcs(data.features, make_sae(SAEConfig(d_in=d_in, expansion_factor=d_sae / d_in)).W_dec.detach())
    nulls = [mmcs(data.features, torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(100 + i))) for i in range(3)]
    assert abs(untrained - np.mean(nulls)) < 0.03, (untrained, nulls)       # a random dictionary's score, not 1.0
    assert feature_stream_seed(seed) != seed and 0 <= feature_stream_seed(seed) < 2**32
    assert not torch.equal(data.features, SparseFeatureData(d_in=d_in, n_features=n_features, seed=seed + 1).features)
