// Causal Flow-Attention on CPU: the forward and backward of torch.ops.flowrl.flow_causal (see
// flowrl/ops/flow/native.py), one task per (batch row, head), tasks split across threads.
//
// Per task, with q = σ(Q), k = σ(K) in the compute type W (double for double inputs, else float; bfloat16
// inputs are widened on load and outputs rounded to nearest even on store):
//   1-3. the flow scans token by token (O(D) per token: running sums, ε-shifted dot products), giving per token
//        dI = (q+ε)·(Kc+ε), I, O, the conserved sink Î and source u, e = exp(clamp(u)), Z, the competition
//        C = t·e/Z, the allocation A = σ(Î), the output scale w = A/dI and v′ = C·v;
//   4.   the value products chunk by chunk: h = tril(q kᵀ) v′ + q·KV⁰ inside a chunk, KV⁰ += kᵀ v′ across
//        chunks (register-blocked products of native_common.h), y = w·h.
// The backward recomputes all of it (only q, k, v are kept by autograd), runs the value products' backward
// in reverse chunk order carrying dKV = Σ_later qᵀ·gh, then one reverse sweep over the tokens for the scans:
// every prefix sum Σ_{j≤t} x_j has the gradient Σ_{t≥j} g_t, a suffix sum carried from the end. Written out:
//   gh = w·gy, gw = gy·h; gv = C·gv′, gC = gv′·v; ge_t = gC_t·t/Z_t − Σ_{s≥t} gC_s·C_s/Z_s;
//   β = ge·e·[|u| ≤ c]/t, α = gw/dI·A(1−A)/t; GP = Σ_{s≥t} α_s(q_s+ε), GR = Σ_{s≥t} β_s(k_s+ε);
//   gO = GP·k, gI = GR·q; gdI = −(gw·w + gI·I)/dI, gdO = −gO·O/dO; GKc = Σ_{s≥t} gdI_s(q_s+ε),
//   GQc = Σ_{s≥t} gdO_s(k_s+ε); gq += α(P+ε) + I·GR + gdI(Kc+ε) + GQc; gk += β(R+ε) + O·GP + gdO(Qc+ε) + GKc.

#include "../native_common.h"

using namespace flowrl_native;

namespace {

struct Strides {  // element strides of a [B, H, L, ·] tensor whose last dimension is contiguous
  int64_t b, h, l;
};

// n rounded up to whole 64-byte vectors of W: the column count of the chunk's n×n score matrices, so that
// every product writing them runs in full vector panels (the zero columns cost less than scalar tails).
template <typename W>
int padded(int n) {
  constexpr int V = 64 / sizeof(W);
  return (n + V - 1) / V * V;
}

template <typename W>
struct Work {
  std::vector<W> q, k, v, vp, h, gh, gvp, gq, gk;  // [L, D] or [L, M]
  std::vector<W> Kc, Qc, P, R;                      // [L, D] prefix sums (backward only)
  std::vector<W> dI, dO, I, O, A, w, e, Z, C, keep, gw;  // [L]
  std::vector<W> KV, KV0, dKV, S, G, T1, T2;              // states and chunk buffers

