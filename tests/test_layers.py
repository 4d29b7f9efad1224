"The layer comparison of 06c (sae_tutorial.layers) on the tiny two-block world of tests/dash_tiny.py."
from functools import lru_cache
import pytest
import torch
from sae_tutorial.activations import Contexts, KEPT
from sae_tutorial.layers import compare_layer, current_and_next_purity, layer_metrics, token_purity
from sae_tutorial.metrics import explained_variance
from dash_tiny import WORDS, tiny_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

def _contexts(n_ctx: int, seed: int) -> Contexts:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, len(WORDS), (n_ctx, 16), generator=g); tokens[:, 0] = 0
    doc_index = torch.arange(n_ctx, dtype=torch.int32)[:, None].expand(n_ctx, 16).clone(); doc_index[:, 0] = -1
    return Contexts(tokens, doc_index, ["pets"] * n_ctx)

@lru_cache(maxsize=None)
def run(layer: int = 1):
    model, _ = tiny_model()
    return compare_layer(model, _contexts(32, 1), _contexts(8, 2), layer, expansion=2.0, k=4, steps=60,
                         batch_size=64, lr=1e-2, ce_contexts=8)

def test_token_purity_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    f = torch.relu(torch.randn(200, 6, generator=g)); f[:, 5] = 0; f[:3, 5] = 1.0    # feature 5 fires on 3 rows only
    tokens = torch.randint(0, 7, (200,), generator=g)
    want = []
    for j in range(6):
        if int((f[:, j] > 0).sum()) < 10: continue
        mass = {t: float(f[tokens == t, j].double().sum()) for t in range(7)}
        want.append(max(mass.values()) / sum(mass.values()))
    got = token_purity(f, tokens, min_fires=10)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12)

def test_one_token_feature_is_pure():
    tokens = torch.tensor([3, 3, 5, 3, 7, 3])
    f = torch.stack([(tokens == 3).float() * 2.0, torch.ones(6)], 1)     # feature 0: only token 3; feature 1: everything
    assert torch.allclose(token_purity(f, tokens, min_fires=1), torch.tensor([1.0, 4 / 6], dtype=torch.float64))

def test_untrained_is_the_start_and_training_helps():
    r = run()
    assert r.hook == "blocks.1.hook_resid_post" and set(r.seconds) == {"harvest", "train", "evaluate"}
    t, u = r.metrics["trained"], r.metrics["untrained"]
    assert 3.8 <= t["l0"] <= 4 and 3.8 <= u["l0"] <= 4                           # TopK: at most k per token
    assert abs(t["ce_clean"] - u["ce_clean"]) < 1e-9                               # the same clean predictions scored
    assert t["explained_variance"] > u["explained_variance"]
    assert not torch.equal(r.sae.W_dec, r.untrained.W_dec)                         # the copy was taken before training

def test_metrics_agree_with_a_direct_computation():
    r = run(); model, _ = tiny_model()
    x = r.held.get(range(r.held.n_rows), normalize=False) * r.scale                 # [n_rows, d_in], training units
    with torch.no_grad(): x_hat = r.sae(x).x_hat
    ev = explained_variance(x, x_hat)
    m = layer_metrics(r.sae, r.held, r.scale, model, r.hook, ce_contexts=8)
    assert abs(m["explained_variance"] - ev) < 1e-4
    assert abs(m["explained_variance"] - r.metrics["trained"]["explained_variance"]) < 1e-9

def test_next_token_purity_uses_the_token_after_each_row():
    r = run()
    c, p = r.held.rows[:, 0].long(), r.held.rows[:, 1].long()
    assert bool((r.held.mask[c, p] == KEPT).all())
    cur, nxt = current_and_next_purity(r, "trained", min_fires=1)
    # by hand: the same medians from explicit lookups
    with torch.no_grad():
        f = r.sae.encode(r.held.get(range(r.held.n_rows), normalize=False) * r.scale)
    has = p + 1 < r.held.tokens.shape[1]
    want_cur = float(token_purity(f, r.held.tokens[c, p], 1).median())
    want_nxt = float(token_purity(f[has], torch.tensor([int(r.held.tokens[ci, pi + 1]) for ci, pi in zip(c[has], p[has])]), 1).median())
    assert abs(cur - want_cur) < 1e-6 and abs(nxt - want_nxt) < 1e-6
