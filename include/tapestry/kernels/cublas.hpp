#pragma once
/// \file
/// \brief The cuBLAS calls of the GPU path, behind plain C++ (no Kokkos, no CUDA headers), so
/// that every build with a CUDA toolkit compiles and links them, GPU or not. Row-major matrices;
/// the column-major swap happens inside. Errors throw tapestry::Error naming the call.

#include <cstdint>
#include <string>

namespace tapestry::kernels::cublas {

/// cuBLAS's version as "major.minor.patch" (answers without a GPU).
std::string version();

/// A cuBLAS handle bound to `stream` (a cudaStream_t). Throws without a usable GPU.
class Handle {
 public:
  explicit Handle(void* stream);
  ~Handle();
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  void* get() const { return h_; }

 private:
  void* h_ = nullptr;
};

/// Element type of A and B: fp32, fp64, bf16 (16-bit words) with fp32 accumulation and an fp32 C,
/// or fp32 read as TF32 by the tensor cores (fp32 accumulation and C).
enum class Inputs { f32, f64, bf16, tf32 };

/// C(M,N) = alpha op(A) op(B) + beta C for `count` matrices `stride_*` elements apart (count 1:
/// one gemm). alpha/beta/C are double for Inputs::f64 and float otherwise.
void gemm(const Handle& h, Inputs in, bool ta, bool tb, int M, int N, int K, double alpha, const void* A,
          int lda, long stride_a, const void* B, int ldb, long stride_b, double beta, void* C, int ldc,
          long stride_c, int count);

/// C_i = alpha op(A_i) op(B_i) + beta C_i for i < count, the matrices' addresses in three device
/// arrays of `count` pointers each (cublasGemmBatchedEx); inputs as for gemm().
void gemm_batched(const Handle& h, Inputs in, bool ta, bool tb, int M, int N, int K, double alpha,
                  const void* const* A, int lda, const void* const* B, int ldb, double beta, void* const* C, int ldc,
                  int count);

/// \brief A cuBLASLt handle on `stream`, its workspace and one plan (layouts, epilogue, algorithm)
/// per call shape, made on first use and kept.
class Lt {
 public:
  explicit Lt(void* stream);
  ~Lt();
  Lt(const Lt&) = delete;
  Lt& operator=(const Lt&) = delete;

  /// C(M,N) = op(A) op(B) + bias, the fp32 bias (N) added to every row of C in the epilogue
  /// (CUBLASLT_EPILOGUE_BIAS); A and B bf16 words (Inputs::bf16) or fp32 (Inputs::f32), fp32
  /// accumulation and C. Returns false, having run nothing, where cuBLASLt offers no algorithm for
  /// the shape and the operands' alignment.
  bool gemm_bias(Inputs in, bool ta, bool tb, int M, int N, int K, const void* A, int lda, const void* B, int ldb,
                 const float* bias, float* C, int ldc);

 private:
  struct Impl;
  Impl* impl_;
};

/// y(N) = alpha A(M,N)^T x + beta y, row-major A, fp32 or fp64.
void gemv_t(const Handle& h, Inputs in, int M, int N, double alpha, const void* A, int lda, const void* x,
            double beta, void* y);

}  // namespace tapestry::kernels::cublas
