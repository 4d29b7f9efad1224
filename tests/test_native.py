"""The optional compiled kernels (02c_native_kernels): what happens around them, where the notebook cannot look.

References: torch.topk (the same values per row, each at the column the kernel names) and the PyTorch path of the
fast backward (train() with the compiled kernels switched off). Each case that changes the environment (no
compiler, the switch off, a broken cached library, a forked child) runs in a subprocess with its own cache folder.
Run: python -m pytest -q tests/test_native.py
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sae_tutorial.fast import _n_slices, row_topk, threshold_topk
import sae_tutorial.fast as fast
from sae_tutorial.native import _compiler, native_kernels, native_pairs_backward, native_topk

needs_cc = pytest.mark.skipif(_compiler() is None, reason="no C compiler on this machine: the PyTorch path only")


def _py(code: str, tmp_path, **env) -> str:
    "Run code in a fresh interpreter with its own cache folder; its stdout."
    e = {**os.environ, "SAE_TUTORIAL_CACHE": str(tmp_path / "cache"), **env}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=e, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


CHECK = """
    import torch
    from sae_tutorial.fast import row_topk
    from sae_tutorial.native import native_status
    x = torch.randn(512, 2304)
    v, i = row_topk(x, 64)
    assert torch.equal(v.sort(-1, descending=True).values, x.topk(64, dim=-1).values)
    assert torch.equal(x.gather(1, i), v)
    print(native_status())
