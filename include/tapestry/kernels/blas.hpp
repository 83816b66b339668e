#pragma once
/// \file
/// \brief Vendor BLAS behind one object: cuBLAS when Kokkos runs on CUDA, a host CBLAS otherwise.

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "tapestry/core/config.hpp"
#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// \brief Owns the BLAS handle bound to one execution-space instance (its stream on GPUs).
/// Matrices are row-major (LayoutRight) and live in ExecSpace's memory.
///
/// With Precision::bf16 every fp32 gemm rounds its inputs to bf16 first (into scratch that
/// the object keeps): cuBLAS then multiplies bf16 x bf16 into fp32 on the tensor cores; on a host
/// CPU with bf16 instructions (AVX512-BF16, AMX) oneDNN does the same where the build found it;
/// otherwise the host BLAS multiplies the rounded values in fp32, which gives the same products (a
/// product of two bf16 values is exact in fp32) with fp32 accumulation. gemv (bias gradients)
/// stays fp32. Operands inside the weights declared with `weights()` are rounded once per
/// declaration, not in every call.
class Blas {
 public:
  explicit Blas(const ExecSpace& exec = ExecSpace(), Precision precision = Precision::fp32);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  const ExecSpace& exec() const { return exec_; }
  Precision precision() const { return precision_; }
  /// What multiplies bf16 operands here, for the log (e.g. "oneDNN brg:avx512_core_bf16, ...").
  const std::string& bf16_engine() const { return bf16_engine_; }

  /// Declares the n floats at `base` (a model's parameters) unchanged until the next call: under
  /// Precision::bf16 a gemm operand inside them reads its part of one bf16 copy of them, each
  /// operand rounded at its first gemm after this call (so a layer's weights are read when that
  /// layer runs). Call it once per optimizer step (and before an evaluation);
  /// weights(nullptr, 0) forgets them. Whoever changes the floats must call it again.
  void weights(const float* base, std::size_t n) const;

  /// \brief A bf16 copy of floats that products read: `words` (16-bit values: cuBLAS, oneDNN) or
  /// `values` (bf16 values held in floats: a host sgemm), indexed as the floats. Both null under
  /// Precision::fp32.
  struct Bf16Copy {
    std::uint16_t* words = nullptr;
    float* values = nullptr;
    bool any() const { return words != nullptr || values != nullptr; }
    /// f(words) or f(values), whichever is set; false when neither is.
    template <class F> bool visit(F&& f) const {
      if (words != nullptr) f(words);
      else if (values != nullptr) f(values);
      return any();
    }
  };
  /// The copy of the declared weights, n long, for a kernel that writes part of it itself (the
  /// fused AdamW rounds each parameter it updates); both null with no weights declared.
  Bf16Copy weight_copy() const;
  /// The caller wrote the copy of weights [lo, hi) (offsets from the declared base): products read
  /// it as it is, without rounding those weights again until the next weights() call.
  void weights_rounded(std::size_t lo, std::size_t hi) const;

  /// \brief While it lives, the products that read inside the floats hold() named share one bf16
  /// copy of them, rounded at the first such product.
  class Held {
   public:
    ~Held();
    Held(Held&& o) noexcept : blas_(o.blas_) { o.blas_ = nullptr; }
    Held(const Held&) = delete;
    Held& operator=(const Held&) = delete;
    Held& operator=(Held&&) = delete;

    /// Under Precision::bf16, the copy itself (as weight_copy(), n long), for a kernel that
    /// writes the rounded values there instead of the floats; then written(). Both null
    /// otherwise, or for a hold inside another one.
    Bf16Copy copy() const;
    /// The copy is written: products read it without rounding the floats (which need not hold
    /// the values then).
    void written() const;

   private:
    friend class Blas;
    explicit Held(const Blas* blas) : blas_(blas) {}
    const Blas* blas_;
  };
  /// Under Precision::bf16: the n floats at `x` do not change until the result is destroyed (one
  /// range at a time per Blas; holding floats inside the held ones again does nothing more).
  /// matmul_backward holds the output gradient, which its input and weight gradients' products
  /// both read: it is rounded once, not per product.
  [[nodiscard]] Held hold(const float* x, std::size_t n) const;

  /// \brief While it lives, the products that read inside the floats given() named read the
  /// words given with them instead, and round nothing.
  class Given {
   public:
    ~Given();
    Given(Given&& o) noexcept : blas_(o.blas_), x_(o.x_) { o.blas_ = nullptr; }
    Given(const Given&) = delete;
    Given& operator=(const Given&) = delete;
    Given& operator=(Given&&) = delete;

   private:
    friend class Blas;
    Given(const Blas* blas, const float* x) : blas_(blas), x_(x) {}
    const Blas* blas_;
    const float* x_;
  };
  /// Under Precision::bf16: `words` are the bf16 values of the n floats at `x`, indexed as they are
  /// (a kernel wrote them: the model's bf16 activation copies); until the result is destroyed the
  /// products read them (cuBLAS and oneDNN as they are; a host sgemm expanded to floats), and the
  /// floats need not hold anything. Several may live at once, over disjoint floats.
  /// std::logic_error under Precision::fp32 or where the floats overlap given ones.
  [[nodiscard]] Given given(const float* x, std::size_t n, const std::uint16_t* words) const;

