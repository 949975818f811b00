// flowrl's native CPU kernels, built and loaded by flowrl/ops/native.py (plain C ABI through ctypes; shared
// helpers in native_common.h; the flow op's chunk kernels in flow/native_chunk.cpp):
//   flow_decode_*   the recurrent step of a causal Flow-Attention trunk (below)
//   dropout_*       dropout with a counter-based random mask (at the end of the file)
//
// flow_decode: the whole of FlowDecoder._run (every block, the final norm) in one call, for the small calls of
// a rollout or a decoding loop.
//
// The maths is that of flowrl/models/decoder.py (steps 1-4 of the causal flow scans, continued from carried
// sums); the products are small register-blocked GEMMs over the transposed weights.
//
// Layout (all row-major, contiguous, dtype T):
//   x [R, L, C] tokens; out [R, C] (last_only) or [R, L, C]
//   weights: 12 pointers per layer: norm1 w, b; w_qkv^T [C, 3C]; b_qkv [3C] or null; w_out^T [C, C];
//            b_out [C] or null; norm2 w, b; w_fc^T [C, F]; b_fc [F]; w_proj^T [F, C]; b_proj [C]
//   norm_eps: 2 per layer (norm1, norm2)
//   states: t [B]; 4 pointers per layer: qk [B, 2C] = [Σq | Σk], rp [B, 2C] = [Σ I q | Σ O k], z [B, H],
//           kv [B·H, Dh, Dh]; rows [R] (int64) picks the state row of each input row (null: row r).

#include "native_common.h"

using namespace flowrl_native;