"""


def test_no_compiler_falls_back_and_says_why(tmp_path):
    out = _py(CHECK, tmp_path, CC=str(tmp_path / "no-such-cc"))
    assert out.startswith("unavailable, using the PyTorch path") and "no-such-cc" in out


def test_switched_off(tmp_path):
    assert _py(CHECK, tmp_path, SAE_TUTORIAL_NATIVE="0").strip() == "off (SAE_TUTORIAL_NATIVE=0)"
    assert not (tmp_path / "cache" / "native").exists()                # nothing compiled


@needs_cc
def test_compiled_once_then_reused(tmp_path):
    first = _py(CHECK, tmp_path)
    assert first.startswith("compiled")
    lib = first.split(": ")[1].strip()
    mtime = os.stat(lib).st_mtime_ns
    assert _py(CHECK, tmp_path) == first and os.stat(lib).st_mtime_ns == mtime


@needs_cc
def test_broken_cached_library_is_rebuilt(tmp_path):
    first = _py(CHECK, tmp_path).strip()
    lib = first.split(": ")[1]
    with open(lib, "wb") as f: f.write(b"not a shared library")     # e.g. a copy cut short
    assert _py(CHECK, tmp_path).strip() == first
    assert os.path.getsize(lib) > 1000


@needs_cc
def test_forked_child_does_not_wait_on_the_parents_threads(tmp_path):
    # OpenMP's threads do not exist in a forked child; the kernels must not wait on them
    out = _py("""
        import os, numpy as np, torch
        from sae_tutorial.native import native_kernels
        torch.set_num_threads(2)
        kernels, x = native_kernels(), torch.randn(1024, 2304)
        assert kernels.topk(x, 64, 128) is not None
        pid = os.fork()
        if pid == 0:                  # no multi-threaded torch op here: PyTorch's own would hang in a forked child
            v, i = kernels.topk(x, 64, 128)
            xn, vn, in_ = x.numpy(), v.numpy(), i.numpy()
            os._exit(0 if (xn[np.arange(1024)[:, None], in_] == vn).all() else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """, tmp_path)
    assert out.strip() == "0"


@needs_cc
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_into_threads_changes_nothing(threads):
    kernels = native_kernels()
    x = torch.randn(1001, 2304).round(decimals=1)                      # ties, and rows that do not split evenly
    v1, i1 = kernels.topk(x, 64, 128, threads=1)
    v, i = kernels.topk(x, 64, 128, threads=threads)
    assert torch.equal(v, v1) and torch.equal(i, i1)
    # the backward: each latent's sums are made by one thread, in pair order, so the split changes no bit
    g = torch.Generator().manual_seed(threads)
    xc, g_xhat, W_dec = torch.randn(256, 64, generator=g), torch.randn(256, 64, generator=g), torch.randn(300, 64, generator=g)
    rows, cols = torch.randint(0, 256, (4000,), generator=g), torch.randint(0, 300, (4000,), generator=g)
    vals = torch.rand(4000, generator=g)
    one = kernels.pairs_backward(xc, W_dec, vals, rows, cols, g_xhat, threads=1)
    for a, b in zip(kernels.pairs_backward(xc, W_dec, vals, rows, cols, g_xhat, threads=threads), one):
        assert torch.equal(a, b)


@needs_cc
def test_same_columns_as_the_pytorch_threshold_on_trained_like_rows():
    # rows shaped like an SAE's pre-activations (most entries negative, a heavy upper tail), as float32
    g = torch.Generator().manual_seed(3)
    pre = torch.randn(2048, 4608, generator=g) - 2 + torch.empty(2048, 4608).exponential_(generator=g) ** 2 * 0.1
    nv, ni = native_topk(pre, 32, _n_slices(4608, 32))
    tv, ti = threshold_topk(pre, 32)
    assert torch.equal(ni.sort(-1).values, ti.sort(-1).values)         # no exact ties here: the same columns
    assert torch.equal(nv.sort(-1).values, tv.sort(-1).values)
    rv, ri = row_topk(pre, 32)
    assert torch.equal(ri, ni) and torch.equal(rv, nv)                 # row_topk takes the compiled kernel


@needs_cc
def test_backward_without_openmp_only_on_one_thread(monkeypatch):
    # without OpenMP the kernel would run beside PyTorch's threads, where it is no faster: PyTorch's path then
    kernels = native_kernels()
    x, W = torch.randn(8, 16), torch.randn(32, 16)
    rows, cols, vals = torch.arange(8), torch.arange(8), torch.rand(8)
    monkeypatch.setattr(kernels, "openmp", False)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert native_pairs_backward(x, W, vals, rows, cols, x, None) is None
        torch.set_num_threads(1)
        assert native_pairs_backward(x, W, vals, rows, cols, x, None) is not None
    finally:
        torch.set_num_threads(n)
    assert native_pairs_backward(x.double(), W.double(), vals.double(), rows, cols, x.double(), None) is None


@needs_cc
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu"])
def test_training_with_and_without_the_compiled_kernels(arch, monkeypatch):
    """float32 train() (AuxK for TopK, L1 for ReLU at trained-like sparsity) with the compiled top-k and backward,
    and with both switched off: the same weights up to float rounding after 12 steps."""
    from sae_tutorial.losses import LossConfig
    from sae_tutorial.sae import SAEConfig, make_sae
    from sae_tutorial.train import TrainConfig, train
    g = torch.Generator().manual_seed(0)
    D = torch.randn(256, 64, generator=g); D /= D.norm(dim=1, keepdim=True)
    xs = [(torch.rand(512, 256, generator=g) < 0.03).float() @ D + 0.05 * torch.randn(512, 64, generator=g)
          for _ in range(12)]
    loss = {"topk": LossConfig(sparsity="none", aux="auxk", k_aux=64), "batchtopk": LossConfig(sparsity="none"),
            "relu": LossConfig(sparsity="l1", sparsity_coeff=1e-3)}[arch]
    weights, called = {}, []
    for native in (True, False):
        torch.manual_seed(0)
        sae = make_sae(SAEConfig(d_in=64, expansion_factor=8, architecture=arch, k=16))
        if arch == "relu":
            with torch.no_grad(): sae.b_enc.fill_(-0.6)                   # trained-like: few latents fire
        if native:
            def counted(*a):
                out = native_pairs_backward(*a)
                if out is not None: called.append(1)                   # count the calls it answered, not the asks
                return out
            monkeypatch.setattr(fast, "native_pairs_backward", counted)
        else:
            monkeypatch.setattr(fast, "native_topk", lambda *a: None)
            monkeypatch.setattr(fast, "native_pairs_backward", lambda *a: None)
        train(sae, xs, loss, TrainConfig(lr=1e-3, steps=12, batch_size=512, dead_window=1024, progress=False,
                                         log_every=4))
        weights[native] = {n: p.detach().clone() for n, p in sae.named_parameters()}
    assert len(called) >= 6, f"the compiled backward answered {len(called)} of 12 steps"
    for n, w in weights[True].items():
        torch.testing.assert_close(w, weights[False][n], rtol=1e-4, atol=1e-5)
