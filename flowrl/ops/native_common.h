// Shared by flowrl's native CPU kernels (flowrl/ops/native.cpp, flowrl/ops/flow/native_chunk.cpp): small
// register-blocked matrix products, vector helpers, fast exp/sigmoid, bfloat16 conversions, and the C
// boundary (no exception crosses it) with the thread-chunk runner. No torch headers: the library builds in
// seconds with the machine's C++ compiler.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace flowrl_native {

// y[i, n0:n0+NB] (+)= x[i, :] @ wt[:, n0:n0+NB] + b for MB rows, accumulators in registers. Row strides:
// lx for x, lw for wt, ly for y.
template <typename T, int MB, int NB>
inline void tile(const T* __restrict x, int K, int lx, const T* __restrict wt, int lw, const T* __restrict b,
                 T* __restrict y, int ly, bool accumulate) {
  T acc[MB][NB];
  for (int i = 0; i < MB; i++)
    for (int j = 0; j < NB; j++) acc[i][j] = (accumulate ? y[(size_t)i * ly + j] : T(0)) + (b ? b[j] : T(0));
  for (int k = 0; k < K; k++) {
    const T* w = wt + (size_t)k * lw;
    for (int i = 0; i < MB; i++) {
      const T a = x[(size_t)i * lx + k];
      for (int j = 0; j < NB; j++) acc[i][j] += a * w[j];
    }
  }
  for (int i = 0; i < MB; i++)
    for (int j = 0; j < NB; j++) y[(size_t)i * ly + j] = acc[i][j];
}

// columns n0 .. n0+NB of every row, in blocks of 6 rows
template <typename T, int NB>
void panel(const T* x, int M, int K, int lx, const T* wt, int lw, const T* b, T* y, int ly, int n0,
           bool accumulate) {
  const T* bb = b ? b + n0 : nullptr;
  const T* w = wt + n0;
  int m = 0;
  for (; m + 6 <= M; m += 6)
    tile<T, 6, NB>(x + (size_t)m * lx, K, lx, w, lw, bb, y + (size_t)m * ly + n0, ly, accumulate);
  const T* xm = x + (size_t)m * lx;
  T* ym = y + (size_t)m * ly + n0;
  switch (M - m) {
    case 5: tile<T, 5, NB>(xm, K, lx, w, lw, bb, ym, ly, accumulate); break;
    case 4: tile<T, 4, NB>(xm, K, lx, w, lw, bb, ym, ly, accumulate); break;
    case 3: tile<T, 3, NB>(xm, K, lx, w, lw, bb, ym, ly, accumulate); break;
    case 2: tile<T, 2, NB>(xm, K, lx, w, lw, bb, ym, ly, accumulate); break;
    case 1: tile<T, 1, NB>(xm, K, lx, w, lw, bb, ym, ly, accumulate); break;
    default: break;
  }
}

// y [M, N] (+)= x [M, K] @ wt [K, N] + b, with row strides lx, lw, ly (0: dense, K, N and N). Columns go in
// panels of two 64-byte vectors, then one, then one 32-byte vector; a product whose N is a multiple of
// 64 / sizeof(T) never reaches the scalar tail (callers pad N to that with zero columns where it pays).
template <typename T>
void gemm(const T* x, int M, int K, const T* wt, int N, const T* b, T* y, bool accumulate, int lx = 0, int lw = 0,
          int ly = 0) {
  lx = lx ? lx : K;
  lw = lw ? lw : N;
  ly = ly ? ly : N;
  constexpr int NB = 128 / sizeof(T);
  constexpr int NV = 64 / sizeof(T);
  constexpr int NS = 32 / sizeof(T);
  int n = 0;
  for (; n + NB <= N; n += NB) panel<T, NB>(x, M, K, lx, wt, lw, b, y, ly, n, accumulate);
  for (; n + NV <= N; n += NV) panel<T, NV>(x, M, K, lx, wt, lw, b, y, ly, n, accumulate);
  for (; n + NS <= N; n += NS) panel<T, NS>(x, M, K, lx, wt, lw, b, y, ly, n, accumulate);
  for (; n < N; n++)
    for (int m = 0; m < M; m++) {
      T s = (accumulate ? y[(size_t)m * ly + n] : T(0)) + (b ? b[n] : T(0));
      for (int k = 0; k < K; k++) s += x[(size_t)m * lx + k] * wt[(size_t)k * lw + n];
      y[(size_t)m * ly + n] = s;
    }
}

// 64-byte vectors of T (GCC/Clang vector extension), loadable from any T-aligned address.
template <typename T>
struct Vec {
  typedef T V __attribute__((vector_size(64), aligned(sizeof(T))));
  static constexpr int W = 64 / sizeof(T);
};