namespace {

template <typename T>
void layer_norm(const T* x, int M, int C, const T* w, const T* b, double eps, T* y) {
  for (int m = 0; m < M; m++) {
    const T* xm = x + (size_t)m * C;
    T* ym = y + (size_t)m * C;
    const T mean = sum(xm, C) / C;
    const T var = dot(xm, xm, C, -mean);
    const T rstd = T(1) / std::sqrt(var / C + T(eps));
    for (int c = 0; c < C; c++) ym[c] = (xm[c] - mean) * rstd * w[c] + b[c];
  }
}

inline float erf_(float x) {
  const float a = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  return std::copysign(1.0f - poly * fast_exp(-a * a), x);
}
inline double erf_(double x) { return std::erf(x); }

// One head's state S [Dh, Dh] (+)= k_g (C v)_g^T for G tokens in turn, y_g += q_g S after token g's update.
// Blocks of two vectors of columns: the (C v) blocks, S's block row and the y accumulators stay in
// registers, so S is read and written once per call (plain arrays here left the accumulators on the stack,
// 4x slower).
template <typename T, int G>
void kv_tokens(T* __restrict S, int Dh, const T* const* k, const T* const* vc, const T* const* q, T* const* y) {
  using V = typename Vec<T>::V;
  constexpr int W = Vec<T>::W;
  int j0 = 0;
  for (; j0 + 2 * W <= Dh; j0 += 2 * W) {
    V v0[G], v1[G], a0[G], a1[G];
    for (int g = 0; g < G; g++) {
      v0[g] = *(const V*)(vc[g] + j0);
      v1[g] = *(const V*)(vc[g] + j0 + W);
      a0[g] = V{};
      a1[g] = V{};
    }
    for (int i = 0; i < Dh; i++) {
      V* Si = (V*)(S + (size_t)i * Dh + j0);
      V* Si1 = (V*)(S + (size_t)i * Dh + j0 + W);
      V s0 = *Si, s1 = *Si1;
      for (int g = 0; g < G; g++) {
        const T kg = k[g][i], qg = q[g][i];
        s0 += kg * v0[g];
        s1 += kg * v1[g];
        a0[g] += qg * s0;
        a1[g] += qg * s1;
      }
      *Si = s0;
      *Si1 = s1;
    }
    for (int g = 0; g < G; g++) {
      *(V*)(y[g] + j0) += a0[g];
      *(V*)(y[g] + j0 + W) += a1[g];
    }
  }
  for (; j0 < Dh; j0++)  // columns left over (Dh not a multiple of 2 vectors)
    for (int i = 0; i < Dh; i++) {
      T& sij = S[(size_t)i * Dh + j0];
      for (int g = 0; g < G; g++) {
        sij += k[g][i] * vc[g][j0];
        y[g][j0] += q[g][i] * sij;
      }
    }
}

template <typename T>
void kv_update(T* S, int Dh, int L, const T* const* k, const T* const* vc, const T* const* q, T* const* y) {
  for (int l = 0; l < L; l += 4) {
    switch (std::min(4, L - l)) {
      case 4: kv_tokens<T, 4>(S, Dh, k + l, vc + l, q + l, y + l); break;
      case 3: kv_tokens<T, 3>(S, Dh, k + l, vc + l, q + l, y + l); break;
      case 2: kv_tokens<T, 2>(S, Dh, k + l, vc + l, q + l, y + l); break;
      default: kv_tokens<T, 1>(S, Dh, k + l, vc + l, q + l, y + l); break;
    }
  }
}

template <typename T>
struct Layer {
  const T *n1w, *n1b, *wqkv, *bqkv, *wout, *bout, *n2w, *n2b, *wfc, *bfc, *wproj, *bproj;
};

template <typename T>
int run(void* const* weights, const double* norm_eps, const T* final_w, const T* final_b, double final_eps,
        T* t_state, void* const* states, const int64_t* rows, int64_t first_row, int R, int L, int C, int H, int F, int layers,
        double eps_d, double clamp_d, int gelu, int last_only, const T* x, T* out) {
  const int Dh = C / H;
  const int M = R * L;
  const T eps = T(eps_d), clamp = T(clamp_d);
  std::vector<T> xcur(x, x + (size_t)M * C), xn((size_t)M * C), qkv((size_t)M * 3 * C), y((size_t)M * C),
      hid((size_t)M * F), scale((size_t)L * H), yl((size_t)L * C);
  std::vector<const T*> qp(L), kp(L), vp(L);
  std::vector<T*> yp(L);
  int Mo = M;  // rows of the residual stream still computed (R once the last block keeps the last token)
  for (int li = 0; li < layers; li++) {
    const Layer<T>& w = reinterpret_cast<const Layer<T>*>(weights)[li];
    T* qk_state = static_cast<T*>(states[4 * li + 0]);
    T* rp_state = static_cast<T*>(states[4 * li + 1]);
    T* z_state = static_cast<T*>(states[4 * li + 2]);
    T* kv_state = static_cast<T*>(states[4 * li + 3]);
    const bool only_last = last_only && li == layers - 1;

    layer_norm<T>(xcur.data(), M, C, w.n1w, w.n1b, norm_eps[2 * li], xn.data());
    gemm<T>(xn.data(), M, C, w.wqkv, 3 * C, w.bqkv, qkv.data(), false);

    for (int r = 0; r < R; r++) {
      const int64_t s = rows ? rows[r] : first_row + r;
      T* qks = qk_state + s * 2 * C;  // [Σq | Σk]
      T* rps = rp_state + s * 2 * C;  // [Σ I q | Σ O k]
      T* zs = z_state + s * H;
      const T t0 = t_state[s];
      // 1-3: the scans, token by token; v becomes C·v in place
      for (int l = 0; l < L; l++) {
        T* q = qkv.data() + (size_t)(r * L + l) * 3 * C;
        T* k = q + C;
        T* v = q + 2 * C;
        const T tt = t0 + T(l + 1);
        for (int c = 0; c < 2 * C; c++) {
          q[c] = sigmoid(q[c]);  // q and k: the 2C values from q
          qks[c] += q[c];
        }
        for (int h = 0; h < H; h++) {
          const int o = h * Dh;
          const T dI = dot(q + o, qks + C + o, Dh, eps), dO = dot(k + o, qks + o, Dh, eps);
          const T I = tt / dI, O = tt / dO;
          for (int d = 0; d < Dh; d++) {
            rps[o + d] += I * q[o + d];
            rps[C + o + d] += O * k[o + d];
          }
          T sink = dot(q + o, rps + C + o, Dh, eps), source = dot(k + o, rps + o, Dh, eps);
          sink /= tt;
          source /= tt;
          const T e = fast_exp(std::min(std::max(source, -clamp), clamp));
          zs[h] += e;
          const T competition = tt * e / zs[h];
          for (int d = 0; d < Dh; d++) v[o + d] *= competition;
          scale[l * H + h] = sigmoid(sink) / dI;
        }
      }
      // 4: S += k (C v)^T token by token, y_l = σ(Î_l)/dI_l · q_l S (kept at the last token only in the
      // last block: its rows of y are compacted to one per input row)
      std::fill(yl.begin(), yl.end(), T(0));
      for (int h = 0; h < H; h++) {
        const int o = h * Dh;
        for (int l = 0; l < L; l++) {
          const T* q = qkv.data() + (size_t)(r * L + l) * 3 * C;
          qp[l] = q + o;
          kp[l] = q + C + o;
          vp[l] = q + 2 * C + o;
          yp[l] = yl.data() + (size_t)l * C + o;
        }
        kv_update<T>(kv_state + (s * H + h) * (size_t)Dh * Dh, Dh, L, kp.data(), vp.data(), qp.data(), yp.data());
      }
      const int l_first = only_last ? L - 1 : 0;
      T* yr = y.data() + (size_t)(only_last ? r : r * L) * C;
      for (int l = l_first; l < L; l++)
        for (int h = 0; h < H; h++) {
          const T sc = scale[l * H + h];
          const T* src = yl.data() + (size_t)l * C + h * Dh;
          T* dst = yr + (size_t)(l - l_first) * C + h * Dh;
          for (int j = 0; j < Dh; j++) dst[j] = src[j] * sc;
        }
    }
    if (only_last) {  // keep each row's last token in the residual stream
      for (int r = 0; r < R; r++)
        std::memmove(xcur.data() + (size_t)r * C, xcur.data() + (size_t)(r * L + L - 1) * C, sizeof(T) * C);
      Mo = R;
    }
    gemm<T>(y.data(), Mo, C, w.wout, C, w.bout, xcur.data(), true);
    layer_norm<T>(xcur.data(), Mo, C, w.n2w, w.n2b, norm_eps[2 * li + 1], xn.data());
    gemm<T>(xn.data(), Mo, C, w.wfc, F, w.bfc, hid.data(), false);
    T* hd = hid.data();
    const size_t nh = (size_t)Mo * F;
    if (gelu) {
      const T inv_sqrt2 = T(0.70710678118654752440);
      for (size_t i = 0; i < nh; i++) hd[i] = T(0.5) * hd[i] * (T(1) + erf_(hd[i] * inv_sqrt2));
    } else {
      for (size_t i = 0; i < nh; i++) hd[i] = std::max(hd[i], T(0));
    }
    gemm<T>(hd, Mo, F, w.wproj, C, w.bproj, xcur.data(), true);
  }
  for (int r = 0; r < R; r++) t_state[rows ? rows[r] : first_row + r] += T(L);
  if (final_w)
    layer_norm<T>(xcur.data(), Mo, C, final_w, final_b, final_eps, out);
  else
    std::memcpy(out, xcur.data(), sizeof(T) * (size_t)Mo * C);
  return 0;
}

}  // namespace

