"""Time the dashboards of many features: one pass over an activation store + the example windows + the logit
effects + writing the static HTML. Target (issue #9): 1,000 features from a 200k-token store in <= 2 min on 2 cores.

The store is synthetic by default (random Gaussian activations of SmolLM2's width in a RAM ActivationStore with
random tokens): the cost is dense matmuls and top-k over [rows, features], which do not depend on the values,
and harvesting 200k real tokens would itself take minutes. `--real N` harvests N contexts of 128 tokens from
SmolLM2 instead (layer 15), so you can check the same code on real activations.

    python benchmarks/dashboard.py                      # 200k rows, TopK SAE 576 -> 4608, 1,000 features
    python benchmarks/dashboard.py --rows 50000 --features 200
"""
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae_tutorial.activations import ActivationStore
from sae_tutorial.sae import SAEConfig, make_sae
from sae_tutorial.feature_data import DashboardConfig, gather_feature_data
from sae_tutorial.dashboard_html import dashboards_html

def synthetic_store(n_rows: int, d_in: int, ctx_len: int = 128, vocab: int = 49152, seed: int = 0) -> ActivationStore:
    "A RAM store of n_rows random activations, as if harvested from n_rows/(ctx_len-1) contexts (position 0 masked)."
    g = torch.Generator().manual_seed(seed)
    n_ctx = -(-n_rows // (ctx_len - 1))
    tokens = torch.randint(1, vocab, (n_ctx, ctx_len), generator=g); tokens[:, 0] = 0
    doc_index = torch.arange(n_ctx, dtype=torch.int32)[:, None].expand(n_ctx, ctx_len).clone(); doc_index[:, 0] = -1
    mask = torch.zeros(n_ctx, ctx_len, dtype=torch.uint8); mask[:, 0] = 1
    ci, pi = (mask == 0).nonzero(as_tuple=True)
    rows = torch.stack([ci, pi], 1).to(torch.int32)[:n_rows]
    acts = torch.randn(n_rows, d_in, generator=g)
    meta = dict(d_in=d_in, n_rows=n_rows, hook="synthetic", dtype="float32", scale=1.0, normalize=False,
                train_batch_size=4096, seed=0)
    return ActivationStore(meta, tokens, doc_index, [f"source{i % 7}" for i in range(n_ctx)], mask,
                           torch.ones(n_ctx, ctx_len), rows, acts)

class StandInLM(nn.Module):
    "Just what the logit effects read: ln_final (an RMSNorm) and W_U [d_model, d_vocab]."
    def __init__(self, d_model: int, d_vocab: int):
        super().__init__()
        self.ln_final = nn.RMSNorm(d_model)
        self.W_U = nn.Parameter(torch.randn(d_model, d_vocab) / d_model ** 0.5)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--expansion", type=float, default=8.0)
    ap.add_argument("--arch", default="topk")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real", type=int, default=0, help="harvest this many SmolLM2 contexts instead of synthetic rows")
    ap.add_argument("--html", default=None, help="where to write the HTML (default: a temp file)")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    if a.real:
        from sae_tutorial.lm import load_lm
        from sae_tutorial.corpus import build_corpus
        from sae_tutorial.activations import tokenize_contexts, harvest_activations, HarvestConfig
        model, tok = load_lm(device="cpu")
        store = harvest_activations(model, tokenize_contexts(build_corpus(), tok, 128, a.real),
                                    HarvestConfig(batch_size=16, progress=False))
        lm, d_in = model, store.d_in
    else:
        store, d_in = synthetic_store(a.rows, a.d_in), a.d_in
        lm, tok = StandInLM(d_in, 49152), None
        try:
            from transformers import AutoTokenizer
            from sae_tutorial.core import cache_dir
            tok = AutoTokenizer.from_pretrained(cache_dir()/"models"/"smollm2-135m")
        except Exception:                                    # no cached SmolLM2: GPT-2-free fallback, ids as text
            class _Ids:
                all_special_ids = []
                def decode(self, ids): return f"<{ids[0]}>"
            tok = _Ids()
    t_setup = time.perf_counter() - t0
    sae = make_sae(SAEConfig(d_in=d_in, expansion_factor=a.expansion, architecture=a.arch, k=a.k))
    with torch.no_grad(): sae.b_enc.fill_(-0.5 if a.arch == "relu" else 0.0)   # sparse firing for a random ReLU SAE
    feats = torch.arange(min(a.features, sae.cfg.d_sae))
    t0, c0 = time.perf_counter(), time.process_time()
    data = gather_feature_data(sae, store, feats, model=lm, cfg=DashboardConfig())
    t_gather, c_gather = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    page = dashboards_html(data, tok)
    path = Path(a.html or tempfile.mkdtemp())/"dashboards.html" if not a.html else Path(a.html)
    path.write_text(page, encoding="utf-8")
    t_html, c_html = time.perf_counter() - t0, time.process_time() - c0
    res = dict(rows=store.n_rows, features=len(feats), d_in=d_in, d_sae=sae.cfg.d_sae, arch=a.arch,
               store="real SmolLM2 L15" if a.real else "synthetic", threads=a.threads,
               gather_s=round(t_gather, 1), html_s=round(t_html, 1), total_s=round(t_gather + t_html, 1),
               gather_cpu_s=round(c_gather, 1), html_cpu_s=round(c_html, 1),
               html_mb=round(len(page.encode()) / 1e6, 1), median_density=float(data.density.median()),
               setup_s=round(t_setup, 1), cpu=platform.processor() or platform.machine(),
               load=os.getloadavg()[0])
    print(json.dumps(res))
    if a.json:
        with open(a.json, "a") as f: f.write(json.dumps(res) + "\n")

if __name__ == "__main__":
    main()
