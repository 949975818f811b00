"""Recurrent inference for a causal Flow-Attention trunk: a few new tokens per call against per-row states.

:class:`FlowDecoder` runs the same maths as ``Flowformer.forward(x, state=..., return_state=True)`` (steps
1-4 of :mod:`flowrl.ops.flow` continued from carried sums) but is built for the tiny calls of a
rollout or a decoding loop, where per-operator overhead, not arithmetic, is the cost:

- the query/key/value projections are one fused product, and q and k stay side by side ([q | k], [B, L, 2C]),
  so each prefix sum, ε shift and normaliser dot product covers both with one operator;
- the states live in preallocated tensors updated in place (no FlowState objects, copies or checks);
- the last block computes its output projection, MLP and the final norm at the last token only.

About 45 operators per layer against ~90 for the module path; a DT rollout step (3 layers, 10-20 rows of 3
tokens) drops from ~4 ms to ~1 ms on a 2-core CPU. On a CPU the whole step is by default one call of the
C++ kernel in :mod:`flowrl.ops.native` instead (0.2 ms for that step), which reads the same weights and
updates the same state tensors, so the two paths can be mixed. Outputs equal the module path (tests compare
both paths in float64). Inference only: no autograd, no dropout.

Example::

    dec = FlowDecoder(trunk, batch=8)           # trunk: a causal flow Flowformer
    h = dec.step(x[:, :5])                      # [8, dim]: trunk(x[:, :5])[:, -1]
    h = dec.step(x[:, 5:7])                     # trunk(x[:, :7])[:, -1], from the states
    dec.reset(torch.tensor([2]))                # row 2 starts a new sequence
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from flowrl.models.flowformer import Flowformer
from flowrl.ops import native as _native

__all__ = ["FlowDecoder"]

# The kernel splits calls of this many token-rows or more across torch's thread count (row chunks on torch's
# OpenMP pool). Measured at dim 128, 3 layers, 2 threads: 10 x 59 tokens 7.3 -> 3.5 ms (torch operators 6.9),
# 5 x 59 3.5 -> 2.1 (3.5); below ~100 token-rows a second thread saved nothing.
_PARALLEL_TOKENS = 128
_ACTIVATIONS = {"gelu": F.gelu, "relu": torch.relu_}  # applied to a fresh product: in place is safe


class _Layer(NamedTuple):
    norm1: tuple[Tensor, Tensor, float]
    w_qkv: Tensor  # [3C, C]: query, key, value rows
    b_qkv: Tensor | None
    w_out: Tensor
    b_out: Tensor | None
    norm2: tuple[Tensor, Tensor, float]
    w_fc: Tensor
    b_fc: Tensor
    w_proj: Tensor
    b_proj: Tensor


class _States(NamedTuple):
    """Per layer: t [B] tokens seen; qk [B, 2C] = [Σq | Σk]; rp [B, 2C] = [Σ I q | Σ O k] (source and sink
    sums); z [B, H] = Σ exp(Ô); kv [B·H, Dh, Dh] = Σ k (C v)ᵀ. Heads are contiguous Dh-blocks of C."""

    t: Tensor
    qk: list[Tensor]
    rp: list[Tensor]
    z: list[Tensor]
    kv: list[Tensor]


class FlowDecoder:
    """Incremental inference for ``batch`` independent sequences through a causal flow :class:`Flowformer`.

    Args:
        trunk: a Flowformer with ``attention="flow"`` and ``causal=True``. Its weights are read at
            construction; :meth:`refresh` re-reads them if any parameter changed since (call it before
            reusing a decoder after training steps).
        batch: number of rows (sequences) B.
        native: run each step as one call of the C++ kernel :mod:`flowrl.ops.native` (CPU only; same
            results as the torch operators up to rounding). None (default): when it is available here
            (see ``FLOWRL_NATIVE``); True: require it; False: torch operators.

    The work dtype is float64 for a float64 trunk, else float32.
    """

    def __init__(self, trunk: Flowformer, batch: int, *, native: bool | None = None):
        c = trunk.config
        if c.attention != "flow" or not c.causal:
            raise ValueError(f"FlowDecoder needs a causal flow trunk, got attention={c.attention!r}, causal={c.causal}")
        if batch < 1:
            raise ValueError(f"FlowDecoder: batch must be >= 1, got {batch}")
        self.trunk, self.batch = trunk, batch
        self.dim, self.heads = c.dim, c.heads
        self.eps, self.clamp = c.eps, c.clamp
        self.activation = _ACTIVATIONS[c.activation]
        p = next(trunk.parameters())
        self.dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
        self.device = p.device
        self._fingerprint = None
        self._kernel = self._find_kernel(native)
        self._load_weights()
        C, H, Dh = c.dim, c.heads, c.dim // c.heads
        z = lambda *s: torch.zeros(*s, dtype=self.dtype, device=self.device)  # noqa: E731
        n = len(self.layers)
        self.states = _States(
            z(batch),
            [z(batch, 2 * C) for _ in range(n)],
            [z(batch, 2 * C) for _ in range(n)],
            [z(batch, H) for _ in range(n)],
            [z(batch * H, Dh, Dh) for _ in range(n)],
        )
        if self._kernel is not None:  # the states never move (updated in place), so their addresses are fixed
            s = self.states
            self._state_ptrs = _pointers(x for i in range(n) for x in (s.qk[i], s.rp[i], s.z[i], s.kv[i]))

    @property
    def native(self) -> bool:
        """Whether steps run in the native kernel."""
        return self._kernel is not None

    def _find_kernel(self, native: bool | None):
        if native is False:
            return None
        if self.device.type != "cpu":
            if native:
                raise ValueError(f"FlowDecoder: native=True needs a CPU trunk, got {self.device}")
            return None
        lib = _native.library()
        if lib is None:
            if native:
                raise ValueError(f"FlowDecoder: native=True but the native kernel is {_native.status()}")
            return None
        return lib.flow_decode_f64 if self.dtype == torch.float64 else lib.flow_decode_f32

    # ------------------------------------------------------------------ weights
    def _weights_fingerprint(self) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.trunk.parameters())

    def _load_weights(self) -> None:
        cast = lambda x: x.detach().to(self.dtype)  # noqa: E731
        norm = lambda m: (cast(m.weight), cast(m.bias), m.eps)  # noqa: E731
        layers = []
        for block in self.trunk.blocks:
            a: Any = block.attn  # torch types submodules as Tensor | Module
            mlp: Any = block.mlp
            projs = (a.query_projection, a.key_projection, a.value_projection)
            biased = a.out_projection.bias is not None  # the four projections have biases or none do
            layers.append(
                _Layer(
                    norm(block.norm1),
                    torch.cat([cast(m.weight) for m in projs]),
                    torch.cat([cast(m.bias) for m in projs]) if biased else None,
                    cast(a.out_projection.weight),
                    cast(a.out_projection.bias) if biased else None,
                    norm(block.norm2),
                    cast(mlp.fc.weight),
                    cast(mlp.fc.bias),
                    cast(mlp.proj.weight),
                    cast(mlp.proj.bias),
                )
            )
        self.layers = layers
        final = self.trunk.norm
        self.final_norm = norm(final) if isinstance(final, torch.nn.LayerNorm) else None
        self._fingerprint = self._weights_fingerprint()
        if self._kernel is not None:
            self._load_native_weights()

    def _load_native_weights(self) -> None:
        """The kernel's view of the weights: pointers in its layout (products over transposed weights)."""
        tr = lambda w: w.t().contiguous()  # noqa: E731
        keep, eps = [], []
        for w in self.layers:
            keep += [
                w.norm1[0],
                w.norm1[1],
                tr(w.w_qkv),
                w.b_qkv,
                tr(w.w_out),
                w.b_out,
                w.norm2[0],
                w.norm2[1],
                tr(w.w_fc),
                w.b_fc,
                tr(w.w_proj),
                w.b_proj,
            ]
            eps += [w.norm1[2], w.norm2[2]]
        keep = [None if x is None else x.contiguous() for x in keep]
        final = self.final_norm or (None, None, 0.0)
        self._native_weights = keep + [final[0], final[1]]  # keeps the pointed-to tensors alive
        self._weight_ptrs = _pointers(keep)
        self._eps_array = (ctypes.c_double * len(eps))(*eps)
        self._final = (_address(final[0]), _address(final[1]), float(final[2]))
        self._hidden = self.layers[0].w_fc.shape[0]

    def refresh(self) -> None:
        """Re-read the trunk's weights if any parameter changed (in place or replaced) since they were read."""
        if self._weights_fingerprint() != self._fingerprint:
            self._load_weights()

    # ------------------------------------------------------------------ states
    def reset(self, rows: Tensor | None = None) -> None:
        """Start new sequences in ``rows`` (bool mask [B] or indices; None: all rows)."""
        if rows is None:
            for field in self.states:
                for x in field if isinstance(field, list) else (field,):
                    x.zero_()
            return
        rows = self._rows(rows, "reset")
        kv_rows = self._kv_rows(rows)
        s = self.states
        s.t.index_fill_(0, rows, 0.0)
        for qk, rp, z, kv in zip(s.qk, s.rp, s.z, s.kv):
            qk.index_fill_(0, rows, 0.0)
            rp.index_fill_(0, rows, 0.0)
            z.index_fill_(0, rows, 0.0)
            kv.index_fill_(0, kv_rows, 0.0)

    def _rows(self, rows, what: str) -> Tensor:
        """Distinct row indices [R] in [0, B) from indices or a bool mask [B]; ValueError otherwise.

        Two inputs for one state would race between the native kernel's threads and, on one thread, apply
        one update over the other; an index out of range would write outside the states."""
        rows = torch.as_tensor(rows, device=self.device)
        if rows.dtype == torch.bool:
            if rows.shape != (self.batch,):
                raise ValueError(
                    f"FlowDecoder.{what}: a bool mask of rows has shape {tuple(rows.shape)}, expected ({self.batch},)"
                )
            return rows.nonzero().squeeze(1)
        if rows.dim() != 1 or rows.dtype.is_floating_point or rows.dtype.is_complex:
            raise ValueError(
                f"FlowDecoder.{what}: rows must be a 1-d integer tensor or a bool mask, "
                f"got {rows.dtype} of shape {tuple(rows.shape)}"
            )
        listed = rows.tolist()
        if listed and (min(listed) < 0 or max(listed) >= self.batch):
            raise ValueError(f"FlowDecoder.{what}: rows must be in [0, {self.batch}), got {listed}")
        if len(set(listed)) != len(listed):
            raise ValueError(f"FlowDecoder.{what}: rows must be distinct, got {listed}")
        return rows

    def _kv_rows(self, rows: Tensor) -> Tensor:
        """The rows [R·H] of the heads' kv states of rows [R]."""
        H = self.heads
        return (rows[:, None] * H + torch.arange(H, device=self.device)).reshape(-1)

    @property
    def seen(self) -> Tensor:
        """Tokens each row has seen since its last reset, [B] (int64)."""
        return self.states.t.round().long()

    # ------------------------------------------------------------------ stepping
    @torch.inference_mode()
    def step(self, x: Tensor, rows: Tensor | None = None, *, last_only: bool = True) -> Tensor:
        """Feed tokens ``x`` [R, L, dim] to the sequences of ``rows`` (indices [R] or a bool mask [B]; None: all
        B rows, R = B).

        Returns the trunk's output (after the final norm) at the last token, [R, dim], or at every new
        token, [R, L, dim], with ``last_only=False``. Row r's output equals the trunk run over everything
        row r has been fed since its reset. Rows must be distinct and in [0, B) (else ValueError).
        """
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"FlowDecoder.step: x has shape {tuple(x.shape)}, expected [R, L, {self.dim}]")
        if rows is not None:
            rows = self._rows(rows, "step")
        R = self.batch if rows is None else len(rows)
        if x.shape[0] != R:
            raise ValueError(f"FlowDecoder.step: x has {x.shape[0]} rows for {R} states")
        if x.shape[1] == 0:
            raise ValueError("FlowDecoder.step: x has no tokens")
        x = x.to(self.dtype)
        if self._kernel is not None:
            return self._run_native(x, rows, last_only)
        if rows is None:
            return self._run(x, self.states, last_only)
        s, kv_rows = self.states, self._kv_rows(rows)
        sub = _States(
            s.t[rows],
            [q[rows] for q in s.qk],
            [r[rows] for r in s.rp],
            [z[rows] for z in s.z],
            [kv[kv_rows] for kv in s.kv],
        )
        out = self._run(x, sub, last_only)
        s.t.index_copy_(0, rows, sub.t)
        for full, part in zip(s.qk + s.rp + s.z, sub.qk + sub.rp + sub.z):
            full.index_copy_(0, rows, part)
        for full, part in zip(s.kv, sub.kv):
            full.index_copy_(0, kv_rows, part)
        return out

    def _run_native(self, x: Tensor, rows: Tensor | None, last_only: bool) -> Tensor:
        R, L, C = x.shape
        x = x.contiguous()
        if rows is not None:
            rows = rows.to(torch.int64).contiguous()
        out = torch.empty((R, C) if last_only else (R, L, C), dtype=self.dtype)
        if R == 0:
            return out
        code = self._kernel(
            self._weight_ptrs,
            self._eps_array,
            *self._final,
            self.states.t.data_ptr(),
            self._state_ptrs,
            None if rows is None else rows.data_ptr(),
            R,
            L,
            C,
            self.heads,
            self._hidden,
            len(self.layers),
            self.eps,
            self.clamp,
            int(self.activation is F.gelu),
            int(last_only),
            x.data_ptr(),
            out.data_ptr(),
            torch.get_num_threads() if R * L >= _PARALLEL_TOKENS else 1,
        )
        _native.check(code, "FlowDecoder.step")
        return out

    def _run(self, x: Tensor, s: _States, last_only: bool) -> Tensor:
        L = x.shape[1]
        t = s.t[:, None] + torch.arange(1, L + 1, dtype=self.dtype, device=self.device)  # (R, L) 1-based
        last = len(self.layers) - 1
        for i, w in enumerate(self.layers):
            x = self._block(x, w, t, s.qk[i], s.rp[i], s.z[i], s.kv[i], last_only and i == last)
        s.t.add_(L)
        if self.final_norm is not None:
            x = F.layer_norm(x, (self.dim,), *self.final_norm)
        return x[:, -1] if last_only else x

    def _block(self, x, w: _Layer, t, qk_sum, rp_sum, z_sum, kv, last_only: bool) -> Tensor:
        R, L, C = x.shape
        H, eps = self.heads, self.eps
        Dh = C // H
        split = (R, L, 2, H, Dh)  # [q | k] halves, heads
        qkv = F.linear(F.layer_norm(x, (C,), *w.norm1), w.w_qkv, w.b_qkv)  # (R, L, 3C)
        qk = torch.sigmoid(qkv[..., : 2 * C])  # (R, L, 2C): [q | k] after the feature map
        v = qkv[..., 2 * C :].reshape(R, L, H, Dh)
        tt = t[:, :, None, None]  # (R, L, 1, 1)

        # 1. prefix sums [Qc | Kc] and the ε-shifted dot products dI = (q+ε)·(Kc+ε), dO = (k+ε)·(Qc+ε)
        cs = qk.cumsum(1).add_(qk_sum[:, None])
        qk_sum.copy_(cs[:, -1])
        qe = qk + eps
        dIO = (qe.view(split) * cs.add_(eps).view(split).flip(2)).sum(-1)  # (R, L, 2, H): [dI, dO]
        # 2. [R | P] = prefix sums of [I q | O k]; sink t·Î = (q+ε)·(P+ε), source t·Ô = (k+ε)·(R+ε)
        rp = (qk.view(split) * (tt / dIO)[..., None]).view(R, L, 2 * C).cumsum(1).add_(rp_sum[:, None])
        rp_sum.copy_(rp[:, -1])
        flows = (qe.view(split) * rp.add_(eps).view(split).flip(2)).sum(-1).div_(tt)  # (R, L, 2, H)
        # 3. competition C = t·exp(Ô) / Σ exp(Ô), allocation σ(Î)
        e = flows[:, :, 1].clamp(-self.clamp, self.clamp).exp_()  # (R, L, H)
        Z = e.cumsum(1).add_(z_sum[:, None])
        z_sum.copy_(Z[:, -1])
        vc = v * e.mul_(t[..., None]).div_(Z)[..., None]  # C_j v_j, (R, L, H, Dh)
        scale = torch.sigmoid(flows[:, :, 0]).div_(dIO[:, :, 0])  # σ(Î) / dI, (R, L, H)

        # 4. y_t = σ(Î_t)/dI_t · q_t·(S_prev + Σ_{j≤t} k_j (C_j v_j)ᵀ), S += Σ_j k_j (C_j v_j)ᵀ
        heads = lambda a: a.transpose(1, 2).reshape(R * H, L, Dh)  # noqa: E731  (R·H, L, Dh)
        q2, k2, vc2 = heads(qk[..., :C].view(R, L, H, Dh)), heads(qk[..., C:].view(R, L, H, Dh)), heads(vc)
        if last_only:
            kv.baddbmm_(k2.transpose(1, 2), vc2)
            y = torch.bmm(q2[:, -1:], kv)  # (R·H, 1, Dh)
            scale, x = scale[:, -1:], x[:, -1:]
            L = 1
        else:
            y = torch.bmm(q2, k2.transpose(1, 2)).tril_().bmm(vc2).baddbmm_(q2, kv)
            kv.baddbmm_(k2.transpose(1, 2), vc2)
        y = y.view(R, H, L, Dh).mul_(scale.transpose(1, 2)[..., None]).transpose(1, 2).reshape(R, L, C)
        x = x + F.linear(y, w.w_out, w.b_out)
        h = self.activation(F.linear(F.layer_norm(x, (C,), *w.norm2), w.w_fc, w.b_fc))
        return x.add_(F.linear(h, w.w_proj, w.b_proj))


def _address(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _pointers(tensors) -> ctypes.Array:
    """A C array of the tensors' data pointers (NULL for None)."""
    ptrs = [_address(x) for x in tensors]
    return (ctypes.c_void_p * len(ptrs))(*ptrs)
