"Harvested activations against an independent Hugging Face forward pass; masks, normalisation, stores."
import functools
import numpy as np, pytest, torch
from lm_fixtures import lm, small_corpus, one_thread  # noqa: F401 (autouse fixture)
from sae_tutorial.lm import EOT_ID, cache_dir
from sae_tutorial.activations import (ActivationStore, Contexts, HarvestConfig, KEPT, MASK_POS0, MASK_SPECIAL, harvest_activations, hook_layer, norm_scale, plain_block_reader, sink_mask, tokenize_contexts)

@functools.lru_cache(maxsize=None)
def ref_model():
    "A second, independent copy of the weights as a plain Hugging Face model (no TransformerLens)."
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(cache_dir()/"models"/"smollm2-135m", dtype=torch.float32).eval()

@functools.lru_cache(maxsize=None)
def contexts():
    return tokenize_contexts(small_corpus(), lm().tokenizer, ctx_len=40, n_contexts=5)

HF_MODULES = [("", 15), ("mlp", 3), ("self_attn", 7)]

@functools.lru_cache(maxsize=None)
def hf_reference():
    "One full forward pass of the plain HF model: hidden_states, and forward-hook outputs of HF_MODULES."
    got, handles = {}, []
    for path, layer in HF_MODULES:
        m = ref_model().model.layers[layer]
        for part in filter(None, path.split(".")): m = getattr(m, part)
        handles.append(m.register_forward_hook(
            lambda mod, inp, out, key=(path, layer): got.__setitem__(key, out[0] if isinstance(out, tuple) else out)))
    try:
        with torch.inference_mode(): hs = ref_model()(contexts().tokens, output_hidden_states=True).hidden_states
    finally:
        for h in handles: h.remove()
    return hs, got

def hf_output(module_path: str, layer: int) -> torch.Tensor:
    "Output of `model.layers[layer].<module_path>` ('' = the whole block) for all contexts, via a forward hook."
    return hf_reference()[1][(module_path, layer)]

@functools.lru_cache(maxsize=None)
def ram_store():
    return harvest_activations(lm().model, contexts(), HarvestConfig(batch_size=4, progress=False))

def test_contexts_are_the_token_stream_cut_in_pieces():
    c, tok = contexts(), lm().tokenizer
    docs = small_corpus()
    stream = []
    for i, d in enumerate(docs[:30]):
        if i: stream.append(EOT_ID)
        stream += tok.encode(d.text, add_special_tokens=False)
    body = c.tokens[:, 1:].flatten().tolist()
    assert (c.tokens[:, 0] == EOT_ID).all() and body == stream[:len(body)]
    assert c.source_of(0, 1) == docs[0].source and c.source_of(0, 0) is None

def test_resid_post_equals_hf_hidden_states():
    "blocks.15.hook_resid_post is hidden_states[16] of a full forward pass (entry 0 is the embedding)."
    s = ram_store()
    hs = hf_reference()[0][16]
    r = s.rows.long()
    torch.testing.assert_close(s.get(np.arange(len(s)), normalize=False), hs[r[:, 0], r[:, 1]], rtol=1e-4, atol=1e-3)
    # the same at the block output, read by a hook on the HF module
    torch.testing.assert_close(hs, hf_output("", 15), rtol=0, atol=0)

@pytest.mark.parametrize("hook,module,layer", [("blocks.3.hook_mlp_out", "mlp", 3), ("blocks.7.hook_attn_out", "self_attn", 7)])
def test_other_hooks_equal_hf_modules(hook, module, layer):
    c = contexts()
    s = harvest_activations(lm().model, c, HarvestConfig(hook=hook, batch_size=5, progress=False, outlier_factor=None))
    ref = hf_output(module, layer); r = s.rows.long()
    torch.testing.assert_close(s.get(np.arange(len(s)), normalize=False), ref[r[:, 0], r[:, 1]], rtol=1e-4, atol=1e-3)

