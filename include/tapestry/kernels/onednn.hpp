#pragma once
/// \file
/// \brief bf16 x bf16 -> fp32 matrix products on the host CPU through oneDNN's matmul, which uses
/// the CPU's bf16 instructions (AVX512-BF16, AMX) where it has them. Plain C++ behind the Blas
/// object (no Kokkos); built where oneDNN is found (TAPESTRY_HAVE_ONEDNN), on hosts only.

#include <cstdint>
#include <memory>
#include <string>

namespace tapestry::kernels::onednn {

/// Threads for oneDNN's OpenMP pool (the node's cores / its ranks, as for the Kokkos pool).
void set_threads(int n);

/// One matmul primitive per call shape, made on first use and kept.
class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  /// Whether oneDNN runs bf16 products natively on this CPU (not its slow reference code);
  /// `isa()` names its kernel, e.g. "brg:avx512_core_bf16".
  bool native() const { return native_; }
  const std::string& isa() const { return isa_; }

  /// C(M,N) = alpha op(A) op(B) + beta C, row-major; A and B are bf16 words, C fp32; `count`
  /// matrices `stride_*` elements apart; with `bias` (N fp32 values) also + bias(j) in each column j,
  /// added to the product in the primitive's epilogue. Throws tapestry::LibraryError naming the
  /// shape when oneDNN has no implementation for it.
  void run(bool ta, bool tb, int M, int N, int K, float alpha, const std::uint16_t* A, int lda, long stride_a,
           const std::uint16_t* B, int ldb, long stride_b, float beta, float* C, int ldc, long stride_c, int count,
           const float* bias = nullptr);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool native_ = false;
  std::string isa_;
};

}  // namespace tapestry::kernels::onednn
