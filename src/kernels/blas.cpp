#include "tapestry/kernels/blas.hpp"

#include <chrono>
#include <type_traits>

#include "tapestry/core/error.hpp"
#include "tapestry/kernels/bf16.hpp"

#ifdef KOKKOS_ENABLE_CUDA
#include "tapestry/kernels/cublas.hpp"
#else
#include <cblas.h>
#endif

namespace tapestry::kernels {

namespace {
#ifdef KOKKOS_ENABLE_CUDA
using Bf16Word = std::uint16_t;  // what cuBLAS reads as CUDA_R_16BF
#else
using Bf16Word = float;  // the bf16 value held in an fp32, for the host sgemm
#endif

/// Elements spanned by `count` row-major (rows, cols) matrices with leading dimension ld, `stride` apart.
std::size_t span(int rows, int cols, int ld, long stride, int count) {
  return std::size_t(count - 1) * std::size_t(stride) + std::size_t(rows - 1) * std::size_t(ld) + std::size_t(cols);
}
#ifdef KOKKOS_ENABLE_CUDA
KOKKOS_INLINE_FUNCTION void store_bf16(std::uint16_t& d, float x) { d = to_bf16(x); }
#else
KOKKOS_INLINE_FUNCTION void store_bf16(float& d, float x) { d = round_bf16(x); }
#endif

/// n floats at src rounded to bf16 into `buf` (grown to at least n); returns its data. (A free
/// function: CUDA forbids device lambdas in members of Blas's private Impl.)
const Bf16Word* round_into(const ExecSpace& exec, View1<Bf16Word>& buf, const float* src, std::size_t n) {
  if (buf.extent(0) < n) buf = View1<Bf16Word>(Kokkos::view_alloc(Kokkos::WithoutInitializing, "tapestry::blas_bf16"), n);
  Bf16Word* dst = buf.data();
  Kokkos::parallel_for(
      "tapestry::round_to_bf16", Kokkos::RangePolicy<ExecSpace>(exec, 0, n), KOKKOS_LAMBDA(std::size_t i) {
        store_bf16(dst[i], src[i]);
      });
  return dst;
}
}  // namespace

struct Blas::Impl {
  // Cached vectors of ones (for column sums through gemv).
  mutable View1<float> ones_f;
  mutable View1<double> ones_d;
  // bf16 copies of the A and B operands (grown on demand).
  mutable View1<Bf16Word> bf16_a, bf16_b;
#ifdef KOKKOS_ENABLE_CUDA
  std::unique_ptr<cublas::Handle> handle;
#endif
};

Blas::Blas(const ExecSpace& exec, Precision precision)
    : exec_(exec), precision_(precision), impl_(std::make_unique<Impl>()) {
#ifdef KOKKOS_ENABLE_CUDA
  impl_->handle = std::make_unique<cublas::Handle>(exec_.cuda_stream());
#endif
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
void Blas::gemm_strided_batched(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda,
                                long sa, const T* B, int ldb, long sb, T beta, T* C, int ldc,
                                long sc, int count) const {
  run_gemm<T>(precision_ == Precision::bf16, ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, count);
}

template <class T>
void Blas::run_gemm(bool round_bf16, bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, long sa,
                    const T* B, int ldb, long sb, T beta, T* C, int ldc, long sc, int count) const {
  if (M == 0 || N == 0 || count == 0) return;
  const bool bf16 = std::is_same_v<T, float> && round_bf16 && K > 0;
  timed(std::is_same_v<T, double> ? "gemm fp64" : bf16 ? "gemm bf16" : "gemm fp32", ta, tb, M, N, K, count, [&] {
    const void* a = A;
    const void* b = B;
    if constexpr (std::is_same_v<T, float>) {
      if (bf16) {
        // op(A) is (M,K): A is stored (K,M) when transposed; likewise B.
        a = round_into(exec_, impl_->bf16_a, A, span(ta ? K : M, ta ? M : K, lda, sa, count));
        b = round_into(exec_, impl_->bf16_b, B, span(tb ? N : K, tb ? K : N, ldb, sb, count));
      }
    }
#ifdef KOKKOS_ENABLE_CUDA
    const auto in = std::is_same_v<T, double> ? cublas::Inputs::f64 : bf16 ? cublas::Inputs::bf16 : cublas::Inputs::f32;
    cublas::gemm(*impl_->handle, in, ta, tb, M, N, K, alpha, a, lda, sa, b, ldb, sb, beta, C, ldc, sc, count);
#else
    exec_.fence();
    const auto oa = ta ? CblasTrans : CblasNoTrans;
    const auto ob = tb ? CblasTrans : CblasNoTrans;
    for (int i = 0; i < count; ++i) {
      const T* ai = static_cast<const T*>(a) + i * sa;
      const T* bi = static_cast<const T*>(b) + i * sb;
      if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, oa, ob, M, N, K, alpha, ai, lda, bi, ldb, beta, C + i * sc, ldc);
      else
        cblas_dgemm(CblasRowMajor, oa, ob, M, N, K, alpha, ai, lda, bi, ldb, beta, C + i * sc, ldc);
    }
#endif
  });
}

template <class T>
void Blas::attention_gemm(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, long sa,
                          const T* B, int ldb, long sb, T beta, T* C, int ldc, long sc, int count) const {
  if (M == 0 || N == 0 || count == 0) return;
#ifdef KOKKOS_ENABLE_CUDA
  if (std::is_same_v<T, float> && precision_ == Precision::bf16) {
    timed("gemm tf32", ta, tb, M, N, K, count, [&] {
      cublas::gemm(*impl_->handle, cublas::Inputs::tf32, ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc,
                   sc, count);
    });
    return;
  }
#endif
  run_gemm<T>(false, ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, count);  // as written
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
                                        int, long, T, T*, int, long, int) const;                  \
  template const T* Blas::ones<T>(int) const;
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