extern "C" const char* flowrl_last_error() {
  static thread_local std::string copy;
  std::lock_guard<std::mutex> lock(error_mutex);
  copy = last_error;
  return copy.c_str();
}

// Throws `kind` (1 bad_alloc, 2 runtime_error, 3 a non-std exception) in the last of `threads` chunks: the
// boundary's test.
extern "C" int flowrl_selftest_throw(int kind, int threads, int std_threads) {
  return guarded([&] {
    parallel_chunks(
        threads, threads, 1,
        [&](int64_t b, int64_t e) {
          if (e != threads) return;
          if (kind == 1) throw std::bad_alloc();
          if (kind == 2) throw std::runtime_error("selftest failure");
          throw 42;
        },
        std_threads != 0);
  });
}

// Rows are independent (distinct states, checked by the caller), so `threads` > 1 splits them into chunks
// run side by side.
#define FLOW_DECODE(NAME, T)                                                                                    \
  extern "C" int NAME(void* const* weights, const double* norm_eps, const T* final_w, const T* final_b,         \
                      double final_eps, T* t_state, void* const* states, const int64_t* rows, int R, int L,     \
                      int C, int H, int F, int layers, double eps, double clamp, int gelu, int last_only,       \
                      const T* x, T* out, int threads) {                                                        \
    const size_t out_row = (size_t)(last_only ? 1 : L) * C;                                                     \
    return guarded([&] {                                                                                        \
      parallel_chunks(R, threads, 1, [&](int64_t b, int64_t e) {                                                \
        run<T>(weights, norm_eps, final_w, final_b, final_eps, t_state, states, rows ? rows + b : nullptr, b,   \
               (int)(e - b), L, C, H, F, layers, eps, clamp, gelu, last_only, x + (size_t)b * L * C,            \
               out + b * out_row);                                                                              \
      });                                                                                                       \
    });                                                                                                         \
  }

