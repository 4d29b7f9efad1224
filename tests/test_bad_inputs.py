"""Issue #13's bad-input suite, the part that lives in sae.py, losses.py and metrics.py: one readable list.

Each case feeds one bad input and asserts the error says what is wrong AND how to fix it. Losses do not check
for NaN/Inf themselves (they run every training step); non-finite activations are caught by the SAE's forward
(cfg.check_input) before any loss sees them, and by the metrics.
Run: SAE_TUTORIAL_BUDGET=ci python -m pytest -q tests/test_bad_inputs.py
"""
import json
import math
import re
import numpy as np
import pytest
import torch

from sae_tutorial.sae import SAE, SAEConfig, ARCHITECTURES, make_sae, TopKSAE, load_config
from sae_tutorial.losses import (LossConfig, sae_loss, reconstruction_loss, normalized_mse, l1_wdec_penalty,
                                 diversity_penalty)
from sae_tutorial.metrics import (mse, explained_variance, fvu, cosine_sim, relative_reconstruction_bias,
                                  ReconstructionStats, l0, l1, feature_density, dead_fraction, utilization,
                                  SparsityStats, match_dictionaries, mmcs, evaluate, splice_metrics)

NAN, INF = float("nan"), float("inf")

def cfg(**kw): return SAEConfig(**{"d_in": 8, "expansion_factor": 4, **kw})

def raises(exc, *needles):
    "pytest.raises whose message must contain every needle (plain substrings, not regexes)."
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(n)})" for n in needles))

def with_bad(x, value, where=(1, 2)):
    x = x.clone(); x[where] = value
    return x

# ================================================================ SAE configuration
@pytest.mark.parametrize("ef", [0.5, 0.99, 0.0, -2.0, NAN])
def test_expansion_factor_below_one(ef):
    "expansion_factor < 1 (or NaN) would give d_sae < d_in: refused, asking for >= 1."
    with raises(ValueError, f"expansion_factor={ef}", "use expansion_factor >= 1"): cfg(expansion_factor=ef)

@pytest.mark.parametrize("arch,k", [("topk", 33), ("batchtopk", 33), ("topk", 1000), ("topk", 0), ("batchtopk", -1)])
def test_k_outside_one_to_d_sae(arch, k):
    "k > d_sae (or k < 1) for TopK/BatchTopK: refused with the valid range and both fixes."
    with raises(ValueError, f"k={k} must lie in 1..d_sae=32", "lower k or raise expansion_factor"): cfg(architecture=arch, k=k)

@pytest.mark.parametrize("d_in", [0, -3, 2.5, "8"])
def test_d_in_not_a_positive_integer(d_in):
    "d_in must be a positive int (a float or string from a hand-written config is refused, not rounded)."
    with raises(ValueError, "d_in must be a positive integer", repr(d_in)): SAEConfig(d_in=d_in)

def test_unknown_architecture_lists_the_valid_ones():
    "A misspelt architecture names every valid one."
    with raises(ValueError, "architecture='top_k' is unknown", *ARCHITECTURES): cfg(architecture="top_k")

def test_tied_only_for_relu():
    "tied=True with a non-ReLU architecture is refused."
    with raises(ValueError, "tied=True is only supported for architecture='relu'"): cfg(architecture="topk", k=4, tied=True)

# ================================================================ SAE forward
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("shape", [(3, 7), (3, 9), (2, 5, 16)])
def test_wrong_d_in_into_forward_and_encode(arch, shape):
    "Activations of the wrong width (e.g. another layer or model): expected and actual d_in both named."
    sae = make_sae(cfg(architecture=arch, k=4))
    for call in (sae, sae.encode):
        with raises(ValueError, f"has shape {shape}", "expected last dimension 8 (d_in)", f"got {shape[-1]}"): call(torch.randn(shape))

def test_scalar_and_non_tensor_input():
    "A 0-d tensor or a numpy array instead of a tensor."
    sae = make_sae(cfg())
    with raises(ValueError, "expected last dimension 8", "a scalar"): sae(torch.tensor(1.0))
    with raises(TypeError, "x must be a torch.Tensor", "ndarray"): sae(np.zeros((2, 8), np.float32))