def test_masked_positions_never_reach_batches():
    "Match every batch row to the reference activations: none is position 0, a special token or a norm outlier."
    s, c = ram_store(), contexts()
    hs = hf_reference()[0][16]
    flat = hs.flatten(0, 1); norms = flat.norm(dim=-1)
    special = torch.isin(c.tokens.flatten(), torch.tensor(lm().tokenizer.all_special_ids + [EOT_ID]))
    pos = torch.arange(c.tokens.shape[1]).repeat(c.tokens.shape[0])
    med = norms[(pos > 0) & ~special].median()
    seen = []
    for x in s.batches(batch_size=50, seed=3, normalize=False):
        j = torch.cdist(x, flat).argmin(dim=1)
        assert (pos[j] > 0).all() and not special[j].any() and (norms[j] <= 10 * med * 1.01).all()
        seen.append(j)
    seen = torch.cat(seen)
    assert len(seen) == len(s) == len(set(seen.tolist()))          # each kept row exactly once per epoch
    assert (c.tokens == EOT_ID).sum() > c.tokens.shape[0]           # the test saw mid-context <|endoftext|> too
    assert set(s.mask.unique().tolist()) >= {KEPT, MASK_POS0, MASK_SPECIAL}

def test_batches_are_shuffled_across_contexts():
    s = ram_store()
    idx = np.random.default_rng(0).permutation(len(s))[:64]
    ctx = s.rows[torch.from_numpy(idx), 0]
    assert len(ctx.unique()) >= 4
    b = next(iter(s.batches(batch_size=64, seed=0, normalize=False)))
    torch.testing.assert_close(b, s.get(idx, normalize=False))

def test_normalisation_factor_round_trips():
    s = ram_store()
    raw = s.get(np.arange(len(s)), normalize=False).double()
    s_ref = float(np.sqrt(s.d_in / (raw ** 2).sum(1).mean().item()))       # float64 formula
    assert abs(s.scale - s_ref) / s_ref < 1e-6
    xs = torch.cat(list(s)).double()
    assert abs((xs ** 2).sum(1).mean().item() - s.d_in) < 1e-3 * s.d_in
    b = next(iter(s.batches(batch_size=32, seed=5)))
    torch.testing.assert_close(b / s.scale, next(iter(s.batches(batch_size=32, seed=5, normalize=False))))

def test_norm_scale_rejects_empty():
    with pytest.raises(ValueError, match="empty"): norm_scale(0.0, 0, 8)

def test_sink_mask_hand_example():
    toks = torch.tensor([[0, 9, 9, 1, 9], [0, 9, 9, 9, 9]])
    norms = torch.tensor([[500., 2., 3., 400., 4.], [600., 3., 100., 2., 3.]])
    # kept candidates: 2,3,4,3,100,2,3 -> median 3 -> threshold 30: only the 100 is an outlier
    assert sink_mask(toks, norms, special_ids=(0, 1)).tolist() == [[1, 0, 0, 2, 0], [1, 0, 3, 0, 0]]

@pytest.mark.parametrize("dtype,tol", [("float16", 2e-3), ("bfloat16", 1e-2)])
def test_disk_store_round_trip(tmp_path, dtype, tol):
    ram = ram_store()
    d = harvest_activations(lm().model, contexts(), HarvestConfig(batch_size=3, store="disk", dtype=dtype,
                                                               path=str(tmp_path/"s"), progress=False))
    assert (tmp_path/"s"/"acts.bin").stat().st_size == len(d) * d.d_in * 2
    again = ActivationStore.load(tmp_path/"s")
    idx = np.array([5, 0, len(d) - 1, 17])
    torch.testing.assert_close(again.get(idx, normalize=False), ram.get(idx, normalize=False), rtol=tol, atol=tol * 50)
    assert torch.equal(again.rows, ram.rows) and torch.equal(again.mask, ram.mask)
    assert again.row_sources(idx) == ram.row_sources(idx) and torch.equal(again.row_tokens(idx), ram.row_tokens(idx))
    assert abs(again.scale - ram.scale) / ram.scale < 1e-3
    assert not list(tmp_path.glob(".s.*"))                          # no temporary folder left behind

def test_disk_store_refuses_to_overwrite(tmp_path):
    (tmp_path/"s").mkdir()
    with pytest.raises(FileExistsError, match="delete it"):
        harvest_activations(lm().model, contexts(), HarvestConfig(store="disk", path=str(tmp_path/"s"), progress=False))

def test_bad_inputs_name_the_fix():
    m = lm().model
    with pytest.raises(ValueError, match="not a hook point"): harvest_activations(m, contexts(), hook="blocks.99.hook_resid_post")
    with pytest.raises(ValueError, match="one of"): harvest_activations(m, contexts(), dtype="int8")
    with pytest.raises(ValueError, match="fewer than"): tokenize_contexts(small_corpus()[:2], lm().tokenizer, 64, n_contexts=10_000)
    with pytest.raises(IndexError): ram_store().get([len(ram_store())])
    assert hook_layer("blocks.15.hook_resid_post") == 15 and hook_layer("hook_embed") is None


