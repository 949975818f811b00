"""The CUDA implementation of the causal flow op: Triton chunk kernels for the value products (step 4 of
:mod:`flowrl.ops.flow`), the scans (steps 1-3) as torch operators.

The value products are the op's O(L·D·M) part: the unnormalised causal linear attention
h = tril(q′ kᵀ) v′ + q′·KV⁰ with KV⁰ of chunk n = Σ_{m<n} kᵀ v′ over earlier chunks. As in fla's chunk kernels,
three kinds of program, one per (chunk, batch row × head), all chunks in parallel:

- ``_chunk_outer``: aᵀ b of one chunk (kᵀ v′ in the forward, q′ᵀ gh in the backward), accumulated in float32;
  the exclusive prefix (KV⁰) or suffix (dKV) over chunks is one ``torch.cumsum`` of those [D, M] blocks.
- ``_chunk_forward``: h of one chunk from q′, k, v′ and its KV⁰.
- ``_chunk_backward``: gq′ = tril(gh v′ᵀ) k + gh KV⁰ᵀ, gk = tril(gh v′ᵀ)ᵀ q′ + v′ dKVᵀ,
  gv′ = tril(q′ kᵀ)ᵀ gh + k dKV of one chunk.

The scans are O(L·D) torch operators in float32 (``torch.cumsum``, row dot products): the code of
:func:`flowrl.ops.flow.scan.causal_scan`, with :class:`TritonLinearAttention` in place of its chunked torch
products. The backward recomputes the forward (only q, k, v are kept) and runs autograd through the scans,
whose value-product node is the backward kernel above.

Products take their inputs in the value precision (bfloat16 or float16 under autocast or for 16-bit inputs,
else float32, multiplied exactly: ``input_precision="ieee"``, no TF32) and accumulate in float32; the
normalisers always run in float32. Float64 inputs run the torch implementation.

The kernels are compiled by ``triton.jit`` on first use; with ``TRITON_INTERPRET=1`` Triton's interpreter runs
them on CPU tensors (how the default test suite checks them without a GPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor

try:  # Triton is optional: without it the CUDA op runs torch operators
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = tl = None

__all__ = ["available", "interpreting", "unsupported", "linear_attention", "causal_forward", "causal_backward"]

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_WIDTH = 256  # D and M up to this (one block each; the chunk's [C, D] and [D, M] tiles live in SRAM)


def available() -> bool:
    return triton is not None


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` asks Triton to interpret kernels (on CPU tensors)."""
    return triton is not None and bool(triton.knobs.runtime.interpret)


def unsupported(op: str, q: Tensor, state: Sequence[Tensor] = ()) -> str | None:
    """Why the Triton kernels cannot run ``op`` on these inputs, or None when they can."""
    if op != "causal":
        return f"no Triton kernel for the {op} op"
    if triton is None:
        return "triton is not installed"
    if q.device.type != "cuda" and not interpreting():
        return f"tensors on {q.device} (Triton runs CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype}"
    if len(state):
        return "a carried state"
    if q.shape[-1] > MAX_WIDTH:
        return f"head width {q.shape[-1]} > {MAX_WIDTH}"
    return None


# ------------------------------------------------------------------------------------------------- kernels
# Plain functions, wrapped by triton.jit on first use (_kernels): jit reads TRITON_INTERPRET when it wraps.
def _chunk_outer(
    A, B, OUT, L, DA, DB, NCH, C: tl.constexpr, BA: tl.constexpr, BB: tl.constexpr, PREC: tl.constexpr, CD: tl.constexpr
):
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # 64-bit offsets: B·H·L·D may pass 2³¹
    rows = n * C + tl.arange(0, C)
    ra = tl.arange(0, BA)
    rb = tl.arange(0, BB)
    live = rows < L
    a = tl.load(A + bh * L * DA + rows[:, None] * DA + ra[None, :], mask=live[:, None] & (ra[None, :] < DA), other=0.0)
    b = tl.load(B + bh * L * DB + rows[:, None] * DB + rb[None, :], mask=live[:, None] & (rb[None, :] < DB), other=0.0)
    acc = tl.dot(tl.trans(a.to(CD)), b.to(CD), input_precision=PREC)
    out = OUT + (bh * NCH + n) * DA * DB
    tl.store(out + ra[:, None] * DB + rb[None, :], acc, mask=(ra[:, None] < DA) & (rb[None, :] < DB))


