"Shared, cached objects for test_lm.py, test_corpus.py and test_activations.py (one model load per pytest process)."
import functools, os
os.environ["HF_HUB_OFFLINE"] = "1"          # these tests never touch the model hub
import pytest

@functools.lru_cache(maxsize=None)
def lm():
    "The default offline model and tokenizer, on the CPU in float32."
    from sae_tutorial.lm import load_lm
    return load_lm("smollm2-135m", device="cpu")

@functools.lru_cache(maxsize=None)
def small_corpus():
    "The corpus the ci-budget notebooks build (cached on disk after the first build)."
    from sae_tutorial.corpus import build_corpus
    return build_corpus(total_chars=300_000)

@pytest.fixture(autouse=True, scope="module")
def one_thread(torch_one_thread):
    "Autouse in the modules that import it (test_lm, test_corpus, test_activations): conftest's torch_one_thread."