# ---------------------------------------------------------------- ActivationStore owns its folder: from_tensor, save, load
def test_saving_a_ram_harvest_writes_what_a_disk_harvest_writes(tmp_path):
    "store.save of a RAM harvest and a disk harvest of the same contexts are the same files, byte for byte."
    harvest_activations(lm().model, contexts(), HarvestConfig(batch_size=4, store="disk", path=str(tmp_path/"disk"),
                                                              progress=False))
    ram_store().save(tmp_path/"saved")
    names = sorted(p.name for p in (tmp_path/"disk").iterdir())
    assert names == sorted(p.name for p in (tmp_path/"saved").iterdir()) and len(names) == 8
    for n in names: assert (tmp_path/"saved"/n).read_bytes() == (tmp_path/"disk"/n).read_bytes(), n
    with pytest.raises(FileExistsError): ram_store().save(tmp_path/"saved")

@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_load_in_ram_equals_reading_from_disk(tmp_path, dtype):
    x = torch.randn(37, 6, generator=torch.Generator().manual_seed(0))
    path = ActivationStore.from_tensor(x, dtype=dtype, normalize=True).save(tmp_path/"s")
    disk, ram = ActivationStore.load(path), ActivationStore.load(path, in_ram=True)
    assert disk.path == path and ram.path is None and "in RAM" in repr(ram)
    idx = np.array([36, 0, 5, 5])
    assert torch.equal(ram.get(idx), disk.get(idx))
    assert torch.equal(disk.get(idx, normalize=False), x[idx].to(getattr(torch, dtype)).float())   # storage rounding only
    raw = ActivationStore.load(path, in_ram=True, scale=2.0, normalize=False)
    assert raw.scale == 2.0 and not raw.normalize and torch.equal(raw.get(idx), disk.get(idx, normalize=False))
    assert ActivationStore.load(path, scale=2.0).get([1]).equal(2.0 * disk.get([1], normalize=False))

def test_from_tensor_places_rows_at_the_kept_positions(tmp_path):
    "With tokens and a mask, row i is the i-th kept position in row-major order; doc sources come along."
    tokens = torch.tensor([[0, 11, 12, 13], [0, 21, 0, 23]])
    mask = torch.tensor([[MASK_POS0, KEPT, KEPT, KEPT], [MASK_POS0, KEPT, MASK_SPECIAL, KEPT]])
    doc_index = torch.tensor([[-1, 0, 0, 0], [-1, 1, -1, 2]], dtype=torch.int32)
    x = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3)
    s = ActivationStore.load(ActivationStore.from_tensor(x, tokens, mask, doc_index, ["a", "b", "c"]).save(tmp_path/"s"))
    assert s.row_tokens(range(5)).tolist() == [11, 12, 13, 21, 23]
    assert s.row_sources(range(5)) == ["a", "a", "a", "b", "c"]
    assert s.meta["mask_counts"] == {"kept": 5, "position 0": 2, "special token": 1}
    assert torch.equal(s.norms[1, 3], x[4].norm()) and float(s.norms[1, 2]) == 0.0
    ref = np.sqrt(3 * 5 / (x.double() ** 2).sum().item())                # E||s x||^2 = d_in, by hand
    assert s.scale == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="KEPT positions"): ActivationStore.from_tensor(x[:4], tokens, mask)
    with pytest.raises(ValueError, match="non-empty"): ActivationStore.from_tensor(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="one of"): ActivationStore.from_tensor(x, dtype="int8")

def test_configs_give_every_option_help_and_choices():
    "HarvestConfig and the dashboard / exercises configs: every field has help text; choice fields are Literal."
    import argparse, dataclasses
    from sae_tutorial.cli import add_dataclass_args, dataclass_from_args
    from sae_tutorial.feature_data import DashboardConfig, DashboardRunConfig
    from sae_tutorial.exercises import ExercisesConfig
    for cls in (HarvestConfig, DashboardConfig, DashboardRunConfig, ExercisesConfig):
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls.__name__
    p = argparse.ArgumentParser(); add_dataclass_args(p, HarvestConfig)
    cfg = dataclass_from_args(HarvestConfig, p.parse_args(["--store", "disk", "--dtype", "bfloat16"]))
    assert (cfg.store, cfg.dtype, cfg.hook) == ("disk", "bfloat16", HarvestConfig().hook)
    with pytest.raises(SystemExit): p.parse_args(["--dtype", "int8"])


