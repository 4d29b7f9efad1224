"""The optional compiled top-k (02c_native_topk): what happens around it, where the notebook cannot look.

Reference: torch.topk (the same values per row, each at the column the kernel names). Each case that changes the
environment (no compiler, the switch off, a broken cached library, a forked child) runs in a subprocess with its
own cache folder. Run: python -m pytest -q tests/test_native.py
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sae_tutorial.fast import _n_slices, row_topk, threshold_topk
from sae_tutorial.native import _compiler, native_topk, native_topk_kernel

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
    assert first.startswith("compiled: ")
    lib = first.split("compiled: ")[1].strip()
    mtime = os.stat(lib).st_mtime_ns
    assert _py(CHECK, tmp_path) == first and os.stat(lib).st_mtime_ns == mtime


@needs_cc
def test_broken_cached_library_is_rebuilt(tmp_path):
    lib = _py(CHECK, tmp_path).split("compiled: ")[1].strip()
    with open(lib, "wb") as f: f.write(b"not a shared library")     # e.g. a copy cut short
    assert _py(CHECK, tmp_path).strip() == f"compiled: {lib}"
    assert os.path.getsize(lib) > 1000


@needs_cc
def test_forked_child_gets_its_own_threads(tmp_path):
    # the parent's pool threads do not exist in a forked child; the kernel must not wait on them
    out = _py("""
        import os, torch
        from sae_tutorial.native import native_topk_kernel
        torch.set_num_threads(2)
        kernel, x = native_topk_kernel(), torch.randn(1024, 2304)
        assert kernel(x, 64, 128) is not None and kernel._pool is not None
        pid = os.fork()
        if pid == 0:
            v, i = kernel(x, 64, 128)
            os._exit(0 if torch.equal(x.gather(1, i), v) else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """, tmp_path)
    assert out.strip() == "0"


@needs_cc
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_into_threads_changes_nothing(threads):
    kernel = native_topk_kernel()
    x = torch.randn(1001, 2304).round(decimals=1)                      # ties, and rows that do not split evenly
    v1, i1 = kernel(x, 64, 128, threads=1)
    v, i = kernel(x, 64, 128, threads=threads)
    assert torch.equal(v, v1) and torch.equal(i, i1)


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