def _chunk_forward(
    Q,
    K,
    V,
    KV0,
    OUT,
    L,
    D,
    M,
    NCH,
    C: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    PREC: tl.constexpr,
    LOW: tl.constexpr,
    CD: tl.constexpr,
):
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # 64-bit offsets: B·H·L·D may pass 2³¹
    i = tl.arange(0, C)
    rows = n * C + i
    rd = tl.arange(0, BD)
    rm = tl.arange(0, BM)
    live = rows < L
    dmask = live[:, None] & (rd[None, :] < D)
    mmask = live[:, None] & (rm[None, :] < M)
    q = tl.load(Q + bh * L * D + rows[:, None] * D + rd[None, :], mask=dmask, other=0.0)
    k = tl.load(K + bh * L * D + rows[:, None] * D + rd[None, :], mask=dmask, other=0.0)
    v = tl.load(V + bh * L * M + rows[:, None] * M + rm[None, :], mask=mmask, other=0.0)
    q, k, v = q.to(CD), k.to(CD), v.to(CD)
    s = tl.dot(q, tl.trans(k), input_precision=PREC)
    s = tl.where(i[:, None] >= i[None, :], s, 0.0)
    h = tl.dot(s.to(LOW).to(CD), v, input_precision=PREC)
    kvp = KV0 + (bh * NCH + n) * D * M
    kv0 = tl.load(kvp + rd[:, None] * M + rm[None, :], mask=(rd[:, None] < D) & (rm[None, :] < M), other=0.0)
    h += tl.dot(q, kv0.to(LOW).to(CD), input_precision=PREC)
    tl.store(OUT + bh * L * M + rows[:, None] * M + rm[None, :], h, mask=mmask)


def _chunk_backward(
    Q,
    K,
    V,
    GH,
    KV0,
    DKV,
    GQ,
    GK,
    GV,
    L,
    D,
    M,
    NCH,
    C: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    PREC: tl.constexpr,
    LOW: tl.constexpr,
    CD: tl.constexpr,
):
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # 64-bit offsets: B·H·L·D may pass 2³¹
    i = tl.arange(0, C)
    rows = n * C + i
    rd = tl.arange(0, BD)
    rm = tl.arange(0, BM)
    live = rows < L
    dmask = live[:, None] & (rd[None, :] < D)
    mmask = live[:, None] & (rm[None, :] < M)
    q = tl.load(Q + bh * L * D + rows[:, None] * D + rd[None, :], mask=dmask, other=0.0)
    k = tl.load(K + bh * L * D + rows[:, None] * D + rd[None, :], mask=dmask, other=0.0)
    v = tl.load(V + bh * L * M + rows[:, None] * M + rm[None, :], mask=mmask, other=0.0)
    gh = tl.load(GH + bh * L * M + rows[:, None] * M + rm[None, :], mask=mmask, other=0.0)
    q, k, v, gh = q.to(CD), k.to(CD), v.to(CD), gh.to(CD)
    lower = i[:, None] >= i[None, :]
    s = tl.where(lower, tl.dot(q, tl.trans(k), input_precision=PREC), 0.0).to(LOW).to(CD)
    g = tl.where(lower, tl.dot(gh, tl.trans(v), input_precision=PREC), 0.0).to(LOW).to(CD)
    state = (rd[:, None] < D) & (rm[None, :] < M)
    kvp = (bh * NCH + n) * D * M + rd[:, None] * M + rm[None, :]
    kv0 = tl.load(KV0 + kvp, mask=state, other=0.0).to(LOW).to(CD)
    dkv = tl.load(DKV + kvp, mask=state, other=0.0).to(LOW).to(CD)
    gv = tl.dot(tl.trans(s), gh, input_precision=PREC) + tl.dot(k, dkv, input_precision=PREC)
    gq = tl.dot(g, k, input_precision=PREC) + tl.dot(gh, tl.trans(kv0), input_precision=PREC)
    gk = tl.dot(tl.trans(g), q, input_precision=PREC) + tl.dot(v, tl.trans(dkv), input_precision=PREC)
    tl.store(GQ + bh * L * D + rows[:, None] * D + rd[None, :], gq, mask=dmask)
    tl.store(GK + bh * L * D + rows[:, None] * D + rd[None, :], gk, mask=dmask)
    tl.store(GV + bh * L * M + rows[:, None] * M + rm[None, :], gv, mask=mmask)


_JITTED: dict[bool, dict] = {}


def _kernels() -> dict:
    mode = interpreting()
    if mode not in _JITTED:
        _JITTED[mode] = {f.__name__: triton.jit(f) for f in (_chunk_outer, _chunk_forward, _chunk_backward)}
    return _JITTED[mode]


# ------------------------------------------------------------------------------------------------ wrappers
def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))  # tl.dot needs every block dimension >= 16


def _chunk(chunk: int) -> int:
    """The kernels' chunk: a power of two in [16, 128] (tl.arange needs a power of two)."""
    return min(128, max(16, triton.next_power_of_2(chunk)))


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # 16-bit inputs: the flag does not apply


def _types(dtype: torch.dtype) -> tuple:
    """(LOW, CD): the value precision, and the dtype the products' operands are given to tl.dot in: LOW itself,
    except under the interpreter, whose tl.dot multiplies 16-bit floats wrongly: there LOW-rounded operands
    are widened to float32 (the same products, exact in float32, accumulated in float32 as on the GPU)."""
    low = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}[dtype]
    return low, (tl.float32 if interpreting() else low)


def _chunk_outer_sums(a: Tensor, b: Tensor, C: int) -> Tensor:
    """[BH, N, DA, DB] float32: aᵀ b of every chunk of C rows, for a [BH, L, DA] and b [BH, L, DB]."""
    BH, L, DA = a.shape
    DB = b.shape[-1]
    N = triton.cdiv(L, C)
    out = torch.empty((BH, N, DA, DB), dtype=torch.float32, device=a.device)
    _kernels()["_chunk_outer"][(N, BH)](
        a, b, out, L, DA, DB, N, C, _block(DA), _block(DB), _precision(a.dtype), _types(a.dtype)[1]
    )
    return out


