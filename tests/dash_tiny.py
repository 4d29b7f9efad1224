"""A tiny world with known answers for the dashboard and widget tests: a word-level tokenizer, a random
2-layer Llama wrapped in a TransformerLens bridge, an activation store harvested from it, and a hand-built
ReLU SAE whose feature 0 fires on the word 'cat' (and feature 2 never fires)."""
import tempfile
from functools import lru_cache
import torch

WORDS = ["<|endoftext|>", "the", "cat", "sat", "on", "mat", "dog", "ran", "a", "big", "red", "."]
CAT = WORDS.index("cat")
HOOK = "blocks.0.hook_resid_post"

@lru_cache(maxsize=None)
def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="."))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")          # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=WORDS[0], bos_token=WORDS[0], pad_token=WORDS[0])
    d = tempfile.mkdtemp(); tok.save_pretrained(d)          # TransformerLens re-reads it by name
    return AutoTokenizer.from_pretrained(d)

@lru_cache(maxsize=None)
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformer_lens.model_bridge import TransformerBridge
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        hf.model.norm.weight.uniform_(0.5, 1.5)   # a non-trivial final-norm weight
        hf.lm_head.weight.mul_(50)                # peaked next-token distributions (the init gives nearly uniform ones)
    return TransformerBridge.boot_transformers("tiny", hf_model=hf, tokenizer=tiny_tokenizer()), hf

@lru_cache(maxsize=None)
def tiny_store():
    "24 contexts of 16 tokens; documents alternate between sources 'pets' (even) and 'misc' (odd)."
    from sae_tutorial.activations import Contexts, harvest_activations, HarvestConfig
    g = torch.Generator().manual_seed(1)
    n_ctx, T = 24, 16
    tokens = torch.randint(1, len(WORDS), (n_ctx, T), generator=g)
    tokens[:, 0] = 0
    doc_index = torch.arange(n_ctx, dtype=torch.int32)[:, None].expand(n_ctx, T).clone()
    doc_index[:, 0] = -1
    ctxs = Contexts(tokens, doc_index, ["pets" if i % 2 == 0 else "misc" for i in range(n_ctx)])
    model, _ = tiny_model()
    return harvest_activations(model, ctxs, HarvestConfig(hook=HOOK, batch_size=5, progress=False, outlier_factor=None))

@lru_cache(maxsize=None)
def cat_sae():
    "ReLU SAE, d_sae = 2 * d_in: feature 0 fires on 'cat', feature 1 on 'dog', feature 2 never; the rest random."
    from sae_tutorial.sae import SAEConfig, make_sae
    store = tiny_store()
    X = store.get(range(len(store))); toks = store.row_tokens(range(len(store)))
    torch.manual_seed(2)
    sae = make_sae(SAEConfig(d_in=store.d_in, expansion_factor=2.0, architecture="relu"))
    with torch.no_grad():
        sae.b_enc.fill_(-1.0)
        for j, word in ((0, "cat"), (1, "dog")):
            is_t = toks == WORDS.index(word)
            mu_t, mu_r = X[is_t].mean(0), X[~is_t].mean(0)
            u = (mu_t - mu_r) / (mu_t - mu_r).norm()
            sae.W_enc[:, j] = u; sae.W_dec[j] = u
            sae.b_enc[j] = -(0.5 * (mu_t + mu_r) - sae.b_dec) @ u     # fires past the midpoint
        sae.W_enc[:, 2] = 0; sae.b_enc[2] = -1.0
    return sae

def f_reference(sae, X) -> torch.Tensor:
    "float64 ReLU encoder, written out: relu((x - b_dec) @ W_enc + b_enc)."
    sae = sae.requires_grad_(False)
    return torch.relu((X.double() - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double())
