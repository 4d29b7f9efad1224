"""Received files, fuzzed: any JSON value in any field of an SAE's cfg.json, a SAELens cfg.json or an activation
store's meta.json gives either a working object or a ValueError / FileNotFoundError that names the file; never a raw
TypeError, KeyError, OverflowError or an allocation sized by the file."""
import json, os, shutil, tempfile
from pathlib import Path
import pytest
from hypothesis import given, settings, HealthCheck, strategies as st
from sae_tutorial.sae import SAE, SAEConfig, make_sae
from sae_tutorial.saelens import save_saelens, load_saelens
from sae_tutorial.activations import ActivationStore
from test_reliability_data import harvest_fake

JSON_VALUES = st.one_of(st.none(), st.booleans(), st.text(max_size=8),
                        st.integers(min_value=-10**30, max_value=10**30),
                        st.floats(allow_nan=True, allow_infinity=True), st.just(1e308),
                        st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_FIXED = os.environ.get("SAE_TUTORIAL_HYPOTHESIS", "fixed") != "random"     # as in test_properties.py
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=_FIXED, database=None if _FIXED else settings.default.database)

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2, architecture="topk", k=3, input_scale=0.5, hook="blocks.0.x"))
    sae.save(root/"ours"); save_saelens(sae, root/"saelens"); harvest_fake(root/"store")
    return root

def _try(load, path):
    try: load(path)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:    # NotImplementedError: a SAELens variant we do not read
        assert str(path) in str(e), str(e)                                 # every message names the file it refused

def _fuzz(folders, tmp_path, kind, fname, field, value, load):
    d = Path(tempfile.mkdtemp(dir=tmp_path))/kind
    shutil.copytree(folders/kind, d)
    cfg = json.loads((d/fname).read_text()); cfg[field] = value
    (d/fname).write_text(json.dumps(cfg))
    _try(load, d)

OUR_FIELDS = list(json.loads(json.dumps({**SAEConfig(d_in=8).to_dict(), "dtype": "float32"})))

@FUZZ
@given(field=st.sampled_from(OUR_FIELDS), value=JSON_VALUES)
def test_our_cfg_json_fuzzed(folders, tmp_path, field, value):
    _fuzz(folders, tmp_path, "ours", "cfg.json", field, value, SAE.load)

@FUZZ
@given(field=st.sampled_from(["d_in", "d_sae", "k", "dtype", "architecture", "apply_b_dec_to_input",
                              "normalize_activations", "rescale_acts_by_decoder_norm", "metadata"]), value=JSON_VALUES)
def test_saelens_cfg_json_fuzzed(folders, tmp_path, field, value):
    _fuzz(folders, tmp_path, "saelens", "cfg.json", field, value, load_saelens)

@FUZZ
@given(field=st.sampled_from(["d_in", "n_rows", "hook", "dtype", "scale", "normalize", "train_batch_size", "seed",
                              "ctx_len", "n_contexts"]), value=JSON_VALUES)
def test_store_meta_json_fuzzed(folders, tmp_path, field, value):
    _fuzz(folders, tmp_path, "store", "meta.json", field, value, ActivationStore.load)
