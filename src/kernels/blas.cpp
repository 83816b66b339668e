#include "tapestry/kernels/blas.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "tapestry/core/error.hpp"
#include "tapestry/kernels/bf16.hpp"
#include "team.hpp"

#ifdef KOKKOS_ENABLE_CUDA
#include "tapestry/kernels/cublas.hpp"
#else
#include <cblas.h>
#ifdef TAPESTRY_HAVE_ONEDNN
#include "tapestry/kernels/onednn.hpp"
// OpenBLAS's thread controls, where the BLAS is OpenBLAS (weak: other BLAS lack them).
extern "C" int openblas_get_parallel(void) __attribute__((weak));
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
#endif
#endif

namespace tapestry::kernels {

namespace {
/// Elements spanned by `count` row-major (rows, cols) matrices with leading dimension ld, `stride` apart.
std::size_t span(int rows, int cols, int ld, long stride, int count) {
  return std::size_t(count - 1) * std::size_t(stride) + std::size_t(rows - 1) * std::size_t(ld) + std::size_t(cols);
}
/// Elements spanned by `count` operands of a product, op(X) (rows, cols): X is stored (cols, rows)
/// when transposed.
std::size_t operand_span(bool trans, int rows, int cols, int ld, long stride, int count) {
  return trans ? span(cols, rows, ld, stride, count) : span(rows, cols, ld, stride, count);
}
/// A bf16 value stored as its 16 bits (cuBLAS, oneDNN) or held in an fp32 (a host sgemm).
KOKKOS_INLINE_FUNCTION void store_bf16(std::uint16_t& d, float x) { d = to_bf16(x); }
#ifndef KOKKOS_ENABLE_CUDA
KOKKOS_INLINE_FUNCTION void store_bf16(float& d, float x) { d = round_bf16(x); }
#endif

/// src[off, off + n) rounded to bf16 into buf[off, off + n); buf is allocated anew when shorter than
/// `total` (callers track which ranges hold rounded values).
template <class W>
void round_range(const ExecSpace& exec, View1<W>& buf, std::size_t total, const float* src, std::size_t off, std::size_t n) {
  if (buf.extent(0) < total) buf = View1<W>(Kokkos::view_alloc(Kokkos::WithoutInitializing, "tapestry::blas_bf16"), total);
  W* dst = buf.data();
  Kokkos::parallel_for(
      "tapestry::round_to_bf16", Kokkos::RangePolicy<ExecSpace>(exec, off, off + n), KOKKOS_LAMBDA(std::size_t i) {
        store_bf16(dst[i], src[i]);
      });
}

/// n floats at src rounded to bf16 into `buf` (grown to at least n); returns its data. (Free
/// functions: CUDA forbids device lambdas in members of Blas's private Impl.)
template <class W>
const W* round_into(const ExecSpace& exec, View1<W>& buf, const float* src, std::size_t n) {
  round_range(exec, buf, n, src, 0, n);
  return buf.data();
}

/// Each of C's M rows (ldc apart) set to the bias (N): a product with beta = 1 then adds onto it.
template <class T> void fill_rows(const ExecSpace& exec, T* C, int ldc, int M, int N, const T* bias) {
  Kokkos::parallel_for(
      "tapestry::matmul_forward_bias", detail::team_per_row(exec, M), KOKKOS_LAMBDA(const detail::Member& m) {
        T* const row = C + std::size_t(m.league_rank()) * std::size_t(ldc);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(m, N), [&](int j) { row[j] = bias[j]; });
      });
}

#ifndef KOKKOS_ENABLE_CUDA
/// `count` products C_i = alpha op(A_i) op(B_i) + beta C_i on the host CBLAS, in order.
template <class T>
void host_gemm(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, long sa, const T* B, int ldb,
               long sb, T beta, T* C, int ldc, long sc, int count) {
  const auto oa = ta ? CblasTrans : CblasNoTrans;
  const auto ob = tb ? CblasTrans : CblasNoTrans;
  for (int i = 0; i < count; ++i) {
    if constexpr (std::is_same_v<T, float>)
      cblas_sgemm(CblasRowMajor, oa, ob, M, N, K, alpha, A + i * sa, lda, B + i * sb, ldb, beta, C + i * sc, ldc);
    else
      cblas_dgemm(CblasRowMajor, oa, ob, M, N, K, alpha, A + i * sa, lda, B + i * sb, ldb, beta, C + i * sc, ldc);
  }
}
#endif

#ifndef KOKKOS_ENABLE_CUDA
/// The n bf16 words at src as floats in `buf` (grown to at least n); returns its data.
const float* expand_into(const ExecSpace& exec, View1<float>& buf, const std::uint16_t* src, std::size_t n) {
  if (buf.extent(0) < n) buf = View1<float>(Kokkos::view_alloc(Kokkos::WithoutInitializing, "tapestry::blas_bf16"), n);
  float* dst = buf.data();
  Kokkos::parallel_for(
      "tapestry::expand_bf16", Kokkos::RangePolicy<ExecSpace>(exec, 0, n),
      KOKKOS_LAMBDA(std::size_t i) { dst[i] = from_bf16(src[i]); });
  return dst;
}
#endif

/// bf16 copies of GEMM operands: A and B of one call, the declared weights (Blas::weights) and
/// the held floats (Blas::hold).
template <class W> struct Bf16Scratch {
  View1<W> a, b, w, h;
};
}  // namespace

