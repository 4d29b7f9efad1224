"The token-set explanation proxy (nbs/08b_explanations.ipynb): hand-worked scores, the nulls, the writer, bad inputs."
import pytest
import torch
from sae_tutorial.activations import ActivationStore
from sae_tutorial.autointerp import (Explanation, derangement, detection_score, explain_and_score, explanation_predicts,
                                     feature_acts, planted_token_stream, random_explanation, write_explanation)
from sae_tutorial.sae import SAEConfig, make_sae

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_hand_worked_stream():
    # tokens:  a b a c a b d a ; the feature fires on the 1st, 3rd and 8th 'a' and on the 'd'
    tokens = torch.tensor([0, 1, 0, 2, 0, 1, 3, 0])
    fires = torch.tensor([1, 0, 1, 0, 0, 0, 1, 1], dtype=torch.bool)
    s = detection_score(explanation_predicts(Explanation((0,)), tokens), fires)   # 4 predicted, 3 right, 4 firing
    assert float(s.precision) == pytest.approx(3 / 4) and float(s.recall) == pytest.approx(3 / 4)
    assert float(s.f1) == pytest.approx(3 / 4) and float(s.base_rate) == pytest.approx(4 / 8)
    s = detection_score(explanation_predicts(Explanation((0, 3)), tokens), fires)  # 5 predicted, 4 right
    assert float(s.precision) == pytest.approx(4 / 5) and float(s.recall) == 1.0
    assert float(s.f1) == pytest.approx(2 * 0.8 / 1.8)
    s = detection_score(explanation_predicts(Explanation((1,)), tokens), fires)    # all wrong
    assert float(s.precision) == 0 and float(s.recall) == 0 and float(s.f1) == 0
    s = detection_score(explanation_predicts(Explanation(()), tokens), fires)      # predicts nothing
    assert int(s.n_predicted) == 0 and float(s.precision) == 0 and float(s.f1) == 0


def test_columns_score_independently():
    g = torch.Generator().manual_seed(0)
    pred, fires = torch.rand(200, 5, generator=g) < 0.3, torch.rand(200, 5, generator=g) < 0.2
    s = detection_score(pred, fires)
    for i in range(5):
        one = detection_score(pred[:, i], fires[:, i])
        assert float(s.f1[i]) == pytest.approx(float(one.f1)) and int(s.n_fires[i]) == int(one.n_fires)


def test_perfect_explanation_scores_one():
    ps = planted_token_stream(n=4000, vocab=50, n_token=3, n_context=0, p_fire=1.0, p_spurious=0.0, seed=3)
    for i, t in enumerate(ps.token_sets):
        s = detection_score(explanation_predicts(Explanation(t), ps.tokens), ps.acts[:, i] > 0)
        assert float(s.precision) == 1 and float(s.recall) == 1 and float(s.f1) == 1


def test_random_explanation_precision_is_the_base_rate():
    # uniform tokens over 100 ids, the feature fires exactly on ids 0..9: base rate 0.1
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 100, (20_000,), generator=g)
    fires = tokens < 10
    prec = [float(detection_score(explanation_predicts(random_explanation(5, tokens, g), tokens), fires).precision)
            for _ in range(400)]
    assert sum(prec) / len(prec) == pytest.approx(0.1, abs=0.02)


def test_pattern_over_token_text():
    text = {0: " 12", 1: " cat", 2: "7", 3: "Cat"}.get
    tokens = torch.tensor([0, 1, 2, 3, 1])
    assert explanation_predicts(Explanation((), r"^\s*\d+$"), tokens, text).tolist() == [True, False, True, False, False]
    assert explanation_predicts(Explanation((3,), r"cat"), tokens, text).tolist() == [False, True, False, True, True]
    with pytest.raises(ValueError, match="token_text"): explanation_predicts(Explanation((), "x"), tokens)


def test_writer_takes_the_fewest_covering_tokens():
    tokens = torch.tensor([9, 9, 9, 9, 4, 4, 7, 1, 1, 1])
    acts = torch.tensor([9., 8, 7, 6, 5, 4, 3, 0, 0, 0])        # top 7: four 9s, two 4s, one 7
    assert write_explanation(tokens, acts, n_top=7, coverage=0.5) == Explanation((9,))          # 4/7 >= 0.5
    assert write_explanation(tokens, acts, n_top=7, coverage=0.8) == Explanation((4, 9))        # 6/7 >= 0.8
    assert write_explanation(tokens, acts, n_top=7, coverage=1.0) == Explanation((4, 7, 9))
    assert write_explanation(tokens, acts, n_top=100, coverage=1.0) == Explanation((4, 7, 9))   # only 7 fire
    assert write_explanation(tokens, acts, n_top=7, coverage=1.0, max_tokens=2) == Explanation((4, 9))
    with pytest.raises(ValueError, match="coverage"): write_explanation(tokens, acts, coverage=0)
    with pytest.raises(ValueError, match="must both be"): write_explanation(tokens, acts[:3])


def test_derangement_has_no_fixed_point():
    for seed in range(20):
        d = derangement(5, torch.Generator().manual_seed(seed))
        assert sorted(d.tolist()) == list(range(5)) and bool((d != torch.arange(5)).all())
    with pytest.raises(ValueError, match="n >= 2"): derangement(1)


def test_explain_and_score_beats_its_nulls_on_planted_features():
    ps = planted_token_stream(n=40_000, n_token=8, n_context=0, seed=5)
    h = len(ps.tokens) // 2
    r = explain_and_score(ps.tokens[:h], ps.acts[:h], ps.tokens[h:], ps.acts[h:], seed=1)
    assert all(set(e.token_ids) <= set(t) for e, t in zip(r.explanations, ps.token_sets))
    assert bool((r.score.f1 > r.random_tokens.f1 + 0.5).all()) and bool((r.score.f1 > r.other_feature.f1 + 0.5).all())
    assert bool((r.other != torch.arange(8)).all())
    with pytest.raises(ValueError, match="acts_a"): explain_and_score(ps.tokens[:h], ps.acts[:h, 0], ps.tokens[h:], ps.acts[h:])


def test_feature_acts_scales_like_training():
    torch.manual_seed(0)
    x = torch.randn(300, 16)
    store = ActivationStore.from_tensor(x, normalize=True)
    sae = make_sae(SAEConfig(d_in=16, expansion_factor=2, architecture="topk", k=4))
    with torch.no_grad(): want = sae.encode(x * 0.5)[:, [3, 7, 0]]      # scale 1: what an SAE sees after scaling by hand
    sae.cfg.input_scale = 0.5                  # a saved SAE's own scale: it gets raw rows and scales them once, itself
    torch.testing.assert_close(feature_acts(sae, store, range(300), features=[3, 7, 0], batch_size=64), want)
    sae.cfg.input_scale = 1.0                  # scale 1 (trained on this store's batches): rows as the store normalises them
    with torch.no_grad(): want = sae.encode(x * store.scale)
    torch.testing.assert_close(feature_acts(sae, store, range(300)), want)