  /// C(M,N) = alpha * op(A) * op(B) + beta * C, row-major; op(A) is (M,K), op(B) is (K,N).
  template <class T>
  void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
            const T* B, int ldb, T beta, T* C, int ldc) const;

  /// C(M,N) = op(A) op(B) + bias, row-major: the bias (N) added to every row of C. Under
  /// Precision::bf16 in the product's epilogue where the library has one (cuBLASLt's bias
  /// epilogue, oneDNN's bias), so that C is written once; otherwise (and where cuBLASLt has no
  /// algorithm for the shape) a kernel fills C's rows with the bias and the product adds onto them.
  template <class T>
  void gemm_bias(bool trans_a, bool trans_b, int M, int N, int K, const T* A, int lda, const T* B, int ldb,
                 const T* bias, T* C, int ldc) const;

  /// `count` independent gemms; matrix i of A, B, C starts at A + i*stride_a (etc.).
  template <class T>
  void gemm_strided_batched(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A,
                            int lda, long stride_a, const T* B, int ldb, long stride_b, T beta, T* C,
                            int ldc, long stride_c, int count) const;

  /// The attention's products of two activations (Q K^T, P V and their gradients), batched over
  /// heads and sequences: `outer` groups of `count` gemms, matrix (o, i) of A at A + o*outer_a +
  /// i*stride_a (etc.). On the GPU that is one cuBLAS call (a strided batch when outer is 1, else
  /// a batch of pointers built on the device, where every matrix starts on a 16-byte boundary;
  /// otherwise one strided batch per outer group); on hosts, outer strided batches in order. Under
  /// Precision::bf16 they run in TF32 on the GPU's tensor cores (fp32 inputs read as TF32, fp32
  /// accumulation) rather than rounding T x T matrices in a pass of their own; on hosts they stay
  /// fp32. (The model's bf16 attention has its kernels write bf16 operands and calls
  /// attention_gemm_bf16 instead.)
  template <class T>
  void attention_gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
                      long stride_a, const T* B, int ldb, long stride_b, T beta, T* C, int ldc, long stride_c,
                      int count, int outer = 1, long outer_a = 0, long outer_b = 0, long outer_c = 0) const;

  /// attention_gemm on operands already in bf16 (16-bit words: a kernel wrote them, e.g. the
  /// attention's softmax its probabilities), into fp32 C: bf16 x bf16 -> fp32 on cuBLAS and
  /// oneDNN whatever the precision; a host without them multiplies the words' values in fp32
  /// (exact products, fp32 accumulation) after expanding them into scratch.
  void attention_gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const std::uint16_t* A,
                           int lda, long stride_a, const std::uint16_t* B, int ldb, long stride_b, float beta, float* C,
                           int ldc, long stride_c, int count, int outer = 1, long outer_a = 0, long outer_b = 0,
                           long outer_c = 0) const;

  /// y(N) = alpha * A(M,N)^T * x(M) + beta * y, row-major A.
  template <class T>
  void gemv_t(int M, int N, T alpha, const T* A, int lda, const T* x, T beta, T* y) const;

  /// Accumulate the wall time of BLAS calls (fencing around each); for benchmarks only.
  void set_timing(bool on) { timing_ = on; }
  double seconds() const { return seconds_; }
  void reset_seconds() { seconds_ = 0; }
  /// While timing: per call shape, e.g. "gemm bf16 NT 8192x2304x768" (batched calls add " x12"),
  /// the seconds (the bf16 rounding of the inputs counts with its call), calls and FLOPs.
  struct CallTime {
    double seconds = 0, flops = 0;
    int calls = 0;
  };
  const std::map<std::string, CallTime>& call_times() const { return call_times_; }

  /// A device vector of at least `n` ones of type T (grown on demand, kept for reuse).
  template <class T> const T* ones(int n) const;

 private:
  struct Impl;
  template <class T>
  void run_gemm(bool round_bf16, bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
                long stride_a, const T* B, int ldb, long stride_b, T beta, T* C, int ldc, long stride_c,
                int count, const T* bias = nullptr) const;  // bias: gemm_bias's (count 1, alpha 1, beta 0)
  template <class F> void timed(const char* what, bool ta, bool tb, int M, int N, int K, int count, F&& f) const;
  /// The copy products read: of the declared weights, or (held) of the held floats.
  Bf16Copy bf16_buffer(bool held) const;

  ExecSpace exec_;
  Precision precision_;
  std::string bf16_engine_;
  std::unique_ptr<Impl> impl_;
  bool timing_ = false;
  mutable double seconds_ = 0;
  mutable std::map<std::string, CallTime> call_times_;
};

}  // namespace tapestry::kernels