struct Blas::Impl {
  // Cached vectors of ones (for column sums through gemv).
  mutable View1<float> ones_f;
  mutable View1<double> ones_d;
  // bf16 operands as 16-bit words (cuBLAS, oneDNN) or as fp32 values (a host sgemm).
  mutable Bf16Scratch<std::uint16_t> words;
#ifndef KOKKOS_ENABLE_CUDA
  mutable Bf16Scratch<float> floats;
#endif
  // The weights declared by Blas::weights(); `rounded`: the ranges of them whose bf16 copy is up to
  // date (sorted, disjoint, offsets from w_base).
  const float* w_base = nullptr;
  std::size_t w_n = 0;
  mutable std::vector<std::pair<std::size_t, std::size_t>> rounded;
  // The floats Blas::hold names, and whether their copy is made.
  mutable const float* h_base = nullptr;
  mutable std::size_t h_n = 0;
  mutable bool h_rounded = false;
  // Blas::given: floats whose bf16 words a caller wrote.
  struct GivenRange {
    const float* x;
    std::size_t n;
    const std::uint16_t* words;
  };
  mutable std::vector<GivenRange> given;
#ifdef KOKKOS_ENABLE_CUDA
  std::unique_ptr<cublas::Handle> handle;
  std::unique_ptr<cublas::Lt> lt;  // cuBLASLt (epilogues), made at its first use
  mutable View1<std::uintptr_t> pointers;  // attention_gemm's batch of pointers: A's, B's, then C's
#endif
#ifdef TAPESTRY_HAVE_ONEDNN
  std::unique_ptr<onednn::Gemm> dnnl;  // bf16 products on the CPU's bf16 instructions, where it has them
#endif

  /// The bf16 copy of X (spanning n floats): inside the declared weights, their copy, each operand
  /// rounded at its first use after each Blas::weights call (so a layer's weights are read when its
  /// first product runs, not before: a ZeRO-1 all-gather may still be bringing later layers');
  /// otherwise rounded now into `mine`.
  template <class W>
  const W* operand(const ExecSpace& exec, Bf16Scratch<W>& s, View1<W>& mine, const float* X, std::size_t n) const {
    for (const auto& g : given)
      if (inside(X, n, g.x, g.n)) {
        if constexpr (std::is_same_v<W, std::uint16_t>) return g.words + (X - g.x);
#ifndef KOKKOS_ENABLE_CUDA
        else return expand_into(exec, mine, g.words + (X - g.x), n);  // a host sgemm multiplies floats
#endif
      }
    if (inside(X, n, w_base, w_n)) {
      const std::size_t off = std::size_t(X - w_base);
      auto it = std::upper_bound(rounded.begin(), rounded.end(), std::make_pair(off, ~std::size_t(0)));
      const bool done = it != rounded.begin() && std::prev(it)->second >= off + n;
      if (!done) {
        round_range(exec, s.w, w_n, w_base, off, n);
        mark_rounded(off, off + n);
      }
      return s.w.data() + off;
    }
    if (inside(X, n, h_base, h_n)) {
      if (!h_rounded) round_range(exec, s.h, h_n, h_base, 0, h_n);
      h_rounded = true;
      return s.h.data() + (X - h_base);
    }
    return round_into(exec, mine, X, n);
  }