# ---------------------------------------------------------------- the fast path (plain HF blocks) against run_with_cache
@functools.lru_cache(maxsize=None)
def tiny_bridge(dtype=torch.float32):
    "A random 3-layer Llama (d_model 32, grouped-query attention) in a TransformerLens bridge, and tiny contexts."
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformer_lens.model_bridge import TransformerBridge
    from dash_tiny import tiny_tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=12, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    hf = LlamaForCausalLM(cfg).to(dtype).eval()
    model = TransformerBridge.boot_transformers("tiny", hf_model=hf, tokenizer=tiny_tokenizer())
    tokens = torch.randint(1, 12, (7, 16), generator=torch.Generator().manual_seed(1)); tokens[:, 0] = 0
    return model, Contexts(tokens, torch.zeros_like(tokens, dtype=torch.int32), ["tiny"])

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hook", [f"blocks.{l}.{h}" for l in (0, 2) for h in ("hook_resid_post", "hook_mlp_out", "hook_attn_out")])
def test_fast_harvest_equals_run_with_cache_on_a_tiny_model(hook, dtype):
    "fast=True (plain HF blocks) and fast=False (run_with_cache) store the same rows, masks, norms and scale."
    model, c = tiny_bridge(dtype)
    assert plain_block_reader(model, hook) is not None                    # the fast path is the one taken
    cfg = dict(hook=hook, batch_size=3, progress=False, outlier_factor=None)
    fast = harvest_activations(model, c, HarvestConfig(**cfg, fast=True))
    plain = harvest_activations(model, c, HarvestConfig(**cfg, fast=False))
    assert torch.equal(fast.get(np.arange(len(fast))), plain.get(np.arange(len(plain))))
    assert torch.equal(fast.mask, plain.mask) and torch.equal(fast.norms, plain.norms) and torch.equal(fast.rows, plain.rows)
    assert fast.scale == plain.scale and fast.meta == plain.meta

def test_fast_path_with_fused_attention_is_close_and_leaves_the_bridge_alone():
    "attn='sdpa' adds the attention terms in another order: close, not equal. The bridge's own forward is unchanged."
    model, c = tiny_bridge()
    hook = "blocks.2.hook_resid_post"
    with torch.inference_mode():
        want = model.run_with_cache(c.tokens, names_filter=hook, stop_at_layer=3)[1][hook]
        got = plain_block_reader(model, hook, attn="sdpa")(c.tokens)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        logits = model(c.tokens)
        torch.testing.assert_close(logits, model.original_model(c.tokens).logits, rtol=0, atol=0)

def test_fast_path_falls_back_where_it_cannot_read_the_hook():
    "Hooks inside a block's parts and models without a Hugging Face decoder take run_with_cache (fast=True or not)."
    model, c = tiny_bridge()
    assert plain_block_reader(model, "blocks.1.ln2.hook_normalized") is None
    assert plain_block_reader(model, "hook_embed") is None and plain_block_reader(object(), "blocks.0.hook_resid_post") is None
    s = harvest_activations(model, c, HarvestConfig(hook="blocks.1.ln2.hook_normalized", progress=False, outlier_factor=None))
    assert len(s) == 7 * 15

def test_fast_path_that_breaks_warns_and_harvests_through_run_with_cache(monkeypatch):
    "A model whose weights the fast path cannot map (e.g. a renamed wrapper) is harvested the plain way, with a warning."
    import sae_tutorial.activations as acts
    model, c = tiny_bridge()
    cfg = dict(hook="blocks.1.hook_resid_post", batch_size=3, progress=False, outlier_factor=None)
    plain = harvest_activations(model, c, HarvestConfig(**cfg, fast=False))
    def broken(*a, **k): raise KeyError("model.layers.0.self_attn.q_proj.weight")
    monkeypatch.setattr(acts, "plain_block_reader", broken)
    with pytest.warns(UserWarning, match="fast harvest path does not fit"):
        got = harvest_activations(model, c, HarvestConfig(**cfg, fast=True))
    assert torch.equal(got.get(np.arange(len(got))), plain.get(np.arange(len(plain)))) and got.scale == plain.scale

def test_fast_harvest_equals_run_with_cache_on_smollm2():
    "The real model: the default (fast) harvest is the run_with_cache harvest, bit for bit."
    plain = harvest_activations(lm().model, contexts(), HarvestConfig(batch_size=4, progress=False, fast=False))
    fast = ram_store()
    assert torch.equal(fast.get(np.arange(len(fast))), plain.get(np.arange(len(plain))))
    assert torch.equal(fast.mask, plain.mask) and fast.scale == plain.scale
