#!/usr/bin/env python
"""Where a fast TopK / sparse-ReLU training step spends its GPU time, and what the sparse pieces could cost instead.

    python benchmarks/gpu_profile.py --out benchmarks/gpu_profile

1. torch.profiler over 10 `train` steps (TopK k=32 and ReLU at the benchmark's sparse start) at 768 x 24576,
   batch 4096, float32: the kernels sorted by GPU time.
2. Each sparse piece of the TopK backward timed alone against alternatives computing the same thing
   (checked equal to 1e-4 relative first): the decode, dL/dvals at the active pairs, W_dec's gradient, and topk.
3. Exact top-k alternatives to `pre.topk(k)` on [B, S] (`topk_pieces`): sorted=True/False, and the package's two-round
   `row_topk` (top-k within G slices of S/G, then top-k of the G*k candidates; tested in tests/test_fast_paths.py) for several G. Each records 'match': the
   fraction of rows whose selected set equals torch.topk's, and the largest difference of the sorted values.
   On a GPU also a single-pass Triton top-k (benchmarks/topk_triton.py) for a few chunk sizes / warps; a config
   that fails to compile records its error instead of a time.

    python benchmarks/gpu_profile.py --dry-run --out /tmp/p     # CPU, tiny sizes (the wiring; every 'match' reads 1)
    python benchmarks/gpu_profile.py --only-pieces --out ...    # the timed pieces only, no profiler
"""
from __future__ import annotations

import argparse, json, os, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from sae_tutorial.losses import LossConfig                     # noqa: E402
from sae_tutorial.sae import SAEConfig, make_sae   # noqa: E402
from sae_tutorial.fast import _ByFeature, row_topk   # noqa: E402
from sae_tutorial.train import TrainConfig, train              # noqa: E402
from train_throughput import make_data, make_sparse_init, make_init, time_cuda as _time_cuda  # noqa: E402


DEV = "cuda"


def sync():
    if DEV == "cuda": torch.cuda.synchronize()


def time_cuda(fn, reps=20):
    return _time_cuda(fn, reps, cuda=DEV == "cuda")


