#include "tapestry/kernels/blas.hpp"

#include <chrono>
#include <stdexcept>
#include <string>
#include <type_traits>

#ifdef KOKKOS_ENABLE_CUDA
#include <cublas_v2.h>
#else
#include <cblas.h>
#endif

namespace tapestry::kernels {

struct Blas::Impl {
  // Cached vectors of ones (for column sums through gemv).
  mutable View1<float> ones_f;
  mutable View1<double> ones_d;
#ifdef KOKKOS_ENABLE_CUDA
  cublasHandle_t handle = nullptr;
#endif
};

#ifdef KOKKOS_ENABLE_CUDA
namespace {
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS error ") + std::to_string(int(s)) + " in " + what);
}
cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }
}  // namespace
#endif

Blas::Blas(const ExecSpace& exec) : exec_(exec), impl_(std::make_unique<Impl>()) {
#ifdef KOKKOS_ENABLE_CUDA
  check(cublasCreate(&impl_->handle), "cublasCreate");
  check(cublasSetStream(impl_->handle, exec_.cuda_stream()), "cublasSetStream");
#endif
}

Blas::~Blas() {
#ifdef KOKKOS_ENABLE_CUDA
  if (impl_ && impl_->handle) cublasDestroy(impl_->handle);
#endif
}

template <class F> void Blas::timed(F&& f) const {
  if (!timing_) {
    f();
    return;
  }
  exec_.fence();
  const auto t0 = std::chrono::steady_clock::now();
  f();
  exec_.fence();
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <class T>
void Blas::gemm(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
                int ldb, T beta, T* C, int ldc) const {
  if (M == 0 || N == 0) return;
  timed([&] {
#ifdef KOKKOS_ENABLE_CUDA
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
  if constexpr (std::is_same_v<T, float>)
    check(cublasSgemm(impl_->handle, op(tb), op(ta), N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc),
          "cublasSgemm");
  else
    check(cublasDgemm(impl_->handle, op(tb), op(ta), N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc),
          "cublasDgemm");
#else
  exec_.fence();
  const auto oa = ta ? CblasTrans : CblasNoTrans;
  const auto ob = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, oa, ob, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    cblas_dgemm(CblasRowMajor, oa, ob, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
  });
}

template <class T>
void Blas::gemm_strided_batched(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda,
                                long sa, const T* B, int ldb, long sb, T beta, T* C, int ldc,
                                long sc, int count) const {
  if (M == 0 || N == 0 || count == 0) return;
  timed([&] {
#ifdef KOKKOS_ENABLE_CUDA
    if constexpr (std::is_same_v<T, float>)
      check(cublasSgemmStridedBatched(impl_->handle, op(tb), op(ta), N, M, K, &alpha, B, ldb, sb, A,
                                      lda, sa, &beta, C, ldc, sc, count),
            "cublasSgemmStridedBatched");
    else
      check(cublasDgemmStridedBatched(impl_->handle, op(tb), op(ta), N, M, K, &alpha, B, ldb, sb, A,
                                      lda, sa, &beta, C, ldc, sc, count),
            "cublasDgemmStridedBatched");
#else
    exec_.fence();
    const auto oa = ta ? CblasTrans : CblasNoTrans;
    const auto ob = tb ? CblasTrans : CblasNoTrans;
    for (int i = 0; i < count; ++i) {
      if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, oa, ob, M, N, K, alpha, A + i * sa, lda, B + i * sb, ldb, beta,
                    C + i * sc, ldc);
      else
        cblas_dgemm(CblasRowMajor, oa, ob, M, N, K, alpha, A + i * sa, lda, B + i * sb, ldb, beta,
                    C + i * sc, ldc);
    }
#endif
  });
}

template <class T>
void Blas::gemv_t(int M, int N, T alpha, const T* A, int lda, const T* x, T beta, T* y) const {
  if (N == 0) return;
  timed([&] {
#ifdef KOKKOS_ENABLE_CUDA
  // Row-major A (M,N) is column-major A^T (N,M): y = A^T x is an untransposed column-major gemv.
  if constexpr (std::is_same_v<T, float>)
    check(cublasSgemv(impl_->handle, CUBLAS_OP_N, N, M, &alpha, A, lda, x, 1, &beta, y, 1),
          "cublasSgemv");
  else
    check(cublasDgemv(impl_->handle, CUBLAS_OP_N, N, M, &alpha, A, lda, x, 1, &beta, y, 1),
          "cublasDgemv");
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
  template const T* Blas::ones<T>(int) const;
TAPESTRY_INSTANTIATE(float)
TAPESTRY_INSTANTIATE(double)
#undef TAPESTRY_INSTANTIATE

}  // namespace tapestry::kernels
