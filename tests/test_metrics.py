"Metrics of nbs/05_metrics.ipynb against float64 numpy references, invariants and bad inputs."
import numpy as np, torch, pytest
from sae_tutorial.metrics import match_dictionaries, mmcs, fraction_matched, max_cosines

rng = np.random.default_rng(0)

def np_max_cos(A, B):
    A = A / np.linalg.norm(A, axis=1, keepdims=True); B = B / np.linalg.norm(B, axis=1, keepdims=True)
    return (A @ B.T).max(axis=1)

# ---------------------------------------------------------------- dictionary matching
def test_mmcs_matches_numpy():
    A, B = rng.normal(size=(40, 16)), rng.normal(size=(70, 16))
    ref = np_max_cos(A, B)
    m = match_dictionaries(torch.tensor(A, dtype=torch.float32), torch.tensor(B), threshold=0.3)
    np.testing.assert_allclose(m.max_cos.numpy(), ref, rtol=1e-6)
    assert mmcs(torch.tensor(A), torch.tensor(B)) == pytest.approx(ref.mean(), rel=1e-12)
    assert m.frac_matched == pytest.approx((ref > 0.3).mean())

def test_best_index_matches_numpy_argmax():
    A, B = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
    An, Bn = A / np.linalg.norm(A, axis=1, keepdims=True), B / np.linalg.norm(B, axis=1, keepdims=True)
    np.testing.assert_array_equal(match_dictionaries(torch.tensor(A), torch.tensor(B)).best.numpy(), (An @ Bn.T).argmax(1))

def test_chunking_does_not_change_the_answer():
    A, B = torch.randn(101, 12, dtype=torch.float64), torch.randn(33, 12, dtype=torch.float64)
    a, b = match_dictionaries(A, B, chunk=7), match_dictionaries(A, B)
    torch.testing.assert_close(a.max_cos, b.max_cos); torch.testing.assert_close(a.best, b.best)

def test_identical_and_permuted_and_rescaled_decoders_give_one():
    D = torch.randn(64, 20)
    assert mmcs(D, D) == pytest.approx(1.0, abs=1e-12)
    perm = torch.randperm(64)
    scaled = D[perm] * torch.rand(64, 1).add(0.1)   # positive rescaling does not change direction
    m = match_dictionaries(D, scaled)
    assert m.mmcs == pytest.approx(1.0, abs=1e-12) and m.frac_matched == 1.0
    torch.testing.assert_close(perm[m.best], torch.arange(64))

def test_extra_learned_rows_only_help_and_mmcs_is_asymmetric():
    D_true, extra = torch.eye(4), torch.randn(10, 4)
    assert mmcs(D_true, torch.cat([extra, D_true])) == pytest.approx(1.0)
    assert mmcs(torch.cat([extra, D_true]), D_true) < 1.0

def test_orthogonal_dictionaries_give_zero_and_flipped_sign_is_not_a_match():
    assert mmcs(torch.eye(6)[:3], torch.eye(6)[3:]) == pytest.approx(0.0)
    assert mmcs(torch.eye(3), -torch.eye(3)) == pytest.approx(0.0)

def test_wrong_shapes_name_the_fix():
    with pytest.raises(ValueError, match="pass W.T"): mmcs(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="2-D"): mmcs(torch.randn(5), torch.randn(5, 4))
    with pytest.raises(ValueError, match="all-zero rows"): mmcs(torch.zeros(2, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="NaN"): mmcs(torch.full((2, 3), float("nan")), torch.randn(4, 3))
