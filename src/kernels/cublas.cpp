#include "tapestry/kernels/cublas.hpp"

#include <cublas_v2.h>

#include "tapestry/core/error.hpp"

namespace tapestry::kernels::cublas {

namespace {
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw LibraryError(std::string("cuBLAS: ") + what + " failed: " + cublasGetStatusString(s));
}
cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }
cublasHandle_t handle(const Handle& h) { return static_cast<cublasHandle_t>(h.get()); }
}  // namespace

std::string version() {
  int major = 0, minor = 0, patch = 0;
  check(cublasGetProperty(MAJOR_VERSION, &major), "cublasGetProperty");
  check(cublasGetProperty(MINOR_VERSION, &minor), "cublasGetProperty");
  check(cublasGetProperty(PATCH_LEVEL, &patch), "cublasGetProperty");
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

Handle::Handle(void* stream) {
  cublasHandle_t h = nullptr;
  check(cublasCreate(&h), "cublasCreate");
  h_ = h;
  check(cublasSetStream(h, static_cast<cudaStream_t>(stream)), "cublasSetStream");
}

Handle::~Handle() {
  if (h_) cublasDestroy(static_cast<cublasHandle_t>(h_));
}

void gemm(const Handle& h, Inputs in, bool ta, bool tb, int M, int N, int K, double alpha, const void* A,
          int lda, long sa, const void* B, int ldb, long sb, double beta, void* C, int ldc, long sc,
          int count) {
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap A and B, M and N.
  if (in == Inputs::f64) {
    check(cublasDgemmStridedBatched(handle(h), op(tb), op(ta), N, M, K, &alpha, static_cast<const double*>(B),
                                    ldb, sb, static_cast<const double*>(A), lda, sa, &beta,
                                    static_cast<double*>(C), ldc, sc, count),
          "cublasDgemmStridedBatched");
    return;
  }
  const float a = float(alpha), b = float(beta);
  if (in == Inputs::tf32) {
    check(cublasGemmStridedBatchedEx(handle(h), op(tb), op(ta), N, M, K, &a, B, CUDA_R_32F, ldb, sb, A, CUDA_R_32F,
                                     lda, sa, &b, C, CUDA_R_32F, ldc, sc, count, CUBLAS_COMPUTE_32F_FAST_TF32,
                                     CUBLAS_GEMM_DEFAULT),
          "cublasGemmStridedBatchedEx (tf32)");
    return;
  }
  if (in == Inputs::f32) {
    check(cublasSgemmStridedBatched(handle(h), op(tb), op(ta), N, M, K, &a, static_cast<const float*>(B), ldb,
                                    sb, static_cast<const float*>(A), lda, sa, &b, static_cast<float*>(C),
                                    ldc, sc, count),
          "cublasSgemmStridedBatched");
    return;
  }
  // bf16 inputs on the tensor cores, fp32 accumulation and output.
  check(cublasGemmStridedBatchedEx(handle(h), op(tb), op(ta), N, M, K, &a, B, CUDA_R_16BF, ldb, sb, A,
                                   CUDA_R_16BF, lda, sa, &b, C, CUDA_R_32F, ldc, sc, count,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmStridedBatchedEx (bf16 x bf16 -> fp32)");
}

void gemm_batched(const Handle& h, Inputs in, bool ta, bool tb, int M, int N, int K, double alpha,
                  const void* const* A, int lda, const void* const* B, int ldb, double beta, void* const* C, int ldc,
                  int count) {
  // Row-major as in gemm(): the column-major call multiplies op(B)^T op(A)^T.
  const float a = float(alpha), b = float(beta);
  const bool f64 = in == Inputs::f64;
  const cudaDataType_t type = f64 ? CUDA_R_64F : CUDA_R_32F;  // C's, and A's and B's but for bf16
  const cudaDataType_t in_type = in == Inputs::bf16 ? CUDA_R_16BF : type;
  const cublasComputeType_t compute =
      f64 ? CUBLAS_COMPUTE_64F : in == Inputs::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  check(cublasGemmBatchedEx(handle(h), op(tb), op(ta), N, M, K, f64 ? static_cast<const void*>(&alpha) : &a, B,
                            in_type, ldb, A, in_type, lda, f64 ? static_cast<const void*>(&beta) : &b, C, type, ldc,
                            count, compute, CUBLAS_GEMM_DEFAULT),
        "cublasGemmBatchedEx");
}

void gemv_t(const Handle& h, Inputs in, int M, int N, double alpha, const void* A, int lda, const void* x,
            double beta, void* y) {
  // Row-major A (M,N) is column-major A^T (N,M): y = A^T x is an untransposed column-major gemv.
  if (in == Inputs::f64) {
    check(cublasDgemv(handle(h), CUBLAS_OP_N, N, M, &alpha, static_cast<const double*>(A), lda,
                      static_cast<const double*>(x), 1, &beta, static_cast<double*>(y), 1),
          "cublasDgemv");
    return;
  }
  if (in != Inputs::f32) throw Error("cuBLAS: gemv takes fp32 or fp64 only");
  const float a = float(alpha), b = float(beta);
  check(cublasSgemv(handle(h), CUBLAS_OP_N, N, M, &a, static_cast<const float*>(A), lda,
                    static_cast<const float*>(x), 1, &b, static_cast<float*>(y), 1),
        "cublasSgemv");
}

}  // namespace tapestry::kernels::cublas