def test_wrong_d_sae_into_decode():
    "f of the wrong width into decode: expected and actual d_sae named."
    sae = make_sae(cfg())
    with raises(ValueError, "expected last dimension 32 (d_sae)", "got 31"): sae.decode(torch.rand(3, 31))

@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_nan_inf_activations_into_forward(arch, bad):
    "NaN/Inf in x: refused before any weight sees it, with the counts and the fix (clean or mask)."
    sae = make_sae(cfg(architecture=arch, k=4)).train()
    x = with_bad(torch.randn(4, 8), bad)
    n_nan, n_inf = (1, 0) if math.isnan(bad) else (0, 1)
    for call in (sae, sae.encode):
        with raises(ValueError, f"SAE x has {n_nan} NaN and {n_inf} Inf entries (of 32)", "clean or mask them"): call(x)
    with raises(ValueError, "SAE x has 1 NaN"): sae(with_bad(torch.randn(2, 3, 8), NAN, (1, 2, 3)))   # [batch, seq, d_in]

def test_wrong_dtype_names_the_cast():
    "float64 activations into a float32 SAE: the message gives the .to(...) to write."
    with raises(ValueError, "dtype torch.float64", "x.to(torch.float32)"): make_sae(cfg())(torch.randn(2, 8, dtype=torch.float64))

# ================================================================ SAE checkpoints
@pytest.fixture
def ckpt(tmp_path):
    sae = make_sae(cfg()); sae.save(tmp_path/"ck")
    return tmp_path/"ck"

def test_missing_checkpoint_folder(tmp_path):
    "A path without cfg.json: names the file and what a checkpoint folder holds."
    with raises(FileNotFoundError, "cfg.json not found", "cfg.json and sae.safetensors", "SAE.save"): SAE.load(tmp_path/"nope")

@pytest.mark.parametrize("keep", [0.5, 0.9, 0.0])
def test_truncated_safetensors(ckpt, keep):
    "sae.safetensors cut short (a killed copy or download) is detected, never half-loaded."
    p = ckpt/"sae.safetensors"; b = p.read_bytes(); p.write_bytes(b[:int(len(b) * keep)])
    with raises(ValueError, "sae.safetensors could not be read as safetensors", "corrupt or truncated"): SAE.load(ckpt)

def test_garbage_safetensors(ckpt):
    "A file that is not safetensors at all (e.g. a pickle renamed) is refused, never unpickled."
    (ckpt/"sae.safetensors").write_bytes(b"\x80\x04\x95garbage-pickle")
    with raises(ValueError, "could not be read as safetensors"): SAE.load(ckpt)

def test_missing_safetensors(ckpt):
    "cfg.json without its weights."
    (ckpt/"sae.safetensors").unlink()
    with raises(FileNotFoundError, "sae.safetensors not found", "cfg.json and sae.safetensors"): SAE.load(ckpt)

def test_corrupted_tensor_bytes(ckpt):
    "Bytes flipped inside the tensor data (not the header): detected, never loaded as weights."
    p = ckpt/"sae.safetensors"; b = bytearray(p.read_bytes())
    b[-64:] = b"\xff" * 64                                                     # the end of the last tensor: NaNs
    p.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="corrupt"): SAE.load(ckpt)