// Σ (a + e)(b + e) over n values, in vector lanes (GCC does not vectorize a float reduction on its own: it
// would reorder the sum). e = 0: a plain dot product.
template <typename T>
inline T dot(const T* a, const T* b, int n, T e = T(0)) {
  using V = typename Vec<T>::V;
  constexpr int W = Vec<T>::W;
  V acc = V{};
  int i = 0;
  for (; i + W <= n; i += W) acc += (*(const V*)(a + i) + e) * (*(const V*)(b + i) + e);
  T s = 0;
  for (int j = 0; j < W; j++) s += acc[j];
  for (; i < n; i++) s += (a[i] + e) * (b[i] + e);
  return s;
}

template <typename T>
inline T sum(const T* a, int n) {
  using V = typename Vec<T>::V;
  constexpr int W = Vec<T>::W;
  V acc = V{};
  int i = 0;
  for (; i + W <= n; i += W) acc += *(const V*)(a + i);
  T s = 0;
  for (int j = 0; j < W; j++) s += acc[j];
  for (; i < n; i++) s += a[i];
  return s;
}

// exp and sigmoid (erf: native.cpp): std:: in double; in float, branch-free forms the compiler vectorizes (the scalar
// library calls were a third of a step). exp: Cephes' range reduction and polynomial (about 1 ulp); erf:
// Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, the size of float32's epsilon). No floor() and
// no memcpy in them: either keeps GCC from vectorizing the loop.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5·2^23 trick)
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  return p * __builtin_bit_cast(float, bits);
}
inline double fast_exp(double x) { return std::exp(x); }

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}

inline float bf16_to_float(uint16_t b) { return __builtin_bit_cast(float, (uint32_t)b << 16); }

inline uint16_t float_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  const uint32_t u = __builtin_bit_cast(uint32_t, f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

template <typename T>
struct Io {  // load as float math type, store back
  using M = T;
  static M load(T x) { return x; }
  static T store(M x) { return x; }
};
template <>
struct Io<uint16_t> {  // bfloat16 bits
  using M = float;
  static M load(uint16_t x) { return bf16_to_float(x); }
  static uint16_t store(M x) { return float_to_bf16(x); }
};

// ------------------------------------------------------------------------------------------ C boundary
// No C++ exception may cross into Python (it would terminate the process): every exported function runs its
// body in guarded(), which returns 0, or 1 for std::bad_alloc and 2 for anything else, and keeps the message
// for flowrl_last_error(). Worker chunks (parallel_chunks) catch their own exceptions and rethrow the first
// one on the calling thread after all chunks have finished.
inline std::mutex error_mutex;
inline std::string last_error;

inline void set_error(const char* what) {
  std::lock_guard<std::mutex> lock(error_mutex);
  last_error = what;
}

template <typename F>
int guarded(F f) noexcept {
  try {
    f();
    return 0;
  } catch (const std::bad_alloc&) {
    set_error("out of memory");
    return 1;
  } catch (const std::exception& e) {
    set_error(e.what());
    return 2;
  } catch (...) {
    set_error("unknown C++ exception");
    return 2;
  }
}

// f(begin, end) over [0, n) in up to `threads` contiguous chunks of at least `grain`. Built with OpenMP, the
// chunks run on libgomp's pool, which is torch's own when torch is loaded first (same soname): its workers,
// still spinning after torch's last operator, take the chunks instead of competing with new threads for
// the cores (std::threads were 1.8x slower inside a rollout for that reason). One chunk: no OpenMP call at
// all (forked evaluation workers must not touch a pool inherited from their parent). Without OpenMP (or
// with `std_threads`), chunks run on std::threads; a thread that cannot be started runs its chunk here.
template <typename F>
void parallel_chunks(int64_t n, int threads, int64_t grain, F f, bool std_threads = false) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(threads, n / std::max<int64_t>(grain, 1)));
  if (chunks <= 1) {
    f(0, n);
    return;
  }
  const int64_t size = (n + chunks - 1) / chunks;
  std::exception_ptr first;
  std::mutex first_mutex;
  auto chunk = [&](int64_t c) noexcept {
    const int64_t b = c * size, e = std::min(n, b + size);
    if (b >= e) return;
    try {
      f(b, e);
    } catch (...) {
      std::lock_guard<std::mutex> lock(first_mutex);
      if (!first) first = std::current_exception();
    }
  };
#ifdef _OPENMP
  if (!std_threads) {
#pragma omp parallel for num_threads((int)chunks) schedule(static, 1)
    for (int64_t c = 0; c < chunks; c++) chunk(c);
    if (first) std::rethrow_exception(first);
    return;
  }
#endif
  std::vector<std::thread> pool;
  int64_t started = 1;
  for (; started < chunks; started++) {
    try {
      pool.emplace_back(chunk, started);
    } catch (...) {  // no thread (resource limits): the remaining chunks run on this thread
      break;
    }
  }
  chunk(0);
  for (int64_t c = started; c < chunks; c++) chunk(c);
  for (auto& t : pool) t.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace flowrl_native