  void size(int L, int D, int M, int Cc, int N, bool backward) {
    const size_t LD = (size_t)L * D, LM = (size_t)L * M;
    for (auto* x : {&q, &k}) x->resize(LD);
    for (auto* x : {&v, &vp, &h}) x->resize(LM);
    for (auto* x : {&dI, &dO, &I, &O, &A, &w, &e, &Z, &C, &keep, &gw}) x->resize(L);
    KV.resize((size_t)D * M);
    const int Cp = padded<W>(Cc);
    S.resize((size_t)Cc * Cp);
    const size_t wide = (size_t)std::max({D, M, Cp}) * std::max({D, M, Cp});
    T1.resize(wide);
    T2.resize(wide);
    if (backward) {
      for (auto* x : {&Kc, &Qc, &P, &R, &gq, &gk}) x->resize(LD);
      for (auto* x : {&gh, &gvp}) x->resize(LM);
      KV0.resize((size_t)N * D * M);
      dKV.resize((size_t)D * M);
      G.resize((size_t)Cc * Cp);
    }
  }
};

// dst [cols, ld] = src [rows, cols]ᵀ, src rows ls apart (0: cols); dst columns rows .. ld-1 are zeroed.
template <typename W>
void transpose(const W* src, int rows, int cols, W* dst, int ld = 0, int ls = 0) {
  ld = ld ? ld : rows;
  ls = ls ? ls : cols;
  for (int c = 0; c < cols; c++) {
    W* d = dst + (size_t)c * ld;
    for (int r = 0; r < rows; r++) d[r] = src[(size_t)r * ls + c];
    std::fill(d + rows, d + ld, W(0));
  }
}

template <typename W>
void lower(W* S, int n, int ld) {  // keep j <= i in the n rows of S (row stride ld), zero the rest of each row
  for (int i = 0; i < n; i++) std::fill(S + (size_t)i * ld + i + 1, S + (size_t)(i + 1) * ld, W(0));
}

template <typename T>
using Wof = typename Io<T>::M;

// Load task rows into the work buffers (σ for q and k) and run the scans (steps 1-3).
template <typename T>
void scans(const T* Q, const T* K, const T* V, Strides qs, Strides ks, Strides vs, int L, int D, int M,
           Wof<T> eps, Wof<T> clamp, Work<Wof<T>>& ws, bool keep_sums) {
  using W = Wof<T>;
  std::vector<W> Kc(D, W(0)), Qc(D, W(0)), P(D, W(0)), R(D, W(0));
  W Z = 0;
  for (int t = 0; t < L; t++) {
    W* q = ws.q.data() + (size_t)t * D;
    W* k = ws.k.data() + (size_t)t * D;
    W* v = ws.v.data() + (size_t)t * M;
    const T* Qt = Q + t * qs.l;
    const T* Kt = K + t * ks.l;
    const T* Vt = V + t * vs.l;
    for (int d = 0; d < D; d++) {
      q[d] = sigmoid(Io<T>::load(Qt[d]));
      k[d] = sigmoid(Io<T>::load(Kt[d]));
      Kc[d] += k[d];
      Qc[d] += q[d];
    }
    for (int m = 0; m < M; m++) v[m] = Io<T>::load(Vt[m]);
    const W tt = W(t + 1);
    const W dI = dot(q, Kc.data(), D, eps), dO = dot(k, Qc.data(), D, eps);
    const W I = tt / dI, O = tt / dO;
    for (int d = 0; d < D; d++) {
      P[d] += O * k[d];
      R[d] += I * q[d];
    }
    const W sink = dot(q, P.data(), D, eps) / tt, u = dot(k, R.data(), D, eps) / tt;
    const W e = fast_exp(std::min(std::max(u, -clamp), clamp));
    Z += e;
    const W comp = tt * e / Z, A = sigmoid(sink);
    W* vp = ws.vp.data() + (size_t)t * M;
    for (int m = 0; m < M; m++) vp[m] = comp * v[m];
    ws.dI[t] = dI, ws.dO[t] = dO, ws.I[t] = I, ws.O[t] = O, ws.A[t] = A, ws.w[t] = A / dI;
    ws.e[t] = e, ws.Z[t] = Z, ws.C[t] = comp, ws.keep[t] = W(u >= -clamp && u <= clamp);
    if (keep_sums) {
      std::memcpy(ws.Kc.data() + (size_t)t * D, Kc.data(), sizeof(W) * D);
      std::memcpy(ws.Qc.data() + (size_t)t * D, Qc.data(), sizeof(W) * D);
      std::memcpy(ws.P.data() + (size_t)t * D, P.data(), sizeof(W) * D);
      std::memcpy(ws.R.data() + (size_t)t * D, R.data(), sizeof(W) * D);
    }
  }
}

// Step 4: h = tril(q kᵀ) v′ + q·KV⁰ chunk by chunk; with keep, KV⁰ of every chunk is kept (backward).
template <typename W>
void values(Work<W>& ws, int L, int D, int M, int Cc, bool keep) {
  std::fill(ws.KV.begin(), ws.KV.end(), W(0));
  for (int r0 = 0, c = 0; r0 < L; r0 += Cc, c++) {
    const int n = std::min(Cc, L - r0), np = padded<W>(n);
    const W* q = ws.q.data() + (size_t)r0 * D;
    const W* k = ws.k.data() + (size_t)r0 * D;
    const W* vp = ws.vp.data() + (size_t)r0 * M;
    W* h = ws.h.data() + (size_t)r0 * M;
    transpose(k, n, D, ws.T1.data(), np);  // kᵀ [D, np]
    gemm<W>(q, n, D, ws.T1.data(), np, nullptr, ws.S.data(), false);  // S [n, np]
    lower(ws.S.data(), n, np);
    gemm<W>(ws.S.data(), n, n, vp, M, nullptr, h, false, np);
    if (keep) std::memcpy(ws.KV0.data() + (size_t)c * D * M, ws.KV.data(), sizeof(W) * D * M);
    if (r0 > 0) gemm<W>(q, n, D, ws.KV.data(), M, nullptr, h, true);
    if (r0 + n < L) gemm<W>(ws.T1.data(), D, n, vp, M, nullptr, ws.KV.data(), true, np);
  }
}

template <typename T>
void forward_task(const T* Q, const T* K, const T* V, Strides qs, Strides ks, Strides vs, int L, int D, int M,
                  int Cc, double eps, double clamp, T* y, Work<Wof<T>>& ws) {
  using W = Wof<T>;
  scans<T>(Q, K, V, qs, ks, vs, L, D, M, W(eps), W(clamp), ws, false);
  values<W>(ws, L, D, M, Cc, false);
  for (int t = 0; t < L; t++) {
    const W w = ws.w[t];
    const W* h = ws.h.data() + (size_t)t * M;
    for (int m = 0; m < M; m++) y[(size_t)t * M + m] = Io<T>::store(w * h[m]);
  }
}

template <typename T>
void backward_task(const T* GY, const T* Q, const T* K, const T* V, Strides gs, Strides qs, Strides ks,
                   Strides vs, int L, int D, int M, int Cc, double eps_d, double clamp_d, T* gQ, T* gK, T* gV,
                   Work<Wof<T>>& ws) {
  using W = Wof<T>;
  const W eps = W(eps_d), clamp = W(clamp_d);
  scans<T>(Q, K, V, qs, ks, vs, L, D, M, eps, clamp, ws, true);
  values<W>(ws, L, D, M, Cc, true);
  for (int t = 0; t < L; t++) {
    const T* g = GY + t * gs.l;
    W* gh = ws.gh.data() + (size_t)t * M;
    const W* h = ws.h.data() + (size_t)t * M;
    W gw = 0;
    for (int m = 0; m < M; m++) {
      const W gm = Io<T>::load(g[m]);
      gh[m] = ws.w[t] * gm;
      gw += gm * h[m];
    }
    ws.gw[t] = gw;
  }
  // value products, last chunk first; dKV = Σ over later chunks of qᵀ gh
  std::fill(ws.dKV.begin(), ws.dKV.end(), W(0));
  const int N = (L + Cc - 1) / Cc;
  for (int c = N - 1; c >= 0; c--) {
    const int r0 = c * Cc, n = std::min(Cc, L - r0), np = padded<W>(n);
    const W* q = ws.q.data() + (size_t)r0 * D;
    const W* k = ws.k.data() + (size_t)r0 * D;
    const W* vp = ws.vp.data() + (size_t)r0 * M;
    const W* gh = ws.gh.data() + (size_t)r0 * M;
    W* gvp = ws.gvp.data() + (size_t)r0 * M;
    W* gq = ws.gq.data() + (size_t)r0 * D;
    W* gk = ws.gk.data() + (size_t)r0 * D;
    W *S = ws.S.data(), *G = ws.G.data(), *T1 = ws.T1.data(), *T2 = ws.T2.data();
    transpose(k, n, D, T1, np);
    gemm<W>(q, n, D, T1, np, nullptr, S, false);  // S = q kᵀ, [n, np]
    lower(S, n, np);
    transpose(vp, n, M, T1, np);
    gemm<W>(gh, n, M, T1, np, nullptr, G, false);  // G = gh v′ᵀ, [n, np]
    lower(G, n, np);
    transpose(S, n, n, T1, n, np);
    gemm<W>(T1, n, n, gh, M, nullptr, gvp, false);  // gv′ = tril(S)ᵀ gh (+ k dKV)
    gemm<W>(G, n, n, k, D, nullptr, gq, false, np);  // gq = tril(G) k (+ gh KV⁰ᵀ)
    transpose(G, n, n, T2, n, np);
    gemm<W>(T2, n, n, q, D, nullptr, gk, false);  // gk = tril(G)ᵀ q (+ v′ dKVᵀ)
    if (c < N - 1) {
      gemm<W>(k, n, D, ws.dKV.data(), M, nullptr, gvp, true);
      transpose(ws.dKV.data(), D, M, T1);
      gemm<W>(vp, n, M, T1, D, nullptr, gk, true);
    }
    if (c > 0) {
      transpose(ws.KV0.data() + (size_t)c * D * M, D, M, T1);
      gemm<W>(gh, n, M, T1, D, nullptr, gq, true);
      transpose(q, n, D, T2);
      gemm<W>(T2, D, n, gh, M, nullptr, ws.dKV.data(), true);
    }
  }
  // the scans, last token first
  std::vector<W> GP(D, W(0)), GR(D, W(0)), GKc(D, W(0)), GQc(D, W(0));
  W gZsum = 0;
  for (int t = L - 1; t >= 0; t--) {
    const W tt = W(t + 1);
    const W* q = ws.q.data() + (size_t)t * D;
    const W* k = ws.k.data() + (size_t)t * D;
    const W* v = ws.v.data() + (size_t)t * M;
    W* gvp = ws.gvp.data() + (size_t)t * M;
    W* gq = ws.gq.data() + (size_t)t * D;
    W* gk = ws.gk.data() + (size_t)t * D;
    const W comp = ws.C[t], Z = ws.Z[t], e = ws.e[t], A = ws.A[t], dI = ws.dI[t], dO = ws.dO[t];
    const W I = ws.I[t], O = ws.O[t], w = ws.w[t], gw = ws.gw[t];
    W gcomp = 0;
    T* gv = gV + (size_t)t * M;
    for (int m = 0; m < M; m++) {
      gcomp += gvp[m] * v[m];
      gv[m] = Io<T>::store(comp * gvp[m]);
    }
    gZsum += -gcomp * comp / Z;
    const W ge = gcomp * tt / Z + gZsum;
    const W beta = ge * e * ws.keep[t] / tt;
    const W alpha = gw / dI * A * (W(1) - A) / tt;
    const W* P = ws.P.data() + (size_t)t * D;
    const W* R = ws.R.data() + (size_t)t * D;
    const W* Kc = ws.Kc.data() + (size_t)t * D;
    const W* Qc = ws.Qc.data() + (size_t)t * D;
    W *__restrict gp = GP.data(), *__restrict gr = GR.data(), *__restrict gkc = GKc.data(),
                  *__restrict gqc = GQc.data(), *__restrict ua = ws.T1.data(), *__restrict ub = ws.T2.data();
#pragma GCC ivdep
    for (int d = 0; d < D; d++) {
      gp[d] += alpha * (q[d] + eps);
      gr[d] += beta * (k[d] + eps);
    }
    const W gO = dot(gp, k, D), gI = dot(gr, q, D);
    const W gdI = -(gw * w + gI * I) / dI, gdO = -gO * O / dO;
#pragma GCC ivdep
    for (int d = 0; d < D; d++) {  // the input gradients before σ′, in the work type (vectorized)
      gkc[d] += gdI * (q[d] + eps);
      gqc[d] += gdO * (k[d] + eps);
      const W a = gq[d] + alpha * (P[d] + eps) + I * gr[d] + gdI * (Kc[d] + eps) + gqc[d];
      const W b = gk[d] + beta * (R[d] + eps) + O * gp[d] + gdO * (Qc[d] + eps) + gkc[d];
      ua[d] = a * q[d] * (W(1) - q[d]);
      ub[d] = b * k[d] * (W(1) - k[d]);
    }
    T* gQt = gQ + (size_t)t * D;
    T* gKt = gK + (size_t)t * D;
    for (int d = 0; d < D; d++) gQt[d] = Io<T>::store(ua[d]);
    for (int d = 0; d < D; d++) gKt[d] = Io<T>::store(ub[d]);
  }
}

Strides strides_of(const int64_t* s) { return Strides{s[0], s[1], s[2]}; }

template <typename T>
int causal_forward(const T* q, const T* k, const T* v, const int64_t* strides, int B, int H, int L, int D, int M,
                   int chunk, double eps, double clamp, T* y, int threads) {
  return guarded([&] {
    const Strides qs = strides_of(strides), ks = strides_of(strides + 3), vs = strides_of(strides + 6);
    const int N = (L + chunk - 1) / chunk, Cc = (L + N - 1) / N;  // equal chunks of at most `chunk`
    parallel_chunks((int64_t)B * H, threads, 1, [&](int64_t b0, int64_t b1) {
      Work<Wof<T>> ws;
      ws.size(L, D, M, Cc, N, false);
      for (int64_t task = b0; task < b1; task++) {
        const int64_t b = task / H, h = task % H;
        forward_task<T>(q + b * qs.b + h * qs.h, k + b * ks.b + h * ks.h, v + b * vs.b + h * vs.h, qs, ks, vs, L,
                        D, M, Cc, eps, clamp, y + task * (int64_t)L * M, ws);
      }
    });
  });
}

template <typename T>
int causal_backward(const T* gy, const T* q, const T* k, const T* v, const int64_t* strides, int B, int H, int L,
                    int D, int M, int chunk, double eps, double clamp, T* gq, T* gk, T* gv, int threads) {
  return guarded([&] {
    const Strides gs = strides_of(strides), qs = strides_of(strides + 3), ks = strides_of(strides + 6),
                  vs = strides_of(strides + 9);
    const int N = (L + chunk - 1) / chunk, Cc = (L + N - 1) / N;
    parallel_chunks((int64_t)B * H, threads, 1, [&](int64_t b0, int64_t b1) {
      Work<Wof<T>> ws;
      ws.size(L, D, M, Cc, N, true);
      for (int64_t task = b0; task < b1; task++) {
        const int64_t b = task / H, h = task % H;
        backward_task<T>(gy + b * gs.b + h * gs.h, q + b * qs.b + h * qs.h, k + b * ks.b + h * ks.h,
                         v + b * vs.b + h * vs.h, gs, qs, ks, vs, L, D, M, Cc, eps, clamp,
                         gq + task * (int64_t)L * D, gk + task * (int64_t)L * D, gv + task * (int64_t)L * M, ws);
      }
    });
  });
}

}  // namespace

#define FLOW_CAUSAL(SUFFIX, T)                                                                                  \
  extern "C" int flow_causal_forward_##SUFFIX(const T* q, const T* k, const T* v, const int64_t* strides,      \
                                              int B, int H, int L, int D, int M, int chunk, double eps,         \
                                              double clamp, T* y, int threads) {                                \
    return causal_forward<T>(q, k, v, strides, B, H, L, D, M, chunk, eps, clamp, y, threads);                  \
  }                                                                                                             \
  extern "C" int flow_causal_backward_##SUFFIX(const T* gy, const T* q, const T* k, const T* v,                \
                                               const int64_t* strides, int B, int H, int L, int D, int M,       \
                                               int chunk, double eps, double clamp, T* gq, T* gk, T* gv,        \
                                               int threads) {                                                   \
    return causal_backward<T>(gy, q, k, v, strides, B, H, L, D, M, chunk, eps, clamp, gq, gk, gv, threads);    \
  }

FLOW_CAUSAL(f32, float)
FLOW_CAUSAL(f64, double)
FLOW_CAUSAL(bf16, uint16_t)
