#include "tapestry/kernels/cublas.hpp"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

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

namespace {
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw LibraryError(std::string("CUDA: ") + what + " failed: " + cudaGetErrorString(e));
}
/// The largest power of two (at most 256) dividing the address and the leading dimension in bytes:
/// what cuBLASLt may assume about an operand's alignment.
std::uint32_t alignment(const void* p, int ld, std::size_t elem) {
  const auto a = reinterpret_cast<std::uintptr_t>(p) | (std::uintptr_t(ld) * elem) | std::uintptr_t(256);
  return std::uint32_t(a & (~a + 1));
}
/// Sets one attribute of a cuBLASLt descriptor.
template <class F, class D, class A, class V> void set(F f, D d, A attr, const V& v, const char* what) {
  check(f(d, attr, &v, sizeof v), what);
}
}  // namespace

struct Lt::Impl {
  cublasLtHandle_t lt = nullptr;
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  static constexpr std::size_t kWorkspace = std::size_t(32) << 20;  // what NVIDIA advises for Hopper
  using Key = std::tuple<int, bool, bool, int, int, int, int, int, int, std::uint32_t, std::uint32_t, std::uint32_t,
                         std::uint32_t>;
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool found = false;
  };
  std::map<Key, Plan> plans;
  ~Impl() {
    for (auto& [k, p] : plans) {
      if (p.op) cublasLtMatmulDescDestroy(p.op);
      for (auto* l : {p.a, p.b, p.c})
        if (l) cublasLtMatrixLayoutDestroy(l);
    }
    if (workspace) cudaFree(workspace);
    if (lt) cublasLtDestroy(lt);
  }
};

Lt::Lt(void* stream) : impl_(new Impl) {
  try {
    check(cublasLtCreate(&impl_->lt), "cublasLtCreate");
    impl_->stream = static_cast<cudaStream_t>(stream);
    check_cuda(cudaMalloc(&impl_->workspace, Impl::kWorkspace), "cudaMalloc (cuBLASLt workspace)");
  } catch (...) {
    delete impl_;
    throw;
  }
}

Lt::~Lt() { delete impl_; }

bool Lt::gemm_bias(Inputs in, bool ta, bool tb, int M, int N, int K, const void* A, int lda, const void* B, int ldb,
                   const float* bias, float* C, int ldc) {
  if (in != Inputs::bf16 && in != Inputs::f32) throw Error("cuBLASLt: gemm_bias takes fp32 or bf16 inputs");
  const std::size_t elem = in == Inputs::bf16 ? 2 : 4;
  const std::uint32_t al_a = alignment(A, lda, elem), al_b = alignment(B, ldb, elem), al_c = alignment(C, ldc, 4),
                      al_bias = alignment(bias, 0, 4);
  const Impl::Key key{int(in), ta, tb, M, N, K, lda, ldb, ldc, al_a, al_b, al_c, al_bias};
  auto it = impl_->plans.find(key);
  if (it == impl_->plans.end()) {
    // Row-major C = op(A) op(B) + bias is column-major C^T (N, M) = op(B)^T op(A)^T with the bias
    // along C^T's rows, as gemm() swaps them. The first operand is B: stored (N, K) column-major
    // when not transposed, (K, N) when transposed; the second is A: (K, M), or (M, K).
    Impl::Plan p;
    const cudaDataType_t t = in == Inputs::bf16 ? CUDA_R_16BF : CUDA_R_32F;
    check(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    it = impl_->plans.emplace(key, p).first;  // owned by the cache from here
    auto& q = it->second;
    set(cublasLtMatmulDescSetAttribute, q.op, CUBLASLT_MATMUL_DESC_TRANSA, op(tb), "TRANSA");
    set(cublasLtMatmulDescSetAttribute, q.op, CUBLASLT_MATMUL_DESC_TRANSB, op(ta), "TRANSB");
    set(cublasLtMatmulDescSetAttribute, q.op, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS, "EPILOGUE");
    set(cublasLtMatmulDescSetAttribute, q.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, CUDA_R_32F, "BIAS_DATA_TYPE");
    // the heuristic reads the bias pointer's alignment from its value
    set(cublasLtMatmulDescSetAttribute, q.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(bias),
        "BIAS_POINTER");
    check(cublasLtMatrixLayoutCreate(&q.a, t, tb ? K : N, tb ? N : K, ldb), "cublasLtMatrixLayoutCreate (B)");
    check(cublasLtMatrixLayoutCreate(&q.b, t, ta ? M : K, ta ? K : M, lda), "cublasLtMatrixLayoutCreate (A)");
    check(cublasLtMatrixLayoutCreate(&q.c, CUDA_R_32F, N, M, ldc), "cublasLtMatrixLayoutCreate (C)");
    cublasLtMatmulPreference_t pref = nullptr;
    check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    const std::size_t ws = Impl::kWorkspace;
    auto pset = [&](cublasLtMatmulPreferenceAttributes_t a, const auto& v) {
      const auto st = cublasLtMatmulPreferenceSetAttribute(pref, a, &v, sizeof v);
      if (st != CUBLAS_STATUS_SUCCESS) cublasLtMatmulPreferenceDestroy(pref);
      check(st, "cublasLtMatmulPreferenceSetAttribute");
    };
    pset(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, ws);
    pset(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_b);  // cuBLASLt's A is our B
    pset(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_a);
    pset(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_c);
    pset(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_c);
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const auto st = cublasLtMatmulAlgoGetHeuristic(impl_->lt, q.op, q.a, q.b, q.c, q.c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    q.found = st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS;
    if (q.found) q.algo = result.algo;
  }
  const auto& q = it->second;
  if (!q.found) return false;
  set(cublasLtMatmulDescSetAttribute, q.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(bias),
      "BIAS_POINTER");
  const float one = 1.0f, zero = 0.0f;
  check(cublasLtMatmul(impl_->lt, q.op, &one, B, q.a, A, q.b, &zero, C, q.c, C, q.c, &q.algo, impl_->workspace,
                       Impl::kWorkspace, impl_->stream),
        "cublasLtMatmul (bias epilogue)");
  return true;
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