  /// Whether the n floats at x lie within the bn floats at base (none when base is null).
  static bool inside(const float* x, std::size_t n, const float* base, std::size_t bn) {
    const auto a = reinterpret_cast<std::uintptr_t>(x), lo = reinterpret_cast<std::uintptr_t>(base);
    return base != nullptr && a >= lo && a + n * sizeof(float) <= lo + bn * sizeof(float);
  }

  /// Adds [lo, hi) to `rounded`, merging neighbours that touch or overlap.
  void mark_rounded(std::size_t lo, std::size_t hi) const {
    auto it = std::upper_bound(rounded.begin(), rounded.end(), std::make_pair(lo, ~std::size_t(0)));
    rounded.insert(it, {lo, hi});
    std::vector<std::pair<std::size_t, std::size_t>> merged;
    for (const auto& r : rounded)
      if (!merged.empty() && r.first <= merged.back().second) merged.back().second = std::max(merged.back().second, r.second);
      else merged.push_back(r);
    rounded.swap(merged);
  }

  /// `v` grown to at least n.
  template <class W> W* grown(View1<W>& v, std::size_t n) const {
    if (v.extent(0) < n) v = View1<W>(Kokkos::view_alloc(Kokkos::WithoutInitializing, "tapestry::blas_bf16"), n);
    return v.data();
  }
};

Blas::Blas(const ExecSpace& exec, Precision precision)
    : exec_(exec), precision_(precision), impl_(std::make_unique<Impl>()) {
#ifdef KOKKOS_ENABLE_CUDA
  impl_->handle = std::make_unique<cublas::Handle>(exec_.cuda_stream());
  bf16_engine_ = "cuBLAS, bf16 x bf16 -> fp32";
#else
  bf16_engine_ = "the fp32 BLAS on bf16-rounded inputs (exact products, fp32 accumulation)";
#ifdef TAPESTRY_HAVE_ONEDNN
  const char* choice = std::getenv("TAPESTRY_BF16_GEMM");  // "sgemm": the rounded-fp32 path (tests)
  if (precision_ == Precision::bf16 && !(choice != nullptr && std::string(choice) == "sgemm")) {
    auto g = std::make_unique<onednn::Gemm>();
    if (g->native()) {
      bf16_engine_ = "oneDNN " + g->isa() + ", bf16 x bf16 -> fp32";
      impl_->dnnl = std::move(g);
      // OpenBLAS's own pthreads would spin against oneDNN's OpenMP threads on the same cores (a
      // 256x768 gemv took 1.5 ms instead of 0.02): the BLAS keeps the small fp32 products (attention,
      // bias gradients) on one thread. An OpenMP OpenBLAS shares oneDNN's pool and is left alone.
      if (openblas_get_parallel != nullptr && openblas_set_num_threads != nullptr && openblas_get_parallel() == 1) {
        openblas_set_num_threads(1);
        bf16_engine_ += "; OpenBLAS (pthreads) set to 1 thread";
      }
    } else {
      bf16_engine_ += "; oneDNN has no native bf16 kernel here (" + g->isa() + ")";
    }
  }
#endif
#endif
}

void Blas::weights(const float* base, std::size_t n) const {
  impl_->w_base = n > 0 ? base : nullptr;
  impl_->w_n = n;
  impl_->rounded.clear();
}

Blas::Held Blas::hold(const float* x, std::size_t n) const {
  if (impl_->h_base != nullptr) {
    if (Impl::inside(x, n, impl_->h_base, impl_->h_n)) return Held(nullptr);  // held already
    throw std::logic_error("tapestry::Blas::hold: already holding other floats");
  }
  impl_->h_base = n > 0 ? x : nullptr;
  impl_->h_n = n;
  impl_->h_rounded = false;
  return Held(this);
}

Blas::Bf16Copy Blas::Held::copy() const { return blas_ != nullptr ? blas_->bf16_buffer(true) : Bf16Copy{}; }

