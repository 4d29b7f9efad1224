"""An exact single-pass row top-k in Triton, a candidate to replace `pre.topk(k, dim=-1, sorted=False)` (timed in
benchmarks/gpu_profile.py's 'topk alternatives'; not part of the package).

One program per row streams the row in chunks of CHUNK columns. Each value is packed with its column into one int64
key whose order is the float order (the float's bits, with the magnitude bits flipped for negatives, in the high
32 bits; the column in the low 32 bits, so ties go to the larger column). Per chunk, `tl.topk` (a bitonic top-k)
gives the chunk's k largest keys; the elementwise max of the running top-k (sorted descending) and those (sorted
ascending) holds the top k of both (the bitonic merge step), sorted again for the next chunk. The values are read
back from the keys. Exact: the same set as torch.topk when the values are distinct (the dry run of gpu_profile.py
checks it with TRITON_INTERPRET=1 where Triton is installed; the GPU run records 'match'). Checked on the CPU with
Triton 3.6.0's interpreter (the GPU image's version; `pip install --target /tmp/tri triton==3.6.0`, then
PYTHONPATH=/tmp/tri TRITON_INTERPRET=1): values and columns equal to torch.topk's for [4, 256] k=32, [3, 1000] k=8,
[2, 5000] k=32, [2, 24576] k=32 with -inf entries, and all-negative rows. S is a compile-time constant (one
compilation per d_sae): with S a run-time argument that interpreter fails on `range(0, S, CHUNK)`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_topk_kernel(X, V, I, S: tl.constexpr, stride_x, K: tl.constexpr, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CHUNK)
    lowest = tl.full([CHUNK], -9223372036854775807 - 1, tl.int64)
    running = tl.full([K], -9223372036854775807 - 1, tl.int64)
    for start in tl.range(0, S, CHUNK):
        cols = start + offs
        m = cols < S
        x = tl.load(X + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
        u = x.to(tl.int32, bitcast=True)
        k32 = u ^ ((u >> 31) & 0x7FFFFFFF)                       # signed-int order == float order
        key = (k32.to(tl.int64) << 32) | cols.to(tl.int64)
        key = tl.where(m, key, lowest)
        c = tl.topk(key, K)                                        # [K], descending
        running = tl.sort(tl.maximum(running, tl.flip(c, 0)), descending=True)
    k32 = (running >> 32).to(tl.int32)
    u = k32 ^ ((k32 >> 31) & 0x7FFFFFFF)
    o = tl.arange(0, K)
    tl.store(V + row * K + o, u.to(tl.float32, bitcast=True))
    tl.store(I + row * K + o, running & 0xFFFFFFFF)


def topk_triton(pre: torch.Tensor, k: int, chunk: int = 1024, num_warps: int = 4):
    """(vals, idx) [B, k] of each row's k largest entries of pre [B, S] (float32, last dim contiguous), sorted
    descending. k and chunk must be powers of two with k <= chunk; S < 2**31."""
    B, S = pre.shape
    if k & (k - 1) or chunk & (chunk - 1) or k > chunk or k > S:
        raise ValueError(f"topk_triton needs k and chunk powers of two, k <= chunk and k <= S; got k={k}, chunk={chunk}, S={S}")
    if pre.stride(-1) != 1: pre = pre.contiguous()
    vals = torch.empty(B, k, device=pre.device, dtype=torch.float32)
    idx = torch.empty(B, k, device=pre.device, dtype=torch.int64)
    _row_topk_kernel[(B,)](pre, vals, idx, S, pre.stride(0), K=k, CHUNK=chunk, num_warps=num_warps)
    return vals.to(pre.dtype), idx
