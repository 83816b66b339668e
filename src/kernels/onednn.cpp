#include "tapestry/kernels/onednn.hpp"

#include <omp.h>

#include <dnnl.hpp>
#include <map>
#include <tuple>
#include <unordered_map>

#include "tapestry/core/error.hpp"

namespace tapestry::kernels::onednn {

void set_threads(int n) { omp_set_num_threads(n < 1 ? 1 : n); }

namespace {
using dnnl::memory;
using Key = std::tuple<bool, bool, int, int, int, int, int, int, long, long, long, int, float, float, bool>;

/// A row-major (rows, cols) operand, transposed in memory or not, `count` matrices `stride` apart.
memory::desc operand(memory::data_type t, int rows, int cols, int ld, bool trans, long stride, int count) {
  const memory::dim r = rows, c = cols, l = ld;
  if (count == 1) return memory::desc({r, c}, t, trans ? memory::dims{1, l} : memory::dims{l, 1});
  return memory::desc({count, r, c}, t, trans ? memory::dims{stride, 1, l} : memory::dims{stride, l, 1});
}
}  // namespace

struct Gemm::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  struct Entry {
    dnnl::matmul prim;
    memory a, b, c, bias;
  };
  std::map<Key, Entry> cache;

  Entry& entry(const Key& k) {
    auto it = cache.find(k);
    if (it != cache.end()) return it->second;
    const auto [ta, tb, M, N, K, lda, ldb, ldc, sa, sb, sc, count, alpha, beta, with_bias] = k;
    const auto bf = memory::data_type::bf16, f32 = memory::data_type::f32;
    const memory::desc ad = operand(bf, M, K, lda, ta, sa, count), bd = operand(bf, K, N, ldb, tb, sb, count),
                       cd = operand(f32, M, N, ldc, false, sc, count);
    dnnl::primitive_attr attr;
    if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
    if (beta != 0.0f) {
      dnnl::post_ops po;
      po.append_sum(beta);
      attr.set_post_ops(po);
    }
    try {
      // the bias: one fp32 row, broadcast over C's rows (and matrices)
      const memory::desc biasd = count == 1 ? memory::desc({1, N}, f32, memory::dims{N, 1})
                                            : memory::desc({1, 1, N}, f32, memory::dims{N, N, 1});
      const dnnl::matmul::primitive_desc pd(
          with_bias ? dnnl::matmul::desc(ad, bd, biasd, cd) : dnnl::matmul::desc(ad, bd, cd), attr, engine);
      Entry e{dnnl::matmul(pd), memory(ad, engine, nullptr), memory(bd, engine, nullptr), memory(cd, engine, nullptr),
              memory(biasd, engine, nullptr)};
      return cache.emplace(k, std::move(e)).first->second;
    } catch (const dnnl::error& err) {
      throw LibraryError("oneDNN has no bf16 matmul for " + std::to_string(M) + "x" + std::to_string(N) + "x" +
                         std::to_string(K) + " (" + err.what() + ")");
    }
  }
};

Gemm::Gemm() : impl_(std::make_unique<Impl>()) {
  // Probe the kernel oneDNN picks for a plain product: its reference code is far slower than an
  // fp32 BLAS, so a CPU without bf16 (or AVX-512) instructions keeps the rounded-fp32 path.
  const memory::desc d({16, 16}, memory::data_type::bf16, memory::dims{16, 1});
  const memory::desc c({16, 16}, memory::data_type::f32, memory::dims{16, 1});
  try {
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(d, d, c), impl_->engine);
    isa_ = pd.impl_info_str();
  } catch (const dnnl::error& err) {
    isa_ = std::string("none (") + err.what() + ")";
  }
  native_ = isa_.find("bf16") != std::string::npos || isa_.find("amx") != std::string::npos;
}

Gemm::~Gemm() = default;

void Gemm::run(bool ta, bool tb, int M, int N, int K, float alpha, const std::uint16_t* A, int lda, long stride_a,
               const std::uint16_t* B, int ldb, long stride_b, float beta, float* C, int ldc, long stride_c,
               int count, const float* bias) {
  if (count == 1) stride_a = stride_b = stride_c = 0;
  auto& e = impl_->entry(
      Key{ta, tb, M, N, K, lda, ldb, ldc, stride_a, stride_b, stride_c, count, alpha, beta, bias != nullptr});
  e.a.set_data_handle(const_cast<std::uint16_t*>(A));
  e.b.set_data_handle(const_cast<std::uint16_t*>(B));
  e.c.set_data_handle(C);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, e.a}, {DNNL_ARG_WEIGHTS, e.b}, {DNNL_ARG_DST, e.c}};
  if (bias != nullptr) {
    e.bias.set_data_handle(const_cast<float*>(bias));
    args.emplace(DNNL_ARG_BIAS, e.bias);
  }
  try {
    e.prim.execute(impl_->stream, args);
    impl_->stream.wait();
  } catch (const dnnl::error& err) {
    throw LibraryError(std::string("oneDNN matmul failed: ") + err.what());
  }
}

}  // namespace tapestry::kernels::onednn