void Blas::Held::written() const {
  if (blas_ != nullptr) blas_->impl_->h_rounded = true;
}

Blas::Held::~Held() {
  if (blas_ == nullptr) return;  // moved from
  blas_->impl_->h_base = nullptr;
  blas_->impl_->h_n = 0;
  blas_->impl_->h_rounded = false;
}

Blas::Given Blas::given(const float* x, std::size_t n, const std::uint16_t* words) const {
  if (precision_ != Precision::bf16) throw std::logic_error("tapestry::Blas::given: fp32 products read no bf16 copy");
  const auto a = reinterpret_cast<std::uintptr_t>(x);
  for (const auto& g : impl_->given) {
    const auto b = reinterpret_cast<std::uintptr_t>(g.x);
    if (a < b + g.n * sizeof(float) && b < a + n * sizeof(float))
      throw std::logic_error("tapestry::Blas::given: these floats overlap floats given already");
  }
  impl_->given.push_back({x, n, words});
  return Given(this, x);
}

Blas::Given::~Given() {
  if (blas_ == nullptr) return;  // moved from
  auto& v = blas_->impl_->given;
  v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& g) { return g.x == x_; }), v.end());
}

Blas::Bf16Copy Blas::bf16_buffer(bool held) const {
  Bf16Copy c;
  if (precision_ != Precision::bf16) return c;
  const std::size_t n = held ? impl_->h_n : impl_->w_n;
  auto pick = [&](auto& s) { return impl_->grown(held ? s.h : s.w, n); };
#ifdef KOKKOS_ENABLE_CUDA
  c.words = pick(impl_->words);
#else
#ifdef TAPESTRY_HAVE_ONEDNN
  if (impl_->dnnl) {
    c.words = pick(impl_->words);
    return c;
  }
#endif
  c.values = pick(impl_->floats);
#endif
  return c;
}

Blas::Bf16Copy Blas::weight_copy() const {
  if (impl_->w_base == nullptr) return {};
  return bf16_buffer(false);
}

void Blas::weights_rounded(std::size_t lo, std::size_t hi) const {
  if (lo < hi && impl_->w_base != nullptr) impl_->mark_rounded(lo, std::min(hi, impl_->w_n));
}

Blas::~Blas() = default;

template <class F>
void Blas::timed(const char* what, bool ta, bool tb, int M, int N, int K, int count, F&& f) const {
  if (!timing_) {
    f();
    return;
  }
  exec_.fence();
  const auto t0 = std::chrono::steady_clock::now();
  f();
  exec_.fence();
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  seconds_ += dt;
  std::string key = std::string(what) + " " + (ta ? "T" : "N") + (tb ? "T" : "N") + " " + std::to_string(M) + "x" +
                    std::to_string(N) + "x" + std::to_string(K);
  if (count > 1) key += " x" + std::to_string(count);
  auto& t = call_times_[key];
  t.seconds += dt;
  t.calls += 1;
  t.flops += 2.0 * M * double(N) * K * count;
}