FLOW_DECODE(flow_decode_f32, float)
FLOW_DECODE(flow_decode_f64, double)

// ---------------------------------------------------------------------------------------------- dropout
// y = x · keep · scale. Element i is kept when 16-bit word (i mod 4) of splitmix64(seed + (i/4 + 1)·γ) is at
// least `threshold` (= round(p · 65536)): a counter-based mask, so the backward pass regenerates it from the
// seed instead of storing it, and any block of elements can be computed independently.
namespace {
inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

template <typename T>
void dropout_range(const T* __restrict x, T* __restrict y, int64_t n, int64_t b0, int64_t b1, uint64_t seed,
                   uint32_t threshold, typename Io<T>::M scale) {  // blocks [b0, b1) of 4 elements
  using M = typename Io<T>::M;
  const int64_t full = std::min(b1, n / 4);  // whole blocks (a branch-free loop, vectorized)
  for (int64_t b = b0; b < full; b++) {
    const uint64_t h = splitmix64(seed + (uint64_t)(b + 1) * 0x9e3779b97f4a7c15ULL);
    for (int j = 0; j < 4; j++) {
      const uint32_t word = (uint32_t)(h >> (16 * j)) & 0xffffu;
      const M v = Io<T>::load(x[4 * b + j]) * scale;
      y[4 * b + j] = Io<T>::store(word >= threshold ? v : M(0));
    }
  }
  if (b1 * 4 > n && full < b1) {  // the last, partial block
    const int64_t b = full;
    const uint64_t h = splitmix64(seed + (uint64_t)(b + 1) * 0x9e3779b97f4a7c15ULL);
    for (int64_t i = 4 * b; i < n; i++) {
      const uint32_t word = (uint32_t)(h >> (16 * (i - 4 * b))) & 0xffffu;
      y[i] = Io<T>::store(word >= threshold ? Io<T>::load(x[i]) * scale : M(0));
    }
  }
}

template <typename T>
void dropout(const T* x, T* y, int64_t n, uint64_t seed, uint32_t threshold, double scale) {
  // one thread: splitting a DT batch's 491,520 elements across two threads was slower (memory-bound here)
  dropout_range<T>(x, y, n, 0, (n + 3) / 4, seed, threshold, typename Io<T>::M(scale));
}

}  // namespace

#define DROPOUT(NAME, T)                                                                                      \
  extern "C" int NAME(const T* x, T* y, int64_t n, uint64_t seed, uint32_t threshold, double scale) {         \
    return guarded([&] { dropout<T>(x, y, n, seed, threshold, scale); });                                     \
  }

DROPOUT(dropout_f32, float)
DROPOUT(dropout_f64, double)
DROPOUT(dropout_bf16, uint16_t)

extern "C" int flowrl_native_abi_version() { return 5; }