class TritonLinearAttention(torch.autograd.Function):
    """h = causal linear attention of q, k [B, H, L, D] and v [B, H, L, M] (one dtype) in float32."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, chunk: int) -> Tensor:
        B, H, L, D = q.shape
        M = v.shape[-1]
        C = _chunk(chunk)
        q, k, v = (x.reshape(B * H, L, x.shape[-1]).contiguous() for x in (q, k, v))
        kv = _chunk_outer_sums(k, v, C)
        kv0 = (kv.cumsum(1) - kv).contiguous()  # Σ over earlier chunks
        h = torch.empty((B * H, L, M), dtype=torch.float32, device=q.device)
        N = kv.shape[1]
        _kernels()["_chunk_forward"][(N, B * H)](
            q, k, v, kv0, h, L, D, M, N, C, _block(D), _block(M), _precision(q.dtype), *_types(q.dtype)
        )
        ctx.save_for_backward(q, k, v, kv0)
        ctx.shape = (B, H, C)
        return h.view(B, H, L, M)

    @staticmethod
    def backward(ctx, gh: Tensor):
        q, k, v, kv0 = ctx.saved_tensors
        B, H, C = ctx.shape
        BH, L, D = q.shape
        M = v.shape[-1]
        gh = gh.reshape(BH, L, M).to(q.dtype).contiguous()
        gn = _chunk_outer_sums(q, gh, C)
        dkv = (gn.sum(1, keepdim=True) - gn.cumsum(1)).contiguous()  # Σ over later chunks
        gq, gk = (torch.empty((BH, L, D), dtype=torch.float32, device=q.device) for _ in range(2))
        gv = torch.empty((BH, L, M), dtype=torch.float32, device=q.device)
        N = gn.shape[1]
        _kernels()["_chunk_backward"][(N, BH)](
            q,
            k,
            v,
            gh,
            kv0,
            dkv,
            gq,
            gk,
            gv,
            L,
            D,
            M,
            N,
            C,
            _block(D),
            _block(M),
            _precision(q.dtype),
            *_types(q.dtype),
        )
        shape = lambda x: x.view(B, H, L, x.shape[-1])  # noqa: E731
        return shape(gq).to(q.dtype), shape(gk).to(k.dtype), shape(gv).to(v.dtype), None


def linear_attention(q: Tensor, k: Tensor, v: Tensor, chunk: int, value_dtype: torch.dtype | None = None) -> Tensor:
    """Unnormalised causal linear attention in float32 (differentiable), the products in ``value_dtype``
    (None: q's dtype)."""
    dt = value_dtype or q.dtype
    return TritonLinearAttention.apply(q.to(dt), k.to(dt), v.to(dt), chunk)


def _flow(Q: Tensor, K: Tensor, V: Tensor, eps: float, clamp: float, chunk: int, value_dtype) -> Tensor:
    from flowrl.ops.flow.scan import causal_scan

    lowp = value_dtype or (Q.dtype if Q.dtype != torch.float32 else None)
    q, k, v = (x.float() for x in (Q, K, V))

    def products(qn, kk, vv, kv, chunk):
        return linear_attention(qn, kk, vv, chunk, lowp), None

    y, _ = causal_scan(torch.sigmoid(q), torch.sigmoid(k), v, eps, clamp, None, False, chunk, products)
    return y


def causal_forward(Q: Tensor, K: Tensor, V: Tensor, eps: float, clamp: float, chunk: int, value_dtype=None) -> Tensor:
    """y [B, H, L, M] in Q's dtype, contiguous."""
    with torch.no_grad():
        return _flow(Q, K, V, eps, clamp, chunk, value_dtype).to(Q.dtype).contiguous()


@contextlib.contextmanager
def _autograd_enabled():
    """Autograd inside a custom op's implementation, which the dispatcher runs with the autograd keys excluded
    (and grad mode off): those keys are taken out of the thread's exclude set for the block."""
    keys = torch._C.DispatchKey
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (keys.AutogradFunctionality, keys.ADInplaceOrView, keys.AutogradOther, keys.AutogradNestedTensor):
        exclude = exclude.remove(key)
    with torch.enable_grad(), torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude):
        yield


def causal_backward(gy, Q, K, V, eps, clamp, chunk, value_dtype=None) -> tuple[Tensor, Tensor, Tensor]:
    """(gQ, gK, gV) in the inputs' dtypes: the forward recomputed with autograd, then its gradient."""
    with _autograd_enabled():
        q, k, v = (x.detach().requires_grad_(True) for x in (Q, K, V))
        y = _flow(q, k, v, eps, clamp, chunk, value_dtype)
        gq, gk, gv = torch.autograd.grad(y, (q, k, v), gy.to(y.dtype))
    return gq.to(Q.dtype).contiguous(), gk.to(K.dtype).contiguous(), gv.to(V.dtype).contiguous()