template <class T>
void Blas::gemm(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
                int ldb, T beta, T* C, int ldc) const {
  gemm_strided_batched<T>(ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

template <class T>
void Blas::gemm_bias(bool ta, bool tb, int M, int N, int K, const T* A, int lda, const T* B, int ldb, const T* bias,
                     T* C, int ldc) const {
  run_gemm<T>(precision_ == Precision::bf16, ta, tb, M, N, K, T(1), A, lda, 0, B, ldb, 0, T(0), C, ldc, 0, 1, bias);
}

template <class T>
void Blas::gemm_strided_batched(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda,
                                long sa, const T* B, int ldb, long sb, T beta, T* C, int ldc,
                                long sc, int count) const {
  run_gemm<T>(precision_ == Precision::bf16, ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, count);
}

template <class T>
void Blas::run_gemm(bool round_bf16, bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, long sa,
                    const T* B, int ldb, long sb, T beta, T* C, int ldc, long sc, int count, const T* bias) const {
  if (M == 0 || N == 0 || count == 0) return;
  const bool bf16 = std::is_same_v<T, float> && round_bf16 && K > 0;
  // A bias no epilogue adds: C's rows filled with it first, and the product adds onto them.
  auto prefill = [&] {
    fill_rows(exec_, C, ldc, M, N, bias);
    beta = T(1), bias = nullptr;
  };
#ifdef KOKKOS_ENABLE_CUDA
  const bool epilogue = bf16;  // cuBLASLt's bias, where it has an algorithm for the shape
#elif defined(TAPESTRY_HAVE_ONEDNN)
  const bool epilogue = bf16 && impl_->dnnl;  // oneDNN's bias
#else
  const bool epilogue = false;
#endif
  if (bias != nullptr && !epilogue) prefill();
  timed(std::is_same_v<T, double> ? "gemm fp64" : bf16 ? "gemm bf16" : "gemm fp32", ta, tb, M, N, K, count, [&] {
    const void* a = A;
    const void* b = B;
    if constexpr (std::is_same_v<T, float>) {
      const std::size_t na = operand_span(ta, M, K, lda, sa, count), nb = operand_span(tb, K, N, ldb, sb, count);
#ifdef KOKKOS_ENABLE_CUDA
      if (bf16) {
        a = impl_->operand(exec_, impl_->words, impl_->words.a, A, na);
        b = impl_->operand(exec_, impl_->words, impl_->words.b, B, nb);
        if (bias != nullptr) {  // cuBLASLt's bias epilogue, where it has an algorithm for the shape
          if (!impl_->lt) impl_->lt = std::make_unique<cublas::Lt>(exec_.cuda_stream());
          if (impl_->lt->gemm_bias(cublas::Inputs::bf16, ta, tb, M, N, K, a, lda, b, ldb, bias, C, ldc)) return;
        }
      }
#else
#ifdef TAPESTRY_HAVE_ONEDNN
      if (bf16 && impl_->dnnl) {
        const auto* a16 = impl_->operand(exec_, impl_->words, impl_->words.a, A, na);
        const auto* b16 = impl_->operand(exec_, impl_->words, impl_->words.b, B, nb);
        exec_.fence();
        impl_->dnnl->run(ta, tb, M, N, K, alpha, a16, lda, sa, b16, ldb, sb, beta, C, ldc, sc, count, bias);
        return;
      }
#endif
      if (bf16) {
        a = impl_->operand(exec_, impl_->floats, impl_->floats.a, A, na);
        b = impl_->operand(exec_, impl_->floats, impl_->floats.b, B, nb);
      }
#endif
    }
#ifdef KOKKOS_ENABLE_CUDA
    if (bias != nullptr) prefill();  // cuBLASLt had no algorithm
    const auto in = std::is_same_v<T, double> ? cublas::Inputs::f64 : bf16 ? cublas::Inputs::bf16 : cublas::Inputs::f32;
    cublas::gemm(*impl_->handle, in, ta, tb, M, N, K, alpha, a, lda, sa, b, ldb, sb, beta, C, ldc, sc, count);
#else
    exec_.fence();
    host_gemm<T>(ta, tb, M, N, K, alpha, static_cast<const T*>(a), lda, sa, static_cast<const T*>(b), ldb, sb, beta, C,
                 ldc, sc, count);
#endif
  });
}

#ifdef KOKKOS_ENABLE_CUDA
namespace {
/// The addresses of `outer` x `count` matrices, (o, i) at base + o*outer_stride + i*stride (bytes
/// apart: elem bytes per element), into p[0, outer*count). (A free function: CUDA forbids device
/// lambdas in members of Blas's private Impl.)
void fill_pointers(const ExecSpace& exec, std::uintptr_t* p, std::uintptr_t base, long stride, long outer_stride,
                   int count, int outer, std::size_t elem) {
  Kokkos::parallel_for(
      "tapestry::gemm_pointers", Kokkos::RangePolicy<ExecSpace>(exec, 0, std::size_t(outer) * std::size_t(count)),
      KOKKOS_LAMBDA(std::size_t e) {
        const long o = long(e / std::size_t(count)), i = long(e % std::size_t(count));
        p[e] = base + std::uintptr_t(o * outer_stride + i * stride) * elem;
      });
}
}  // namespace
#endif

#ifdef KOKKOS_ENABLE_CUDA
namespace {
/// outer x count products of `elem`-byte inputs on cuBLAS: one call through device arrays of their
/// addresses where every matrix starts on a 16-byte boundary (cuBLAS cannot see those addresses to
/// pick its kernel), otherwise one strided-batched call per outer group. timed(n, f) runs f for n
/// products.
template <class Timed>
void device_batches(const ExecSpace& exec, const cublas::Handle& h, View1<std::uintptr_t>& ptr, const Timed& timed,
                    cublas::Inputs in, std::size_t elem, bool ta, bool tb, int M, int N, int K, double alpha,
                    const void* A, int lda, long sa, const void* B, int ldb, long sb, double beta, void* C, int ldc,
                    long sc, std::size_t c_elem, int count, int outer, long oa, long ob, long oc) {
  auto on16 = [&](long elements, std::size_t bytes) { return elements * long(bytes) % 16 == 0; };
  const bool aligned = (reinterpret_cast<std::uintptr_t>(A) | reinterpret_cast<std::uintptr_t>(B) |
                        reinterpret_cast<std::uintptr_t>(C)) % 16 == 0 &&
                       on16(sa, elem) && on16(sb, elem) && on16(sc, c_elem) && on16(oa, elem) && on16(ob, elem) &&
                       on16(oc, c_elem);
  const auto* a = static_cast<const char*>(A);
  const auto* b = static_cast<const char*>(B);
  auto* c = static_cast<char*>(C);
  if (outer > 1 && aligned) {
    timed(outer * count, [&] {
      const std::size_t n = std::size_t(outer) * std::size_t(count);
      if (ptr.extent(0) < 3 * n)
        ptr = View1<std::uintptr_t>(Kokkos::view_alloc(Kokkos::WithoutInitializing, "tapestry::gemm_pointers"), 3 * n);
      fill_pointers(exec, ptr.data(), reinterpret_cast<std::uintptr_t>(A), sa, oa, count, outer, elem);
      fill_pointers(exec, ptr.data() + n, reinterpret_cast<std::uintptr_t>(B), sb, ob, count, outer, elem);
      fill_pointers(exec, ptr.data() + 2 * n, reinterpret_cast<std::uintptr_t>(C), sc, oc, count, outer, c_elem);
      cublas::gemm_batched(h, in, ta, tb, M, N, K, alpha, reinterpret_cast<const void* const*>(ptr.data()), lda,
                           reinterpret_cast<const void* const*>(ptr.data() + n), ldb, beta,
                           reinterpret_cast<void* const*>(ptr.data() + 2 * n), ldc, int(n));
    });
    return;
  }
  for (int o = 0; o < outer; ++o)
    timed(count, [&] {
      cublas::gemm(h, in, ta, tb, M, N, K, alpha, a + o * oa * long(elem), lda, sa, b + o * ob * long(elem), ldb, sb,
                   beta, c + o * oc * long(c_elem), ldc, sc, count);
    });
}
}  // namespace
#endif

template <class T>
void Blas::attention_gemm(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, long sa,
                          const T* B, int ldb, long sb, T beta, T* C, int ldc, long sc, int count, int outer,
                          long oa, long ob, long oc) const {
  if (M == 0 || N == 0 || count == 0 || outer == 0) return;
#ifdef KOKKOS_ENABLE_CUDA
  const bool tf32 = std::is_same_v<T, float> && precision_ == Precision::bf16;
  if ((outer > 1) || tf32) {
    const auto in = std::is_same_v<T, double> ? cublas::Inputs::f64 : tf32 ? cublas::Inputs::tf32 : cublas::Inputs::f32;
    const char* what = tf32 ? "gemm tf32" : std::is_same_v<T, double> ? "gemm fp64" : "gemm fp32";
    auto t = [&](int n, const auto& f) { timed(what, ta, tb, M, N, K, n, f); };
    device_batches(exec_, *impl_->handle, impl_->pointers, t, in, sizeof(T), ta, tb, M, N, K, alpha, A, lda, sa, B, ldb,
                   sb, beta, C, ldc, sc, sizeof(T), count, outer, oa, ob, oc);
    return;
  }
#endif
  for (int o = 0; o < outer; ++o)  // as written
    run_gemm<T>(false, ta, tb, M, N, K, alpha, A + o * oa, lda, sa, B + o * ob, ldb, sb, beta, C + o * oc, ldc, sc, count);
}

void Blas::attention_gemm_bf16(bool ta, bool tb, int M, int N, int K, float alpha, const std::uint16_t* A, int lda,
                               long sa, const std::uint16_t* B, int ldb, long sb, float beta, float* C, int ldc, long sc,
                               int count, int outer, long oa, long ob, long oc) const {
  if (M == 0 || N == 0 || count == 0 || outer == 0) return;
#ifdef KOKKOS_ENABLE_CUDA
  auto t = [&](int n, const auto& f) { timed("gemm bf16", ta, tb, M, N, K, n, f); };
  device_batches(exec_, *impl_->handle, impl_->pointers, t, cublas::Inputs::bf16, sizeof(std::uint16_t), ta, tb, M, N,
                 K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, sizeof(float), count, outer, oa, ob, oc);
#else
  for (int o = 0; o < outer; ++o)
    timed("gemm bf16", ta, tb, M, N, K, count, [&] {
      const std::uint16_t* a = A + o * oa;
      const std::uint16_t* b = B + o * ob;
      float* c = C + o * oc;
      exec_.fence();
#ifdef TAPESTRY_HAVE_ONEDNN
      if (impl_->dnnl) {
        impl_->dnnl->run(ta, tb, M, N, K, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, count);
        return;
      }
#endif
      const float* fa = K > 0 ? expand_into(exec_, impl_->floats.a, a, operand_span(ta, M, K, lda, sa, count)) : nullptr;
      const float* fb = K > 0 ? expand_into(exec_, impl_->floats.b, b, operand_span(tb, K, N, ldb, sb, count)) : nullptr;
      exec_.fence();
      host_gemm<float>(ta, tb, M, N, K, alpha, fa, lda, sa, fb, ldb, sb, beta, c, ldc, sc, count);
    });
#endif
}

template <class T>
void Blas::gemv_t(int M, int N, T alpha, const T* A, int lda, const T* x, T beta, T* y) const {
  if (N == 0) return;
  timed("gemv", true, false, M, N, 1, 1, [&] {
#ifdef KOKKOS_ENABLE_CUDA
    cublas::gemv_t(*impl_->handle, std::is_same_v<T, float> ? cublas::Inputs::f32 : cublas::Inputs::f64, M, N,
                   alpha, A, lda, x, beta, y);
#else
    exec_.fence();
    if constexpr (std::is_same_v<T, float>)
      cblas_sgemv(CblasRowMajor, CblasTrans, M, N, alpha, A, lda, x, 1, beta, y, 1);
    else
      cblas_dgemv(CblasRowMajor, CblasTrans, M, N, alpha, A, lda, x, 1, beta, y, 1);
#endif
  });
}

template <class T> const T* Blas::ones(int n) const {
  auto& v = [this]() -> View1<T>& {
    if constexpr (std::is_same_v<T, float>) return impl_->ones_f;
    else return impl_->ones_d;
  }();
  if (int(v.extent(0)) < n) {
    v = View1<T>(Kokkos::view_alloc(Kokkos::WithoutInitializing, "tapestry::blas_ones"), n);
    Kokkos::deep_copy(exec_, v, T(1));
  }
  return v.data();
}

#define TAPESTRY_INSTANTIATE(T)                                                                   \
  template void Blas::gemm<T>(bool, bool, int, int, int, T, const T*, int, const T*, int, T, T*, \
                              int) const;                                                        \
  template void Blas::gemv_t<T>(int, int, T, const T*, int, const T*, T, T*) const;             \
  template void Blas::gemm_strided_batched<T>(bool, bool, int, int, int, T, const T*, int, long,  \
                                              const T*, int, long, T, T*, int, long, int) const;  \
  template void Blas::attention_gemm<T>(bool, bool, int, int, int, T, const T*, int, long, const T*, \
                                        int, long, T, T*, int, long, int, int, long, long, long) const; \
  template void Blas::gemm_bias<T>(bool, bool, int, int, int, const T*, int, const T*, int, const T*, T*, int) \
      const;                                                                                     \
  template const T* Blas::ones<T>(int) const;
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