def profile_steps(arch, init, x, lcfg, steps=10):
    d_in, d_sae = init["W_enc"].shape
    sae = make_sae(SAEConfig(d_in=d_in, expansion_factor=d_sae / d_in, architecture=arch, k=32,
                             normalize_decoder=False), device=DEV)
    with torch.no_grad():
        for n, v in init.items(): getattr(sae, n).copy_(v)
    batches = list(x.to(DEV).split(len(x) // 4))
    cfg = TrainConfig(lr=4e-4, steps=steps, decay="constant", warmup_steps=0, clip_grad_norm=1.0, progress=False,
                      log_every=steps, device=DEV)
    train(sae, (batches[i % len(batches)] for i in range(5)), lcfg, TrainConfig(**{**cfg.__dict__, "steps": 5}))
    sync()
    t = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as prof:
        train(sae, (batches[i % len(batches)] for i in range(steps)), lcfg, cfg)
        sync()
    wall = (time.perf_counter() - t) / steps * 1e3
    ka = prof.key_averages()
    kern = torch.autograd.DeviceType.CUDA
    rows = sorted(({"name": e.key[:90], "gpu_ms_per_step": e.self_device_time_total / 1e3 / steps, "calls": e.count / steps}
                   for e in ka if e.device_type == kern), key=lambda r: -r["gpu_ms_per_step"])
    ops = sorted(({"name": e.key[:60], "gpu_ms_per_step": e.device_time_total / 1e3 / steps, "calls": e.count / steps}
                  for e in ka if e.device_type != kern and e.device_time_total > 0 and e.key.startswith("aten::")),
                 key=lambda r: -r["gpu_ms_per_step"])
    total = sum(r["gpu_ms_per_step"] for r in rows)
    return dict(arch=arch, wall_ms_per_step_profiled=wall, gpu_kernel_ms_per_step=total, top=rows[:25], ops=ops[:25])


def topk_match(ref, alt) -> dict:
    "How far (vals, idx) `alt` is from `ref`: fraction of rows with the same set of columns, max |sorted vals diff|."
    same = (ref[1].sort(-1).values == alt[1].sort(-1).values).all(-1).float().mean().item()
    dv = (ref[0].sort(-1).values - alt[0].sort(-1).values).abs().max().item()
    return dict(rows_same_set=same, max_abs_val_diff=dv)


def topk_groups(S: int, k: int, wanted=(24, 48, 96, 192)) -> list:
    "The G of `wanted` usable at width S (S % G == 0, S/G >= k); at the dry run's small S, small powers of two."
    ok = [G for G in wanted if S % G == 0 and S // G >= k]
    return ok or [G for G in (2, 4, 8) if S % G == 0 and S // G >= k]


def topk_pieces(pre, k: int, groups, res: dict | None = None, save=lambda: None) -> dict:
    """Time each exact top-k method on pre [B, S] (ms) and record how it matches torch.topk (see topk_match), into
    `res`; save() is called before the Triton kernels (compiled here), so a hang there loses nothing before it."""
    res = {} if res is None else res
    ref = pre.topk(k, dim=-1, sorted=False)
    res["topk sorted=False"] = time_cuda(lambda: pre.topk(k, dim=-1, sorted=False))
    res["topk sorted=True"] = time_cuda(lambda: pre.topk(k, dim=-1, sorted=True))
    res["topk sorted=True match"] = topk_match(ref, pre.topk(k, dim=-1, sorted=True))
    res["sort descending, first k (reference)"] = time_cuda(lambda: pre.sort(-1, descending=True))
    for G in groups:
        res[f"two-stage G={G} (S/G={pre.shape[1] // G})"] = time_cuda(lambda: row_topk(pre, k, G))
        res[f"two-stage G={G} match"] = topk_match(ref, row_topk(pre, k, G))
    save()
    if not pre.is_cuda: return res                      # the Triton kernel runs on a GPU (dry run: check_topk_triton)
    try: from topk_triton import topk_triton
    except Exception as e: res["triton"] = f"not available: {type(e).__name__}: {e}"; return res
    for chunk, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 8)):
        name = f"triton single-pass chunk={chunk} warps={warps}"
        try:
            res[name + " match"] = topk_match(ref, topk_triton(pre, k, chunk, warps))     # compiles it first
            res[name] = time_cuda(lambda: topk_triton(pre, k, chunk, warps))
        except Exception as e:
            res[name] = f"failed: {type(e).__name__}: {str(e)[:400]}"
        save()
    return res


def check_topk_triton():
    """Dry run: benchmarks/topk_triton.py through Triton's CPU interpreter against torch.topk, where triton is
    installed (its interpreter needs numpy < 2.4 as of triton 3.6); prints why not otherwise, never fails the run."""
    import importlib.util
    if importlib.util.find_spec("triton") is None: print("topk_triton: triton not installed here, not checked"); return
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        from topk_triton import topk_triton
        g = torch.Generator().manual_seed(1)
        for B, S, k, chunk in ((4, 256, 32, 64), (3, 1000, 8, 128), (2, 64, 64, 64)):
            pre = torch.randn(B, S, generator=g); pre[0, :5] = -0.0; pre[-1, -3:] = float("-inf")
            v, i = topk_triton(pre, k, chunk)
            rv, ri = pre.topk(k, -1)
            assert torch.equal(i.sort(-1).values, ri.sort(-1).values) and torch.equal(v, rv), (B, S, k, chunk)
        print("topk_triton (Triton interpreter) == torch.topk: ok", flush=True)
    except AssertionError: raise
    except Exception as e: print(f"topk_triton: interpreter check not run: {type(e).__name__}: {str(e)[:200]}")
    finally: del os.environ["TRITON_INTERPRET"]


def pieces(B=4096, D=768, S=24576, k=32, res=None, save=lambda: None):
    "The timed pieces (ms) into `res` (returned); save() is called as results arrive."
    torch.manual_seed(0)
    x = torch.randn(B, D, device=DEV); W = torch.randn(D, S, device=DEV) / D ** 0.5
    W_dec = torch.randn(S, D, device=DEV) / D ** 0.5; g = torch.randn(B, D, device=DEV)
    pre = x @ W
    top, idx = pre.topk(k, dim=-1, sorted=False); vals = top.relu()
    res = {} if res is None else res
    res["encoder addmm [B,D]@[D,S]"] = time_cuda(lambda: torch.addmm(torch.zeros(S, device=DEV), x, W))
    res["topk(k) of pre [B,S]"] = time_cuda(lambda: pre.topk(k, dim=-1, sorted=False))
    res["topk via bf16 pre"] = time_cuda(lambda: pre.to(torch.bfloat16).topk(k, dim=-1, sorted=False))
    res["f dense = zeros.scatter"] = time_cuda(lambda: torch.zeros_like(pre).scatter_(-1, idx, vals))
    # decode
    ref = F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")
    alt = torch.bmm(vals[:, None, :], W_dec[idx]).squeeze(1)
    res["decode: embedding_bag"] = time_cuda(lambda: F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum"))
    res["decode: bmm(vals, W_dec[idx])"] = time_cuda(lambda: torch.bmm(vals[:, None, :], W_dec[idx]))
    res["decode match"] = float((alt - ref).norm() / ref.norm())
    # dL/dvals at active pairs
    crow = torch.arange(0, B * k + 1, k, device=DEV)

    def sddmm():
        pattern = torch.sparse_csr_tensor(crow, idx.reshape(-1), torch.zeros_like(vals).reshape(-1), (B, S),
                                          check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, g, W_dec.T).values().view(B, k)
    gv_ref = sddmm()
    gv_alt = torch.bmm(W_dec[idx], g[:, :, None]).squeeze(-1)
    res["gv: sampled_addmm (CSR)"] = time_cuda(sddmm)
    res["gv: bmm(W_dec[idx], g)"] = time_cuda(lambda: torch.bmm(W_dec[idx], g[:, :, None]))
    res["gv match"] = float((gv_alt - gv_ref).norm() / gv_ref.norm())
    # W_dec gradient: sum over active pairs of vals * g[row]; whole bags vs pieces of 64, balanced and with one
    # latent firing in every row (as at TopK's init, where the data's mean direction wins everywhere)
    rows_ = torch.arange(B, device=DEV).repeat_interleave(k)
    idx_hot = idx.clone(); idx_hot[:, 0] = 7; idx_hot[:, 1:][idx_hot[:, 1:] == 7] = 8
    for name, ii in (("balanced", idx), ("one latent in every row", idx_hot)):
        ref_w = None
        for piece in (0, 64):
            bf = _ByFeature(rows_, ii.reshape(-1), S, piece=piece)
            out = bf.sum_rows(g, vals.reshape(-1))
            ref_w = out if ref_w is None else ref_w
            res[f"gW_dec ({name}): build + sum, piece={piece}"] = time_cuda(
                lambda: _ByFeature(rows_, ii.reshape(-1), S, piece=piece).sum_rows(g, vals.reshape(-1)))
        res[f"gW_dec ({name}) pieces match"] = float((out - ref_w).norm() / ref_w.norm())
    gw_ref = ref_w
    res["gW_enc transpose-copy [S,D]->[D,S]"] = time_cuda(lambda: gw_ref.T.contiguous())
    save()
    res["topk alternatives"] = {}
    topk_pieces(pre, k, topk_groups(S, k), res["topk alternatives"], save)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_profile"))
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, to check the script runs")
    ap.add_argument("--only-pieces", action="store_true", help="the timed pieces (and top-k alternatives) only")
    a = ap.parse_args()
    global DEV
    if a.dry_run: DEV = "cpu"; check_topk_triton()
    res = dict(gpu=torch.cuda.get_device_name(0) if DEV == "cuda" else None, torch=torch.__version__)
    res["pieces_ms"] = {}
    save = lambda: Path(a.out + ".json").write_text(json.dumps(res, indent=1))
    pieces(*((256, 64, 512) if a.dry_run else ()), res=res["pieces_ms"], save=save)
    print(json.dumps(res["pieces_ms"], indent=1), flush=True)
    Path(a.out + ".json").write_text(json.dumps(res, indent=1))
    if a.only_pieces: return print_topk(res)
    B, D, S = (256, 64, 512) if a.dry_run else (4096, 768, 24576)
    x = make_data(4 * B, D)
    for arch, init in (("topk", make_init(D, S)), ("relu", make_sparse_init(x, S, 32))):
        lc = LossConfig(sparsity="l1_wdec" if arch == "relu" else "none", sparsity_coeff=5e-3 if arch == "relu" else 0)
        res["profile_" + arch] = profile_steps(arch, init, x, lc)
        r = res["profile_" + arch]
        print(f"\n{arch}: {r['wall_ms_per_step_profiled']:.2f} ms/step wall (profiled), GPU kernels {r['gpu_kernel_ms_per_step']:.2f}")
        for t in r["top"][:14]: print(f"  {t['gpu_ms_per_step']:7.3f} ms  x{t['calls']:.1f}  {t['name']}")
        print("  aten ops (GPU time incl. children):")
        for t in r["ops"][:16]: print(f"  {t['gpu_ms_per_step']:7.3f} ms  x{t['calls']:.1f}  {t['name']}")
        Path(a.out + ".json").write_text(json.dumps(res, indent=1))
    print_topk(res)


def print_topk(res):
    "One line per top-k method (last, so that a log's tail shows it): ms, rows with torch.topk's set, max val diff."
    alt = res["pieces_ms"]["topk alternatives"]
    print("\ntop-k alternatives on pre [B, S] (ms; rows with torch.topk's set; max |sorted vals diff|):")
    for name, v in alt.items():
        if name.endswith(" match"): continue
        m = alt.get(name + " match") or alt.get(name.split(" (")[0] + " match") or {}
        t = f"{v:8.3f}" if isinstance(v, float) else f"  {v}"
        print(f"  {t}  {name}" + (f"  match {m['rows_same_set']:.4f}, {m['max_abs_val_diff']:.1e}" if m else ""))


if __name__ == "__main__":
    main()