def test_truncated_or_invalid_cfg_json(ckpt):
    "cfg.json cut short or not JSON: names the file and the parse error."
    text = (ckpt/"cfg.json").read_text()
    (ckpt/"cfg.json").write_text(text[:len(text) // 2])
    with raises(ValueError, "cfg.json is not valid JSON"): SAE.load(ckpt)
    (ckpt/"cfg.json").write_text("[1, 2]")
    with raises(ValueError, "must hold a JSON object"): SAE.load(ckpt)

def test_cfg_json_with_unknown_fields_or_format(ckpt):
    "A cfg.json written by another tool/version: unknown fields listed with the known ones; foreign format named."
    d = json.loads((ckpt/"cfg.json").read_text())
    (ckpt/"cfg.json").write_text(json.dumps({**d, "hook_point": "blocks.3"}))
    with raises(ValueError, "unknown SAEConfig fields ['hook_point']", "known fields are"): load_config(ckpt)
    (ckpt/"cfg.json").write_text(json.dumps({**d, "format": "saelens/v2"}))
    with raises(ValueError, "format 'saelens/v2'", "this version reads 'sae_tutorial.sae/v1'"): SAE.load(ckpt)

def test_cfg_json_from_a_different_architecture(tmp_path):
    "JumpReLU weights next to a ReLU cfg.json: the extra tensor is named, and nothing is loaded."
    make_sae(cfg(architecture="jumprelu")).save(tmp_path/"j")
    d = json.loads((tmp_path/"j"/"cfg.json").read_text())
    (tmp_path/"j"/"cfg.json").write_text(json.dumps({**d, "architecture": "relu"}))
    with raises(ValueError, "does not match its cfg.json", "architecture='relu'", "unexpected tensor 'log_threshold'"):
        SAE.load(tmp_path/"j")
    (tmp_path/"j"/"cfg.json").write_text(json.dumps({**d, "architecture": "gated"}))
    with raises(ValueError, "missing tensor 'r_mag'", "missing tensor 'b_mag'"): SAE.load(tmp_path/"j")

def test_cfg_json_from_a_different_size(tmp_path):
    "Weights of a d_in=16 SAE next to a d_in=8 cfg.json: every mismatched shape named."
    make_sae(SAEConfig(d_in=16, expansion_factor=2)).save(tmp_path/"a")
    make_sae(cfg()).save(tmp_path/"b")
    (tmp_path/"a"/"cfg.json").write_text((tmp_path/"b"/"cfg.json").read_text())
    with raises(ValueError, "does not match its cfg.json", "'W_dec' has shape (32, 16), cfg.json implies (32, 8)",
                "'W_enc' has shape (16, 32)"): SAE.load(tmp_path/"a")

def test_cfg_json_from_a_different_architecture_with_the_same_tensors(tmp_path):
    "ReLU weights next to a TopK cfg.json (same tensor names and shapes): refused."
    make_sae(cfg()).save(tmp_path/"r")
    d = json.loads((tmp_path/"r"/"cfg.json").read_text())
    (tmp_path/"r"/"cfg.json").write_text(json.dumps({**d, "architecture": "topk", "k": 4}))
    with pytest.raises(ValueError, match="relu.*topk|topk.*relu"): SAE.load(tmp_path/"r")

def test_subclass_load_of_another_architecture(tmp_path):
    "TopKSAE.load on a JumpReLU checkpoint says which loader to use."
    make_sae(cfg(architecture="jumprelu")).save(tmp_path/"j")
    with raises(ValueError, "architecture='jumprelu'", "TopKSAE.load cannot return", "use SAE.load or JumpReLUSAE.load"):
        TopKSAE.load(tmp_path/"j")

# ================================================================ losses
def test_reconstruction_of_another_batch():
    "x_hat from another batch (or not flattened like x): both shapes named, for both reconstruction losses."
    for fn in (reconstruction_loss, normalized_mse):
        with raises(ValueError, "x has shape (4, 8) but x_hat has shape (3, 8)", "out = sae(x)"): fn(torch.randn(4, 8), torch.randn(3, 8))
        with raises(ValueError, "but x_hat has shape (1, 8)"): fn(torch.randn(4, 8), torch.randn(1, 8))   # would broadcast

def test_transposed_decoder_into_l1_wdec():
    "W_dec passed as [d_in, d_sae] (the math's orientation) to l1_wdec_penalty."
    W_dec = torch.randn(32, 8)
    with raises(ValueError, "f has 32 latents but W_dec has 8 rows", "not its transpose"): l1_wdec_penalty(torch.rand(4, 32), W_dec.T)

@pytest.mark.parametrize("kw,needles", [
    (dict(sparsity="L1"), ["sparsity='L1' is unknown", "l1, l1_wdec"]),
    (dict(aux="auxK"), ["aux='auxK' is unknown", "auxk"]),
    (dict(sparsity_coeff=-1e-3), ["must be >= 0"]),
    (dict(aux_coeff=-1.0), ["must be >= 0"]),
    (dict(k_aux=0), ["k_aux must be >= 1 or None"]),
    (dict(diversity_chunk=0), ["diversity_chunk must be >= 1"]),
])
def test_bad_loss_config(kw, needles):
    "Misspelt loss names list the valid ones; negative coefficients and sizes < 1 are refused."
    with raises(ValueError, *needles): LossConfig(**kw)

@pytest.mark.parametrize("arch,lcfg,needles", [
    ("relu", LossConfig(sparsity="jumprelu_l0"), ["needs a JumpReLU SAE", "got ReLUSAE"]),
    ("topk", LossConfig(sparsity="none", aux="gated"), ["needs a Gated SAE", "got TopKSAE"]),
    ("topk", LossConfig(sparsity="none", aux="auxk"), ["needs dead_mask", "[d_sae=32] bool tensor", "dead_mask=..."]),
    ("relu", LossConfig(aux="dead"), ["needs dead_mask"]),
])
def test_loss_that_does_not_fit_the_sae(arch, lcfg, needles):
    "A loss term the SAE cannot provide, or auxk/dead without the trainer's dead_mask."
    sae = make_sae(cfg(architecture=arch, k=4)); x = torch.randn(4, 8)
    with raises(ValueError, *needles): sae_loss(sae, x, sae(x), lcfg)

@pytest.mark.parametrize("mask", [torch.zeros(31, dtype=torch.bool), torch.zeros(32), torch.zeros(1, 32, dtype=torch.bool)])
def test_bad_dead_mask(mask):
    "dead_mask of the wrong length, dtype or rank: the expected bool [d_sae] shape is named."
    sae = make_sae(cfg(architecture="topk", k=4)); x = torch.randn(4, 8)
    with raises(ValueError, "dead_mask must be a bool tensor of shape (32,)"):
        sae_loss(sae, x, sae(x), LossConfig(sparsity="none", aux="auxk"), dead_mask=mask)

def test_diversity_chunk_below_one():
    "diversity_penalty(chunk=0) is refused."
    with raises(ValueError, "chunk must be >= 1"): diversity_penalty(torch.randn(4, 3), chunk=0)

# ================================================================ metrics: zero variance
def test_zero_variance_constant_batch():
    "Every row the same vector: explained variance is 0/0, refused with the fix (two distinct rows)."
    x = torch.full((5, 3), 2.0)
    for fn in (explained_variance, fvu):
        with raises(ValueError, "zero variance", "all 5 rows are the same vector", "at least two distinct rows"): fn(x, torch.zeros(5, 3))
    with raises(ValueError, "all 5 rows are the same vector"): ReconstructionStats().update(x[:2], x[:2]).update(x[2:], x[2:]).compute()

def test_zero_variance_single_row():
    "One row never has a variance (a common mistake: evaluating one token)."
    with raises(ValueError, "all 1 rows are the same vector", "at least two distinct rows"): explained_variance(torch.randn(1, 8), torch.randn(1, 8))

def test_constant_within_batches_but_not_across_is_fine():
    "Each batch constant but batches different: the stream has variance; no false alarm."
    s = ReconstructionStats().update(torch.zeros(3, 2), torch.zeros(3, 2)).update(torch.ones(3, 2), torch.ones(3, 2))
    assert s.compute().explained_variance == 1.0

def test_tiny_but_real_variance_is_not_refused():
    "Rows one float32 ulp apart have a tiny, exactly computable variance: no false 'zero variance'."
    x = torch.tensor([[1e4], [1e4 + 2**-10]])                                  # 2^-10 is one ulp of float32 at 1e4
    assert explained_variance(x, torch.full((2, 1), 1e4)) == -1.0            # SSE u², variance u²/2, exactly
    assert ReconstructionStats().update(x, x).compute().explained_variance == 1.0

def test_variance_that_underflows_float64():
    "Rows differing by ~1e-170 (a float64 input): the variance underflows; the message says to rescale."
    x = torch.tensor([[0.0], [1e-170]], dtype=torch.float64)
    with raises(ValueError, "underflows to 0 in float64", "multiply x and x_hat by the same large factor"): explained_variance(x, x)
    assert explained_variance(1e170 * x, 1e170 * x) == 1.0

# ================================================================ metrics: NaN/Inf and shapes
@pytest.mark.parametrize("bad", [NAN, INF])
@pytest.mark.parametrize("fn", [mse, explained_variance, fvu, cosine_sim, relative_reconstruction_bias,
                                lambda x, h: ReconstructionStats().update(x, h)])
def test_nan_inf_in_x_or_x_hat(fn, bad):
    "NaN/Inf in x or x_hat: the tensor is named with its NaN/Inf counts, never a NaN metric."
    x, h = torch.randn(6, 4), torch.randn(6, 4)
    kind = "1 NaN and 0 Inf" if math.isnan(bad) else "0 NaN and 1 Inf"
    with raises(ValueError, f"x has {kind} entries (of 24)", "clean or mask them"): fn(with_bad(x, bad), h)
    with raises(ValueError, f"x_hat has {kind} entries"): fn(x, with_bad(h, bad))

@pytest.mark.parametrize("fn", [l0, l1, feature_density, lambda f: SparsityStats().update(f)])
def test_nan_inf_in_f(fn):
    "NaN/Inf feature activations: named, never counted as active or dead."
    with raises(ValueError, "f has 1 NaN and 0 Inf"): fn(with_bad(torch.rand(4, 6), NAN))
    with raises(ValueError, "f has 0 NaN and 1 Inf"): fn(with_bad(torch.rand(4, 6), INF))

@pytest.mark.parametrize("fn", [dead_fraction, utilization])
def test_nan_density(fn):
    "A NaN density (e.g. a hand-made 0/0) is refused instead of counting as alive."
    with raises(ValueError, "density has 1 NaN"): fn(torch.tensor([0.0, NAN, 0.5], dtype=torch.float64))
    with raises(ValueError, "density must be a [d_sae] vector", "feature_density(f)"): fn(torch.zeros(2, 3))

def test_nan_inf_in_dictionaries():
    "NaN/Inf in the true or learned dictionary."
    with raises(ValueError, "D_true has 1 NaN"): mmcs(with_bad(torch.randn(3, 4), NAN), torch.randn(5, 4))
    with raises(ValueError, "D_learned has 0 NaN and 1 Inf"): mmcs(torch.randn(3, 4), with_bad(torch.randn(5, 4), INF))

def test_empty_batches():
    "Zero rows: refused (a NaN metric would pass silently into a table); empty batches in a stream are skipped."
    with raises(ValueError, "x has no rows", "at least one row"): mse(torch.zeros(0, 4), torch.zeros(0, 4))
    with raises(ValueError, "x has no rows"): cosine_sim(torch.zeros(0, 4), torch.zeros(0, 4))
    with raises(ValueError, "f has no rows"): l0(torch.zeros(0, 6))
    with raises(ValueError, "no rows seen", "call update(x, x_hat)"): ReconstructionStats().update(torch.zeros(0, 4), torch.zeros(0, 4)).compute()
    with raises(ValueError, "no rows seen", "call update(f)"): SparsityStats().update(torch.zeros(0, 6)).compute()

def test_unflattened_or_mismatched_shapes():
    "[batch, seq, d] activations or x/x_hat of different shapes: the reshape to write is named."
    with raises(ValueError, "[batch, d_in]", "Flatten [batch, seq, d] activations with x.reshape(-1, d)"):
        explained_variance(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3))
    with raises(ValueError, "same shape; got (4, 3) and (4, 2)"): mse(torch.zeros(4, 3), torch.zeros(4, 2))
    with raises(ValueError, "[batch, d_sae]", "f.reshape(-1, d_sae)"): l0(torch.zeros(2, 3, 7))

def test_stream_changes_width():
    "A later batch of another width (mixing layers or SAEs in one stream)."
    s = ReconstructionStats().update(torch.randn(4, 3), torch.randn(4, 3))
    with raises(ValueError, "d_in=5 but earlier batches had d_in=3"): s.update(torch.randn(4, 5), torch.randn(4, 5))
    sp = SparsityStats().update(torch.rand(3, 4))
    with raises(ValueError, "d_sae=5 but earlier batches had d_sae=4"): sp.update(torch.rand(3, 5))

def test_relative_bias_of_a_zero_reconstruction():
    "x_hat all zeros (or anti-correlated): no positive rescaling exists; the likely cause is named."
    x = torch.randn(10, 4)
    with raises(ValueError, "not positive", "is x_hat all zeros?"): relative_reconstruction_bias(x, torch.zeros_like(x))
    with raises(ValueError, "not positive"): relative_reconstruction_bias(x, -x)

def test_dictionary_shapes():
    "Features as columns instead of rows, a 1-D dictionary, or an all-zero true direction."
    with raises(ValueError, "D_true has rows of length 3 but D_learned has 4", "pass W.T if your features are columns"):
        match_dictionaries(torch.randn(5, 3), torch.randn(6, 4))
    with raises(ValueError, "D_true must be 2-D [n_directions, d]"): mmcs(torch.randn(5), torch.randn(5, 5))
    with raises(ValueError, "D_true has 1 all-zero rows", "nonzero norm"): mmcs(with_bad(torch.ones(3, 2), 0.0, (1, slice(None))), torch.randn(4, 2))

# ================================================================ metrics: evaluate / splice
def test_evaluate_names_the_batch_with_nan():
    "A NaN in the third batch of an evaluation stream: the batch index is named."
    sae = make_sae(cfg())
    batches = [torch.randn(4, 8), torch.randn(4, 8), with_bad(torch.randn(4, 8), NAN)]
    with raises(ValueError, "batch 2 of `batches` has 1 NaN"): evaluate(sae, iter(batches))

def test_evaluate_blames_non_finite_weights():
    "A diverged SAE (NaN weights) on finite data: the SAE, not the data, is named."
    sae = make_sae(cfg())
    with torch.no_grad(): sae.W_dec[3, 0] = NAN
    with raises(ValueError, "the SAE's x_hat has", "on batch 0", "although x is finite", "sae.parameters()"):
        evaluate(sae, [torch.ones(4, 8)])

def test_evaluate_without_data():
    "evaluate() with neither activations nor token batches names both ways to call it."
    with raises(ValueError, "pass `batches` of activations", "token_batches"): evaluate(make_sae(cfg()))

class _FakeHookedModel(torch.nn.Module):
    "Stands in for a HookedTransformer up to the input checks (no forward pass is reached)."
    hook_dict = {"blocks.0.hook_resid_pre": None, "blocks.0.hook_resid_post": None}

def test_splice_unknown_hook_lists_valid_ones():
    "A misspelt hook name lists hook points the model has."
    with raises(ValueError, "'blocks.0.resid_post' is not a hook point", "blocks.0.hook_resid_post"):
        splice_metrics(_FakeHookedModel(), [torch.zeros(1, 4, dtype=torch.long)], "blocks.0.resid_post", lambda x: x)

def test_splice_bad_tokens_and_mask():
    "Tokens not [batch, seq], or a keep mask of the wrong shape/dtype."
    m, hook = _FakeHookedModel(), "blocks.0.hook_resid_pre"
    with raises(ValueError, "tokens must be [batch, seq]", "(4,)"): splice_metrics(m, [torch.zeros(4, dtype=torch.long)], hook, lambda x: x)
    t = torch.zeros(2, 4, dtype=torch.long)
    with raises(ValueError, "keep must be a bool mask shaped like tokens (2, 4)"): splice_metrics(m, [(t, torch.ones(2, 4))], hook, lambda x: x)
    with raises(ValueError, "keep must be a bool mask"): splice_metrics(m, [(t, torch.ones(2, 3, dtype=torch.bool))], hook, lambda x: x)


# ================================================================ a received SAE file (cfg.json and weights from someone else)
def _edit_cfg(folder, **changes):
    d = json.loads((folder/"cfg.json").read_text()); d.update(changes); (folder/"cfg.json").write_text(json.dumps(d))

@pytest.mark.parametrize("changes, needles", [
    (dict(expansion_factor=4_000_000), ["latents is more than", "lower expansion_factor"]),
    (dict(expansion_factor=400), ["does not match its cfg.json", "'W_dec' has shape (32, 8)"]),
    (dict(expansion_factor=float("inf")), ["latents is more than"]),
    (dict(expansion_factor="4"), ["expansion_factor must be a number"]),
    (dict(expansion_factor=1e308), ["latents is more than"]),
    (dict(d_in=10**30), ["d_in must be a positive integer of at most"]),
    (dict(d_in="8"), ["d_in must be a positive integer"]),
    (dict(normalize_decoder="false"), ["normalize_decoder must be true or false", "not a string"]),
    (dict(check_input="no"), ["check_input must be true or false"]),
    (dict(k="abc"), ["k must be an integer"]),
    (dict(input_scale=-1.0), ["input_scale must be a finite number > 0"]),
    (dict(input_scale="0.13"), ["input_scale must be a number"]),
    (dict(input_scale=float("nan")), ["input_scale must be a finite number > 0"]),
    (dict(hook=15), ["hook must be a string"]),
])
def test_cfg_json_values_are_checked_before_anything_is_allocated(ckpt, changes, needles):
    "Sizes, bools and numbers from a received cfg.json are validated first: a clear error naming the file, never a huge allocation."
    _edit_cfg(ckpt, **changes)
    changes.pop("d_sae", None)
    d = json.loads((ckpt/"cfg.json").read_text()); d.pop("d_sae")             # d_sae would disagree first otherwise
    (ckpt/"cfg.json").write_text(json.dumps(d))
    with raises(ValueError, "cfg.json", *needles): SAE.load(ckpt)

def test_cfg_json_missing_d_in(ckpt):
    d = json.loads((ckpt/"cfg.json").read_text()); del d["d_in"]; (ckpt/"cfg.json").write_text(json.dumps(d))
    with raises(ValueError, "cfg.json", "d_in"): SAE.load(ckpt)

def _rewrite_weights(folder, fn):
    "Apply fn to the state dict and save it back with a matching checksum (as a careless or hostile sender would)."
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    from sae_tutorial.sae import tensors_sha256
    p = str(folder/"sae.safetensors")
    with safe_open(p, "pt") as fh: meta = fh.metadata()
    t = fn(load_file(p)); meta["sha256"] = tensors_sha256(t); save_file(t, p, metadata=meta)

@pytest.mark.parametrize("bad", [NAN, INF])
def test_non_finite_weights_are_refused(ckpt, bad):
    "NaN or Inf in W_enc with a matching checksum: refused at load, naming the tensor, instead of NaN outputs later."
    _rewrite_weights(ckpt, lambda t: {**t, "W_enc": with_bad(t["W_enc"], bad)})
    with raises(ValueError, "W_enc", "NaN or Inf", "diverged run"): SAE.load(ckpt)

def test_integer_weights_are_refused(ckpt):
    _rewrite_weights(ckpt, lambda t: {**t, "W_dec": t["W_dec"].round().to(torch.int64)})
    with raises(ValueError, "non-floating tensors", "'W_dec' is I64"): SAE.load(ckpt)

def test_fresh_batchtopk_threshold_may_be_nan(tmp_path):
    "BatchTopK's inference threshold is NaN until training starts: that one NaN is legitimate."
    sae = make_sae(cfg(architecture="batchtopk", k=4)); sae.save(tmp_path/"b")
    assert torch.isnan(SAE.load(tmp_path/"b").threshold).all()
