// Every kernel: forward against a naive reference, backward against central finite differences,
// both in double precision, on odd sizes; and float against double.
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <tuple>

#include "helpers.hpp"
#include "tapestry/kernels/activation.hpp"
#include "tapestry/kernels/attention.hpp"
#include "tapestry/kernels/attention_tiled.hpp"
#include "tapestry/kernels/bf16.hpp"
#include "tapestry/kernels/blas.hpp"
#include "tapestry/kernels/compress.hpp"
#ifdef TAPESTRY_HAVE_CUBLAS
#include "tapestry/kernels/cublas.hpp"
#endif
#include "tapestry/kernels/crossentropy.hpp"
#include "tapestry/kernels/elementwise.hpp"
#include "tapestry/kernels/embedding.hpp"
#include "tapestry/kernels/layernorm.hpp"
#include "tapestry/kernels/math.hpp"
#include "tapestry/kernels/matmul.hpp"
#include "tapestry/kernels/optim.hpp"
#include "tapestry/kernels/rmsnorm.hpp"
#include "tapestry/kernels/rope.hpp"

using namespace tapestry;
using namespace tapestry::kernels;
using namespace tapestry::test;
using V = std::vector<double>;

// ---------------------------------------------------------------- vexp
TEST_CASE("vexp: the vectorizable exp of the element-wise kernels, against libm", "[kernels][math]") {
  // Within 2 ulp of the correctly rounded e^x over [-87, 88]: every 997th float bit pattern there.
  double worst = 0;
  int checked = 0;
  for (float x = -87.0f; x <= 88.0f; x = std::nextafter(x, 100.0f)) {
    const double want = std::exp(double(x)), got = math::vexp(x);
    const double ulp = std::nextafter(float(want), HUGE_VALF) - float(want);
    worst = std::max(worst, std::abs(got - want) / ulp);
    ++checked;
    for (int skip = 0; skip < 996 && x <= 88.0f; ++skip) x = std::nextafter(x, 100.0f);
  }
  std::printf("vexp: %d values in [-87, 88], worst %.2f ulp\n", checked, worst);
  REQUIRE(checked > 1000000);
  REQUIRE(worst <= 2.0);
  REQUIRE(math::vexp(0.0f) == 1.0f);
  REQUIRE(math::vexp(-HUGE_VALF) == 0.0f);  // masked logits: e^-inf is exactly 0
  REQUIRE(math::vexp(-1e30f) == 0.0f);
  REQUIRE(math::vexp(-87.5f) == 0.0f);
  REQUIRE(math::vexp(88.5f) == HUGE_VALF);
  REQUIRE(math::vexp(HUGE_VALF) == HUGE_VALF);
  REQUIRE(std::isnan(math::vexp(std::nanf(""))));
  REQUIRE(math::vexp(1.0) == std::exp(1.0));  // double: libm's
}

// ---------------------------------------------------------------- bf16
TEST_CASE("bf16 rounds to nearest even and keeps inf and NaN", "[kernels][bf16]") {
  REQUIRE(to_bf16(1.0f) == 0x3f80);
  REQUIRE(to_bf16(-2.0f) == 0xc000);
  REQUIRE(round_bf16(1.0f + 0x1p-8f) == 1.0f);                   // halfway: to the even 1.0
  REQUIRE(round_bf16(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f);     // halfway: to the even 1 + 2^-6
  REQUIRE(round_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 1.0f + 0x1p-7f);  // above halfway: up
  REQUIRE(round_bf16(3.4e38f) == std::numeric_limits<float>::infinity());  // overflow rounds to inf
  REQUIRE(round_bf16(std::numeric_limits<float>::infinity()) == std::numeric_limits<float>::infinity());
  REQUIRE(std::isnan(round_bf16(std::numeric_limits<float>::quiet_NaN())));
  for (float x : {0.1f, -7.3e-5f, 12345.678f}) REQUIRE(std::abs(round_bf16(x) - x) <= std::abs(x) * 0x1p-9f);
}

namespace {
// Row-major op(A)(M,K) op(B)(K,N) of `count` matrices, in double, inputs optionally rounded to bf16 first.
V ref_gemm(const V& A, const V& B, bool ta, bool tb, int M, int N, int K, long sa, long sb, int count, bool bf16) {
  auto r = [&](double x) { return bf16 ? double(round_bf16(float(x))) : double(float(x)); };
  V C(std::size_t(count) * M * N);
  for (int i = 0; i < count; ++i)
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        double s = 0;
        for (int k = 0; k < K; ++k)
          s += r(A[std::size_t(i * sa + (ta ? k * M + m : m * K + k))]) * r(B[std::size_t(i * sb + (tb ? n * K + k : k * N + n))]);
        C[std::size_t((i * M + m) * N + n)] = s;
      }
  return C;
}
/// The largest |x - y| over two vectors of one size (NaN counts as infinitely far).
double max_abs_diff(const V& x, const V& y) {
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double d = std::abs(x[i] - y[i]);
    m = std::isfinite(d) ? std::max(m, d) : std::numeric_limits<double>::infinity();
  }
  return m;
}

/// Random operands of `count` products op(A) (M,K) x op(B) (K,N): on the host (A, B) and in views
/// (a, b), with room for C in c.
struct GemmCase {
  int M, N, K, count;
  long sa, sb;
  V A, B;
  View1<float> a, b, c;
  GemmCase(int M_, int N_, int K_, int count_, std::uint64_t seed)
      : M(M_), N(N_), K(K_), count(count_), sa(long(M_) * K_), sb(long(K_) * N_),
        A(randn(std::size_t(sa) * count_, seed)), B(randn(std::size_t(sb) * count_, seed + 1)),
        a("a", A.size()), b("b", B.size()), c("c", std::size_t(count_) * M_ * N_) {
    from_vec(a, A), from_vec(b, B);
  }
  /// C of all `count` products through `blas`, alpha 1, beta 0.
  V run(const Blas& blas, bool ta, bool tb) {
    blas.gemm_strided_batched<float>(ta, tb, M, N, K, 1.0f, a.data(), ta ? M : K, sa, b.data(), tb ? K : N, sb, 0.0f,
                                     c.data(), N, long(M) * N, count);
    return to_vec(c);
  }
};
}  // namespace

TEST_CASE("bf16 gemm: bf16-rounded inputs, fp32 accumulation; fp32 gemm is not rounded", "[kernels][bf16]") {
  GemmCase g(19, 23, 301, 3, 91);
  const int M = g.M, N = g.N, K = g.K, count = g.count;
  const long sa = g.sa, sb = g.sb;
  const V &A = g.A, &B = g.B;
  View1<float> &a = g.a, &b = g.b, &c = g.c;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      CAPTURE(ta, tb);
      const V exact = ref_gemm(A, B, ta, tb, M, N, K, sa, sb, count, false);
      const V rounded = ref_gemm(A, B, ta, tb, M, N, K, sa, sb, count, true);
      auto run = [&](Precision p) { return g.run(Blas(ExecSpace(), p), ta, tb); };
      // fp32 accumulation of K products of size ~1: error ~ sqrt(K) * 2^-24 * sqrt(K); bf16 input
      // rounding moves each product by ~2^-8 relative: ~ sqrt(K) * 2^-8 in total.
      const V f32 = run(Precision::fp32), bf = run(Precision::bf16);
      REQUIRE(max_abs_diff(f32, exact) < 1e-3);
      REQUIRE(max_abs_diff(bf, rounded) < 1e-3);  // what the bf16 path computes
      REQUIRE(max_abs_diff(bf, exact) > 1e-2);    // and it is not the fp32 product
      REQUIRE(max_abs_diff(bf, exact) < 1.0);
    }
  // The attention's activation x activation products are not rounded to bf16: fp32 on hosts, TF32
  // (10-bit mantissa, about 8x finer than bf16) on CUDA.
  {
    Blas bf16(ExecSpace(), Precision::bf16);
    bf16.attention_gemm<float>(false, false, M, N, K, 1.0f, a.data(), K, sa, b.data(), N, sb, 0.0f, c.data(), N,
                               long(M) * N, count);
    const V got = to_vec(c), exact = ref_gemm(A, B, false, false, M, N, K, sa, sb, count, false);
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - exact[i]));
#ifdef KOKKOS_ENABLE_CUDA
    REQUIRE(worst < 0.1);
#else
    REQUIRE(worst < 1e-3);
#endif
  }
  // fp64 gemms are never rounded, whatever the precision.
  View1<double> da("da", A.size()), db("db", B.size()), dc("dc", std::size_t(M) * N);
  from_vec(da, A), from_vec(db, B);
  Blas bf16(ExecSpace(), Precision::bf16);
  bf16.gemm<double>(false, false, M, N, K, 1.0, da.data(), K, db.data(), N, 0.0, dc.data(), N);
  const V exact = ref_gemm(A, B, false, false, M, N, K, 0, 0, 1, false);
  REQUIRE(max_rel_err(to_vec(dc), V(exact.begin(), exact.begin() + M * N)) < 1e-5);  // ref rounds inputs to float
}

TEST_CASE("bf16 gemm: alpha and beta, and declared weights rounded once", "[kernels][bf16]") {
  const int M = 17, N = 29, K = 200;
  const V A = randn(std::size_t(3) * M * K, 93), B = randn(std::size_t(K) * N, 94), C0 = randn(std::size_t(M) * N, 95);
  View1<float> a("a", A.size()), b("b", B.size()), c("c", C0.size());
  // On the build's engine (oneDNN's 16-bit words where the CPU has bf16), and on the rounded-float
  // sgemm path (TAPESTRY_BF16_GEMM=sgemm), whose copies hold floats.
  for (const std::string engine : {"auto", "sgemm"}) {
    CAPTURE(engine);
    from_vec(a, A), from_vec(b, B);
    const auto owned = blas_on(engine);
    const Blas& blas = *owned;
    std::printf("bf16 products here: %s\n", blas.bf16_engine().c_str());
    // C = 0.5 op(A) op(B) + 1.0 C, with the middle of A's three matrices as A
    const long off = long(M) * K;
    const V mid(A.begin() + off, A.begin() + 2 * off);
    auto product = [&](float alpha, float beta, const V& Am) {
      from_vec(c, C0);
      blas.gemm<float>(false, false, M, N, K, alpha, a.data() + off, K, b.data(), N, beta, c.data(), N);
      const V got = to_vec(c), p = ref_gemm(Am, B, false, false, M, N, K, 0, 0, 1, true);
      V want(p.size());
      for (std::size_t i = 0; i < p.size(); ++i) want[i] = alpha * p[i] + beta * C0[i];
      return max_abs_diff(got, want);
    };
    REQUIRE(product(0.5f, 1.0f, mid) < 1e-3);
    REQUIRE(product(-2.0f, 0.25f, mid) < 2e-3);
    REQUIRE(product(1.0f, 0.0f, mid) < 1e-3);
    // Declared weights: rounded at the first product after the declaration, then read from that copy
    // until the next one, so a change in between is not seen (which shows the copy is used).
    blas.weights(a.data(), A.size());
    REQUIRE(product(1.0f, 0.0f, mid) < 1e-3);
    V doubled = A;
    for (auto& x : doubled) x *= 2;
    from_vec(a, doubled);
    const V mid2(doubled.begin() + off, doubled.begin() + 2 * off);
    REQUIRE(product(1.0f, 0.0f, mid) < 1e-3);   // the copy made before the change
    REQUIRE(product(1.0f, 0.0f, mid2) > 1.0);
    blas.weights(a.data(), A.size());  // declared again: the new values
    REQUIRE(product(1.0f, 0.0f, mid2) < 2e-3);
    blas.weights(nullptr, 0);  // forgotten: every call rounds its own operands
    from_vec(a, A);
    REQUIRE(product(1.0f, 0.0f, mid) < 1e-3);
    {  // held floats: rounded at the first product while held, then read from that copy
      const auto held = blas.hold(a.data(), A.size());
      REQUIRE(product(1.0f, 0.0f, mid) < 1e-3);
      from_vec(a, doubled);
      REQUIRE(product(1.0f, 0.0f, mid) < 1e-3);  // the copy made before the change
      REQUIRE_THROWS_AS(blas.hold(b.data(), B.size()), std::logic_error);  // one at a time
    }
    REQUIRE(product(1.0f, 0.0f, mid2) < 2e-3);  // released: rounded per call again
    {  // held, but changed before the first product: the copy is made then
      const auto held = blas.hold(a.data(), A.size());
      from_vec(a, A);
      REQUIRE(product(1.0f, 0.0f, mid) < 1e-3);
      const auto inner = blas.hold(a.data() + off, std::size_t(off));  // inside: nothing more
      REQUIRE(inner.copy().words == nullptr);
      REQUIRE(inner.copy().values == nullptr);
    }
    {  // a copy written by the caller (as the fused cross-entropy does) is read as written
      const auto held = blas.hold(a.data(), A.size());
      const auto copy = held.copy();
      REQUIRE((copy.words == nullptr) != (copy.values == nullptr));
      if (copy.words != nullptr) {
        std::vector<std::uint16_t> w(A.size());
        for (std::size_t i = 0; i < w.size(); ++i) w[i] = to_bf16(float(doubled[i]));
        Kokkos::deep_copy(Kokkos::View<std::uint16_t*, Layout, MemSpace, Kokkos::MemoryUnmanaged>(copy.words, w.size()),
                          Kokkos::View<std::uint16_t*, Layout, HostSpace, Kokkos::MemoryUnmanaged>(w.data(), w.size()));
      } else {
        std::vector<float> w(A.size());
        for (std::size_t i = 0; i < w.size(); ++i) w[i] = round_bf16(float(doubled[i]));
        Kokkos::deep_copy(Kokkos::View<float*, Layout, MemSpace, Kokkos::MemoryUnmanaged>(copy.values, w.size()),
                          Kokkos::View<float*, Layout, HostSpace, Kokkos::MemoryUnmanaged>(w.data(), w.size()));
      }
      held.written();
      REQUIRE(product(1.0f, 0.0f, mid2) < 2e-3);  // a still holds A
    }
    REQUIRE(product(1.0f, 0.0f, mid) < 1e-3);
  }
}

TEST_CASE("bf16 gemm: operands given as bf16 words are read as given", "[kernels][bf16]") {
  const int M = 13, N = 21, K = 96;
  const V A = randn(std::size_t(M) * K, 96), B = randn(std::size_t(K) * N, 97);
  View1<float> a("a", A.size()), b("b", B.size()), c("c", std::size_t(M) * N);
  using Host16 = Kokkos::View<std::uint16_t*, Layout, HostSpace, Kokkos::MemoryUnmanaged>;
  auto words = [](const V& x, double scale) {  // x * scale rounded, on the device
    std::vector<std::uint16_t> w(x.size());
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = to_bf16(float(x[i] * scale));
    Kokkos::View<std::uint16_t*, Layout, MemSpace> d("words", w.size());
    Kokkos::deep_copy(d, Host16(w.data(), w.size()));
    return d;
  };
  const auto a2 = words(A, 2), b3 = words(B, 3);
  Blas fp32(ExecSpace(), Precision::fp32);
  REQUIRE_THROWS_AS(fp32.given(a.data(), A.size(), a2.data()), std::logic_error);  // fp32 products read floats
  // On the build's engine (oneDNN reads the words) and on the rounded-fp32 sgemm (expands them).
  for (const std::string engine : {"auto", "sgemm"}) {
    CAPTURE(engine);
    const auto owned = blas_on(engine);
    const Blas& blas = *owned;
    auto product = [&](int skip = 0) {  // A's rows [skip, M) times B
      blas.gemm<float>(false, false, M - skip, N, K, 1.0f, a.data() + skip * K, K, b.data(), N, 0.0f, c.data(), N);
      const V r = to_vec(c);
      return V(r.begin(), r.begin() + (M - skip) * N);
    };
    // Reference: the Blas rounding 2A and 3B itself, the same words.
    V scaled_a = A, scaled_b = B;
    for (auto& x : scaled_a) x *= 2;
    for (auto& x : scaled_b) x *= 3;
    from_vec(a, scaled_a), from_vec(b, scaled_b);
    const V want = product();
    from_vec(b, B);
    const V want_a = product(), want_part = product(2);  // 2A x B, and its rows [2, M)
    // Given words are read instead of the floats, which may hold anything (NaN here): same bits.
    from_vec(a, V(A.size(), std::nan(""))), from_vec(b, B);
    {
      const auto ga = blas.given(a.data(), A.size(), a2.data());
      REQUIRE(product() == want_a);
      {
        const auto gb = blas.given(b.data(), B.size(), b3.data());  // a second range beside it
        REQUIRE(product() == want);
        REQUIRE_THROWS_AS(blas.given(b.data() + 5, 3, b3.data()), std::logic_error);  // overlaps b's
      }
      REQUIRE(product() == want_a);  // b's released: its floats rounded again
      // a part of the given floats reads its part of the words: rows 2..M of A
      REQUIRE(product(2) == want_part);
    }
    const V released = product();  // a's released: the NaN floats are read again
    REQUIRE(std::isnan(released[0]));
  }
}

// Hidden from the default run: ctest's kernels_bf16_engines runs it alone and reads exit 77 as
// "skipped" where oneDNN is not built or the CPU has no bf16 instructions.
TEST_CASE("gemm with bias: op(A) op(B) + bias in every row, in the epilogue or by a kernel", "[kernels][bf16][matmul]") {
  // Two shapes: odd sizes with padding columns in C (which stay untouched; on a GPU too unaligned
  // for cuBLASLt's fast kernels, perhaps for any: then the bias kernel runs), and one where every
  // row starts on a 256-byte boundary (cuBLASLt's bias epilogue on a GPU).
  for (const auto& shape : {std::tuple{37, 50, 300, 55}, std::tuple{64, 128, 256, 128}}) {
    const int M = std::get<0>(shape), N = std::get<1>(shape), K = std::get<2>(shape), ldc = std::get<3>(shape);
    const V A = randn(std::size_t(M) * K, 101), B = randn(std::size_t(K) * N, 102), bias = randn(std::size_t(N), 103);
    View1<float> a("a", A.size()), b("b", B.size()), bv("bias", bias.size()), c("c", std::size_t(M) * ldc);
    from_vec(a, A), from_vec(b, B), from_vec(bv, bias);
    // engine: the bf16 build's own (oneDNN's bias where the CPU has bf16), the rounded-fp32 sgemm
    // (a kernel fills the rows, the product adds onto them), and fp32 products.
    for (const std::string engine : {"auto", "sgemm", "fp32"}) {
      const auto blas = blas_on(engine == "fp32" ? "auto" : engine, engine == "fp32" ? Precision::fp32 : Precision::bf16);
      std::printf("gemm_bias %dx%dx%d on %s: %s\n", M, N, K, engine.c_str(), blas->bf16_engine().c_str());
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          CAPTURE(M, N, K, engine, ta, tb);
          from_vec(c, V(c.span(), 7.0));
          blas->gemm_bias<float>(ta, tb, M, N, K, a.data(), ta ? M : K, b.data(), tb ? K : N, bv.data(), c.data(), ldc);
          const V got = to_vec(c);
          // A and B hold op(A) and op(B)'s values stored transposed or not: the reference reads them alike.
          const V p = ref_gemm(A, B, ta, tb, M, N, K, 0, 0, 1, engine != "fp32");
          double worst = 0;
          for (int m = 0; m < M; ++m)
            for (int n = 0; n < ldc; ++n) {
              const double g = got[std::size_t(m) * ldc + std::size_t(n)];
              const double want = n < N ? p[std::size_t(m) * N + std::size_t(n)] + bias[std::size_t(n)] : 7.0;
              const double d = std::abs(g - want);
              worst = std::isfinite(d) ? std::max(worst, d) : std::numeric_limits<double>::infinity();
            }
          REQUIRE(worst < 1e-3);  // fp32 sums of K <= 300 exact products of |x| ~ 1: ~1e-5
        }
    }
  }
  const int M = 37, N = 50, K = 300;
  const V A = randn(std::size_t(M) * K, 101), B = randn(std::size_t(K) * N, 102), bias = randn(std::size_t(N), 103);
  // fp64 (never rounded) through the same call
  View1<double> da("da", A.size()), db("db", B.size()), dbias("dbias", bias.size()), dc("dc", std::size_t(M) * N);
  from_vec(da, A), from_vec(db, B), from_vec(dbias, bias);
  Blas bf16(ExecSpace(), Precision::bf16);
  bf16.gemm_bias<double>(false, false, M, N, K, da.data(), K, db.data(), N, dbias.data(), dc.data(), N);
  V want = ref_gemm(A, B, false, false, M, N, K, 0, 0, 1, false);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) want[std::size_t(m) * N + std::size_t(n)] += bias[std::size_t(n)];
  REQUIRE(max_rel_err(to_vec(dc), want) < 1e-5);  // ref rounds inputs to float
}

TEST_CASE("bf16 gemm: oneDNN's bf16 kernel and the rounded-fp32 sgemm agree", "[.bf16_engines]") {
  GemmCase g(64, 96, 768, 2, 96);
  std::string native;
  {
    Blas probe(ExecSpace(), Precision::bf16);
    native = probe.bf16_engine();
  }
  if (native.rfind("oneDNN", 0) != 0) {
    std::printf("bf16_engines: SKIPPED: no native oneDNN bf16 kernel in this build or on this CPU (%s)\n",
                native.c_str());
    std::exit(77);
  }
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      CAPTURE(ta, tb);
      auto run = [&](const char* engine) {
        const auto blas = blas_on(engine);
        REQUIRE((blas->bf16_engine().rfind("oneDNN", 0) == 0) == (std::string(engine) == "auto"));
        return g.run(*blas, ta, tb);
      };
      const V dnnl = run("auto"), sgemm = run("sgemm");
      const V rounded = ref_gemm(g.A, g.B, ta, tb, g.M, g.N, g.K, g.sa, g.sb, g.count, true);
      // Both: exact products of bf16 values, fp32 sums in different orders: ~sqrt(K) * 2^-24 * |sum|.
      REQUIRE(max_abs_diff(dnnl, rounded) < 1e-3);
      REQUIRE(max_abs_diff(sgemm, rounded) < 1e-3);
      REQUIRE(max_abs_diff(dnnl, sgemm) < 1e-3);
    }
  std::printf("bf16_engines: %s agrees with the rounded-fp32 sgemm on 4 transpose cases\n", native.c_str());
}

#ifdef TAPESTRY_HAVE_CUBLAS
TEST_CASE("the cuBLAS host code links and answers without a GPU", "[kernels][cublas]") {
  // Built wherever the CUDA toolkit is; cuBLAS reports its version with or without a device.
  const std::string v = cublas::version();
  INFO(v);
  REQUIRE(v.find('.') != std::string::npos);
  REQUIRE(std::stoi(v) >= 11);
}
#endif

// ---------------------------------------------------------------- matmul
namespace {
V naive_matmul(const V& x, const V& w, const V& b, int N, int C, int OC) {
  V y(std::size_t(N) * OC);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double s = b.empty() ? 0.0 : b[std::size_t(o)];
      for (int c = 0; c < C; ++c) s += x[std::size_t(n * C + c)] * w[std::size_t(o * C + c)];
      y[std::size_t(n * OC + o)] = s;
    }
  return y;
}
}  // namespace

TEST_CASE("matmul forward matches the naive product and backward matches finite differences", "[kernels][matmul]") {
  Blas blas;
  // Named locals, not structured bindings: lambdas below capture them (C++20 only for bindings).
  for (const auto& shape : {std::tuple{13, 7, 5}, std::tuple{1, 1, 1}, std::tuple{4, 17, 3}, std::tuple{0, 3, 2}}) {
    const int N = std::get<0>(shape), C = std::get<1>(shape), OC = std::get<2>(shape);
    for (bool with_bias : {true, false}) {
      CAPTURE(N, C, OC, with_bias);
      const V x = randn(std::size_t(N) * C, 1), w = randn(std::size_t(OC) * C, 2);
      const V b = with_bias ? randn(std::size_t(OC), 3) : V{};
      const V wout = randn(std::size_t(N) * OC, 4);  // J = sum(wout * y)
      View2<double> dx("x", N, C), dw("w", OC, C), dy("y", N, OC);
      View1<double> db("b", with_bias ? OC : 0);
      from_vec(dx, x), from_vec(dw, w), from_vec(db, b);
      matmul_forward(blas, dy, dx, dw, db);
      REQUIRE(max_rel_err(to_vec(dy), naive_matmul(x, w, b, N, C, OC)) < 1e-13);

      // backward: dinp overwritten, dweight and dbias accumulated onto what is there
      View2<double> gx("gx", N, C), gw("gw", OC, C), gout("gout", N, OC);
      View1<double> gb("gb", with_bias ? OC : 0);
      const V gw0 = randn(std::size_t(OC) * C, 5), gb0 = with_bias ? randn(std::size_t(OC), 6) : V{};
      from_vec(gx, randn(std::size_t(N) * C, 7));  // garbage that must be overwritten
      from_vec(gw, gw0), from_vec(gb, gb0), from_vec(gout, wout);
      matmul_backward(blas, gx, gw, gb, gout, dx, dw);

      auto Jx = [&](const V& xx) { return dot(naive_matmul(xx, w, b, N, C, OC), wout); };
      auto Jw = [&](const V& ww) { return dot(naive_matmul(x, ww, b, N, C, OC), wout); };
      REQUIRE(max_rel_err(to_vec(gx), finite_diff(x, Jx)) < kGradTol);
      V fw = finite_diff(w, Jw);
      for (std::size_t i = 0; i < fw.size(); ++i) fw[i] += gw0[i];
      REQUIRE(max_rel_err(to_vec(gw), fw) < kGradTol);
      if (with_bias) {
        auto Jb = [&](const V& bb) { return dot(naive_matmul(x, w, bb, N, C, OC), wout); };
        V fb = finite_diff(b, Jb);
        for (std::size_t i = 0; i < fb.size(); ++i) fb[i] += gb0[i];
        REQUIRE(max_rel_err(to_vec(gb), fb) < kGradTol);
      }
    }
  }
}

// ---------------------------------------------------------------- layernorm
namespace {
V naive_layernorm(const V& x, const V& w, const V& b, int N, int C) {
  V y(x.size());
  for (int n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int c = 0; c < C; ++c) m += x[std::size_t(n * C + c)];
    m /= C;
    for (int c = 0; c < C; ++c) v += (x[std::size_t(n * C + c)] - m) * (x[std::size_t(n * C + c)] - m);
    v /= C;
    for (int c = 0; c < C; ++c)
      y[std::size_t(n * C + c)] = (x[std::size_t(n * C + c)] - m) / std::sqrt(v + 1e-5) * w[std::size_t(c)] + b[std::size_t(c)];
  }
  return y;
}
}  // namespace

TEST_CASE("layernorm forward matches the naive reference and backward matches finite differences", "[kernels][layernorm]") {
  ExecSpace ex;
  // (37, 20): the parameter gradients sum three blocks of rows (16 + 16 + 5).
  for (const auto& shape : {std::pair{13, 7}, std::pair{1, 1}, std::pair{3, 64}, std::pair{37, 20}}) {
    const int N = shape.first, C = shape.second;
    CAPTURE(N, C);
    const V x = randn(std::size_t(N) * C, 11), w = randn(std::size_t(C), 12), b = randn(std::size_t(C), 13);
    const V wout = randn(std::size_t(N) * C, 14);
    View2<double> vx("x", N, C), vy("y", N, C);
    View1<double> vw("w", C), vb("b", C), mean("mean", N), rstd("rstd", N);
    from_vec(vx, x), from_vec(vw, w), from_vec(vb, b);
    layernorm_forward(ex, vy, mean, rstd, vx, vw, vb);
    REQUIRE(max_rel_err(to_vec(vy), naive_layernorm(x, w, b, N, C)) < 1e-12);

    View2<double> gx("gx", N, C), gout("gout", N, C);
    View1<double> gw("gw", C), gb("gb", C);
    const V gx0 = randn(std::size_t(N) * C, 15), gw0 = randn(std::size_t(C), 16), gb0 = randn(std::size_t(C), 17);
    from_vec(gx, gx0), from_vec(gw, gw0), from_vec(gb, gb0), from_vec(gout, wout);
    View2<double> scratch("scratch", norm_scratch_rows(std::size_t(N)), 2 * std::size_t(C));
    layernorm_backward(ex, gx, gw, gb, gout, vx, vw, mean, rstd, scratch);
    auto add = [](V a, const V& b0) { for (std::size_t i = 0; i < a.size(); ++i) a[i] += b0[i]; return a; };
    REQUIRE(max_rel_err(to_vec(gx), add(finite_diff(x, [&](const V& xx) { return dot(naive_layernorm(xx, w, b, N, C), wout); }), gx0)) < kGradTol);
    REQUIRE(max_rel_err(to_vec(gw), add(finite_diff(w, [&](const V& ww) { return dot(naive_layernorm(x, ww, b, N, C), wout); }), gw0)) < kGradTol);
    REQUIRE(max_rel_err(to_vec(gb), add(finite_diff(b, [&](const V& bb) { return dot(naive_layernorm(x, w, bb, N, C), wout); }), gb0)) < kGradTol);
  }
}

// ---------------------------------------------------------------- rmsnorm, QK-norm
namespace {
V naive_rmsnorm(const V& x, const V& w, int N, int C, double eps = 1e-5) {
  V y(x.size());
  for (int n = 0; n < N; ++n) {
    double ms = 0;
    for (int c = 0; c < C; ++c) ms += x[std::size_t(n * C + c)] * x[std::size_t(n * C + c)];
    const double s = 1 / std::sqrt(ms / C + eps);
    for (int c = 0; c < C; ++c) y[std::size_t(n * C + c)] = x[std::size_t(n * C + c)] * s * w[std::size_t(c)];
  }
  return y;
}

/// Per-head RMSNorm of columns [c0, c0 + nh hd) of x (N, W); the other columns of the result are base's.
V naive_head_rmsnorm(const V& x, const V& w, const V& base, int N, int W, int c0, int nh, int hd, double eps = 1e-6) {
  V y(base);
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < nh; ++h) {
      const std::size_t o = std::size_t(n * W + c0 + h * hd);
      double ms = 0;
      for (int i = 0; i < hd; ++i) ms += x[o + std::size_t(i)] * x[o + std::size_t(i)];
      const double s = 1 / std::sqrt(ms / hd + eps);
      for (int i = 0; i < hd; ++i) y[o + std::size_t(i)] = x[o + std::size_t(i)] * s * w[std::size_t(i)];
    }
  return y;
}

V plus(V a, const V& b) {
  for (std::size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}
}  // namespace

TEST_CASE("rmsnorm forward matches the naive reference and backward matches finite differences", "[kernels][rmsnorm]") {
  ExecSpace ex;
  for (const auto& shape : {std::pair{13, 7}, std::pair{1, 1}, std::pair{3, 64}, std::pair{37, 20}}) {
    const int N = shape.first, C = shape.second;
    CAPTURE(N, C);
    const V x = randn(std::size_t(N) * C, 101), w = randn(std::size_t(C), 102), wout = randn(std::size_t(N) * C, 103);
    View2<double> vx("x", N, C), vy("y", N, C);
    View1<double> vw("w", C), rstd("rstd", N);
    from_vec(vx, x), from_vec(vw, w);
    rmsnorm_forward(ex, vy, rstd, vx, vw);
    REQUIRE(max_rel_err(to_vec(vy), naive_rmsnorm(x, w, N, C)) < 1e-12);

    View2<double> gx("gx", N, C), gout("gout", N, C);
    View1<double> gw("gw", C);
    const V gx0 = randn(std::size_t(N) * C, 104), gw0 = randn(std::size_t(C), 105);
    from_vec(gx, gx0), from_vec(gw, gw0), from_vec(gout, wout);
    View2<double> scratch("scratch", norm_scratch_rows(std::size_t(N)), 2 * std::size_t(C));
    rmsnorm_backward(ex, gx, gw, gout, vx, vw, rstd, scratch);  // accumulates
    REQUIRE(max_rel_err(to_vec(gx), plus(finite_diff(x, [&](const V& xx) { return dot(naive_rmsnorm(xx, w, N, C), wout); }), gx0)) < kGradTol);
    REQUIRE(max_rel_err(to_vec(gw), plus(finite_diff(w, [&](const V& ww) { return dot(naive_rmsnorm(x, ww, N, C), wout); }), gw0)) < kGradTol);
  }
}

TEST_CASE("per-head rmsnorm (QK-norm) normalises only its columns; backward matches finite differences, in place too", "[kernels][rmsnorm][qknorm]") {
  ExecSpace ex;
  // (N, W, c0, nh, hd): heads in the middle of wider rows, and a single value
  for (const auto& shape : {std::tuple{13, 23, 3, 3, 6}, std::tuple{1, 1, 0, 1, 1}, std::tuple{5, 16, 8, 2, 4}}) {
    const int N = std::get<0>(shape), W = std::get<1>(shape), c0 = std::get<2>(shape), nh = std::get<3>(shape),
              hd = std::get<4>(shape);
    CAPTURE(N, W, c0, nh, hd);
    auto inside = [&](std::size_t k) { const int c = int(k % std::size_t(W)); return c >= c0 && c < c0 + nh * hd; };
    const V x = randn(std::size_t(N) * W, 111), w = randn(std::size_t(hd), 112), wout = randn(std::size_t(N) * W, 113);
    const V y0 = randn(std::size_t(N) * W, 114);  // out's columns outside the heads stay as they are
    View2<double> vx("x", N, W), vy("y", N, W), rstd("rstd", N, nh);
    View1<double> vw("w", hd);
    from_vec(vx, x), from_vec(vw, w), from_vec(vy, y0);
    head_rmsnorm_forward(ex, vy, rstd, vx, vw, c0, nh);
    const V y = to_vec(vy);
    REQUIRE(max_rel_err(y, naive_head_rmsnorm(x, w, y0, N, W, c0, nh, hd)) < 1e-12);
    for (std::size_t k = 0; k < y.size(); ++k)
      if (!inside(k)) REQUIRE(y[k] == y0[k]);

    View2<double> gx("gx", N, W), gout("gout", N, W);
    View1<double> gw("gw", hd);
    const V gx0 = randn(std::size_t(N) * W, 115), gw0 = randn(std::size_t(hd), 116);
    from_vec(gx, gx0), from_vec(gw, gw0), from_vec(gout, wout);
    head_rmsnorm_backward(ex, gx, gw, gout, vx, vw, rstd, c0, nh);
    V fx = finite_diff(x, [&](const V& xx) { return dot(naive_head_rmsnorm(xx, w, y0, N, W, c0, nh, hd), wout); });
    for (std::size_t k = 0; k < fx.size(); ++k)
      if (!inside(k)) fx[k] = gx0[k];  // overwritten inside the heads only
    const V g = to_vec(gx);
    REQUIRE(max_rel_err(g, fx) < kGradTol);
    for (std::size_t k = 0; k < g.size(); ++k)
      if (!inside(k)) REQUIRE(g[k] == gx0[k]);
    const V fw = finite_diff(w, [&](const V& ww) { return dot(naive_head_rmsnorm(x, ww, y0, N, W, c0, nh, hd), wout); });
    REQUIRE(max_rel_err(to_vec(gw), plus(fw, gw0)) < kGradTol);

    // in place: dinp aliases dout; the same numbers, dout's own values outside the heads
    View1<double> gw2("gw2", hd);
    from_vec(gw2, gw0);
    head_rmsnorm_backward(ex, gout, gw2, gout, vx, vw, rstd, c0, nh);
    const V gi = to_vec(gout);
    for (std::size_t k = 0; k < gi.size(); ++k) REQUIRE(gi[k] == (inside(k) ? g[k] : wout[k]));
    REQUIRE(to_vec(gw2) == to_vec(gw));
  }
}

// ---------------------------------------------------------------- attention
namespace {
/// Causal multi-head attention, straight from the definition. C = NH hs is the width of out; qkv rows
/// are [q: NH hs | k: KV hs | v: KV hs] with KV = n_kv_head (0: NH), query head h reading kv head
/// h / (NH / KV) (grouped-query attention).
/// With doc_pos (B*T positions in each token's document), a query sees only its own document's keys.
V naive_attention(const V& qkv, int B, int T, int C, int NH, int KV = 0, const std::vector<int>& doc_pos = {}) {
  if (KV == 0) KV = NH;
  const int hs = C / NH, W = C + 2 * KV * hs, group = NH / KV;
  V out(std::size_t(B) * T * C, 0.0);
  auto at = [&](int b, int t, int c) { return qkv[std::size_t((b * T + t) * W + c)]; };
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < T; ++t) {
        const int k_col = C + (h / group) * hs, v_col = C + KV * hs + (h / group) * hs;
        V s(std::size_t(t) + 1);
        double mx = -1e300;
        const int lo = doc_pos.empty() ? 0 : t - doc_pos[std::size_t(b * T + t)];
        for (int t2 = 0; t2 <= t; ++t2) {
          if (t2 < lo) {
            s[std::size_t(t2)] = -1e300;
            continue;
          }
          double d = 0;
          for (int j = 0; j < hs; ++j) d += at(b, t, h * hs + j) * at(b, t2, k_col + j);
          s[std::size_t(t2)] = d / std::sqrt(double(hs));
          mx = std::max(mx, s[std::size_t(t2)]);
        }
        double z = 0;
        for (auto& v : s) z += (v = v == -1e300 ? 0.0 : std::exp(v - mx));
        for (int j = 0; j < hs; ++j) {
          double o = 0;
          for (int t2 = 0; t2 <= t; ++t2) o += s[std::size_t(t2)] / z * at(b, t2, v_col + j);
          out[std::size_t((b * T + t) * C + h * hs + j)] = o;
        }
      }
  return out;
}
}  // namespace

namespace {
/// The matrix kernel's products in causal row blocks (causal_block 4 and 5) against its unsplit
/// results (out, att, gradient), which the callers check against the naive reference and finite
/// differences: equal within 1e-12 (the BLAS sums the same products in other pieces). Where T
/// splits (at least two blocks), the products must do less work (FLOPs the Blas counts).
void check_causal_blocks(View3<double> vqkv, View3<double> gout, int NH, int KV,
                         Kokkos::View<int*, Layout, MemSpace> pos = {}) {
  const int B = int(vqkv.extent(0)), T = int(vqkv.extent(1)), W = int(vqkv.extent(2)), C = int(gout.extent(2));
  V want[3];
  double whole_flops = 0;
  int checked = 0;
  for (const int cb : {0, 4, 5}) {
    CAPTURE(cb);
    Blas blas;
    blas.set_timing(true);
    View3<double> out("out", B, T, C), g("g", B, T, W);
    View4<double> att("att", B, NH, T, T), scratch("scratch", B, NH, T, T);
    Kokkos::deep_copy(att, 7.0);  // blocks above the diagonal are not computed: no stale value may leak
    Kokkos::deep_copy(scratch, 7.0);
    attention_forward(blas, out, att, vqkv, NH, KV, pos, cb);
    attention_backward(blas, g, scratch, gout, vqkv, att, NH, KV, cb);
    const V got[3] = {to_vec(out), to_vec(att), to_vec(g)};
    for (int k = 0; k < 3; ++k) {
      if (cb == 0) want[k] = got[k];
      else REQUIRE(max_rel_err(got[k], want[k]) < 1e-12);
    }
    double flops = 0;
    for (const auto& kv : blas.call_times()) flops += kv.second.flops;
    REQUIRE(flops > 0);
    if (cb == 0) whole_flops = flops;
    else if (T >= 2 * cb) REQUIRE(flops < 0.9 * whole_flops);
    else REQUIRE(flops == whole_flops);
    ++checked;
  }
  REQUIRE(checked == 3);
}
}  // namespace

TEST_CASE("attention forward matches the naive reference and backward matches finite differences", "[kernels][attention]") {
  Blas blas;
  for (const auto& shape : {std::tuple{2, 5, 6, 2}, std::tuple{1, 1, 1, 1}, std::tuple{1, 13, 9, 3}}) {
    const int B = std::get<0>(shape), T = std::get<1>(shape), C = std::get<2>(shape), NH = std::get<3>(shape);
    CAPTURE(B, T, C, NH);
    const V qkv = randn(std::size_t(B) * T * 3 * C, 21);
    const V wout = randn(std::size_t(B) * T * C, 22);
    View3<double> vqkv("qkv", B, T, 3 * C), vout("out", B, T, C);
    View4<double> att("att", B, NH, T, T), scratch("scratch", B, NH, T, T);
    from_vec(vqkv, qkv);
    attention_forward(blas, vout, att, vqkv, NH);
    REQUIRE(max_rel_err(to_vec(vout), naive_attention(qkv, B, T, C, NH)) < 1e-12);
    const V a = to_vec(att);
    for (int row = 0; row < B * NH * T; ++row) {
      const int t = row % T;
      double s = 0;
      for (int t2 = 0; t2 < T; ++t2) {
        const double p = a[std::size_t(row * T + t2)];
        if (t2 > t) REQUIRE(p == 0.0);
        s += p;
      }
      REQUIRE(std::abs(s - 1.0) < 1e-12);
    }
    View3<double> gqkv("gqkv", B, T, 3 * C), gout("gout", B, T, C);
    from_vec(gout, wout);
    from_vec(gqkv, randn(qkv.size(), 23));  // overwritten
    attention_backward(blas, gqkv, scratch, gout, vqkv, att, NH);
    auto J = [&](const V& x) { return dot(naive_attention(x, B, T, C, NH), wout); };
    REQUIRE(max_rel_err(to_vec(gqkv), finite_diff(qkv, J)) < kGradTol);
    check_causal_blocks(vqkv, gout, NH, NH);
  }
}

TEST_CASE("tiled attention (no T x T matrix) matches the naive reference; its backward matches finite differences", "[kernels][attention][tiled]") {
  ExecSpace ex;
  // T = 37 and 70: several tiles of kAttnTile = 32 rows, the last one partial
  for (const auto& shape : {std::tuple{2, 5, 6, 2}, std::tuple{1, 1, 1, 1}, std::tuple{1, 37, 6, 2}, std::tuple{1, 70, 4, 1}}) {
    const int B = std::get<0>(shape), T = std::get<1>(shape), C = std::get<2>(shape), NH = std::get<3>(shape);
    CAPTURE(B, T, C, NH);
    const V qkv = randn(std::size_t(B) * T * 3 * C, 24);
    const V wout = randn(std::size_t(B) * T * C, 25);
    View3<double> vqkv("qkv", B, T, 3 * C), vout("out", B, T, C), lse("lse", B, NH, T);
    from_vec(vqkv, qkv);
    attention_tiled_forward<double>(ex, vout, lse, vqkv, NH);
    REQUIRE(max_rel_err(to_vec(vout), naive_attention(qkv, B, T, C, NH)) < 1e-12);
    View3<double> gqkv("gqkv", B, T, 3 * C), gout("gout", B, T, C);
    from_vec(gout, wout);
    from_vec(gqkv, randn(qkv.size(), 26));  // overwritten
    attention_tiled_backward<double>(ex, gqkv, gout, vqkv, vout, lse, NH);
    if (T > 40) {  // finite differences over 3*70*4 inputs are slow: compare with the FD-checked kernel
      Blas blas;
      View4<double> att("att", B, NH, T, T), scratch("scratch", B, NH, T, T);
      View3<double> ref("ref", B, T, 3 * C), o2("o2", B, T, C);
      attention_forward(blas, o2, att, vqkv, NH);
      attention_backward(blas, ref, scratch, gout, vqkv, att, NH);
      REQUIRE(max_rel_err(to_vec(gqkv), to_vec(ref)) < 1e-12);
    } else {
      auto J = [&](const V& x) { return dot(naive_attention(x, B, T, C, NH), wout); };
      REQUIRE(max_rel_err(to_vec(gqkv), finite_diff(qkv, J)) < kGradTol);
    }
  }
}

TEST_CASE("grouped-query attention (matrix kernel) matches the naive reference and finite differences", "[kernels][attention][gqa]") {
  Blas blas;
  // The second shape puts every matrix on a 16-byte boundary: on a GPU each product is then one
  // cuBLAS call over all sequences and heads (device arrays of addresses); the first is not, and
  // takes one strided-batched call per sequence.
  for (const auto& shape : {std::vector<int>{2, 13, 6, 4, 6, 3, 2, 1}, std::vector<int>{3, 16, 4, 8, 4, 2, 1}})
  for (std::size_t kv = 4; kv < shape.size(); ++kv) {  // B, T, NH, hs, then the kv head counts
    const int B = shape[0], T = shape[1], NH = shape[2], hs = shape[3], KV = shape[kv], C = NH * hs;
    CAPTURE(B, T, NH, hs, KV);
    const int W = C + 2 * KV * hs;
    const V qkv = randn(std::size_t(B) * T * W, 27);
    const V wout = randn(std::size_t(B) * T * C, 28);
    View3<double> vqkv("qkv", B, T, W), vout("out", B, T, C);
    View4<double> att("att", B, NH, T, T), scratch("scratch", B, NH, T, T);
    from_vec(vqkv, qkv);
    attention_forward(blas, vout, att, vqkv, NH, KV);
    REQUIRE(max_rel_err(to_vec(vout), naive_attention(qkv, B, T, C, NH, KV)) < 1e-12);
    View3<double> gqkv("gqkv", B, T, W), gout("gout", B, T, C);
    from_vec(gout, wout);
    from_vec(gqkv, randn(qkv.size(), 29));  // overwritten
    attention_backward(blas, gqkv, scratch, gout, vqkv, att, NH, KV);
    auto J = [&](const V& x) { return dot(naive_attention(x, B, T, C, NH, KV), wout); };
    REQUIRE(max_rel_err(to_vec(gqkv), finite_diff(qkv, J)) < kGradTol);
    check_causal_blocks(vqkv, gout, NH, KV);
  }
}

TEST_CASE("bf16 attention: bf16 products, probabilities kept in bf16, against the fp32 kernel", "[kernels][attention][bf16]") {
  // Reference: the fp32 kernel on q, k, v already rounded to bf16 (what the bf16 products read).
  // The probabilities may differ from its by their bf16 rounding only (the scores by the sum
  // order); the output is the bf16 probabilities times V, to fp32 rounding; the gradient is the
  // fp32 kernel's within the rounding of the probabilities, the output gradient and the scores'
  // gradient to bf16 (relative 2^-9 each). On a GPU the last shape puts every matrix on a 16-byte
  // boundary (one cuBLAS call over all sequences and heads, through device arrays of addresses);
  // the others take one strided-batched call per sequence.
  for (const std::string engine : {"auto", "sgemm"})
    for (const auto& shape : {std::vector<int>{2, 13, 6, 4, 3, 0}, std::vector<int>{1, 20, 4, 8, 4, 4},
                              std::vector<int>{2, 9, 4, 16, 1, 0},
                              std::vector<int>{2, 16, 4, 8, 2, 0}}) {  // B, T, NH, hs, KV, causal_block
      const int B = shape[0], T = shape[1], NH = shape[2], hs = shape[3], KV = shape[4], cb = shape[5];
      const int C = NH * hs, W = C + 2 * KV * hs;
      CAPTURE(engine, B, T, NH, hs, KV, cb);
      const auto owned = blas_on(engine);
      const Blas& blas = *owned;
      Blas fp32;
      V qkv = randn(std::size_t(B) * T * W, 40);
      for (auto& x : qkv) x = double(round_bf16(float(x)));
      const V wout = randn(std::size_t(B) * T * C, 41);
      View3<float> vqkv("qkv", B, T, W), out("out", B, T, C), ref("ref", B, T, C), gout("gout", B, T, C);
      View3<float> g("g", B, T, W), gref("gref", B, T, W);
      View4<float> att("att", B, NH, T, T), scratch("scratch", B, NH, T, T), scores("scores", B, NH, T, T);
      from_vec(vqkv, qkv), from_vec(gout, wout);
      const std::size_t tt = std::size_t(B) * NH * T * T;
      AttentionBf16 h;
      h.qkv = Words("qkv16", qkv.size()), h.probs = Words("probs", tt), h.dout = Words("dout16", wout.size());
      h.dscores = Words("ds16", tt);
      Kokkos::deep_copy(h.probs, std::uint16_t(0x3f80));  // 1.0: every entry must be written
      attention_forward<float>(fp32, ref, att, vqkv, NH, KV, {}, cb);
      attention_forward_bf16(blas, out, scores, h, vqkv, NH, KV, {}, cb);
      const V pw = to_vec(h.probs), pref = to_vec(att);
      V p(pw.size());
      for (std::size_t i = 0; i < pw.size(); ++i) {
        p[i] = double(from_bf16(std::uint16_t(pw[i])));
        const int t = int(i / std::size_t(T) % std::size_t(T)), t2 = int(i % std::size_t(T));
        if (t2 > t) REQUIRE(pw[i] == 0.0);
        REQUIRE(std::abs(p[i] - pref[i]) <= 0x1p-8 * pref[i] + 1e-6);
      }
      // out = probs V (double, from the kernel's own bf16 probabilities)
      V want(std::size_t(B) * T * C, 0.0);
      for (int b = 0; b < B; ++b)
        for (int hh = 0; hh < NH; ++hh)
          for (int t = 0; t < T; ++t)
            for (int d = 0; d < hs; ++d) {
              double o = 0;
              for (int t2 = 0; t2 < T; ++t2)
                o += p[((std::size_t(b) * NH + hh) * T + t) * T + t2] *
                     qkv[(std::size_t(b) * T + t2) * W + C + KV * hs + (hh / (NH / KV)) * hs + d];
              want[(std::size_t(b) * T + t) * C + hh * hs + d] = o;
            }
      REQUIRE(max_rel_err(to_vec(out), want) < 1e-5);
      attention_backward<float>(fp32, gref, scratch, gout, vqkv, att, NH, KV, cb);
      attention_backward_bf16(blas, g, scratch, h, gout, vqkv, NH, KV, cb);
      const V got = to_vec(g), gwant = to_vec(gref);
      double num = 0, den = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        REQUIRE(std::isfinite(got[i]));
        num += (got[i] - gwant[i]) * (got[i] - gwant[i]), den += gwant[i] * gwant[i];
      }
      REQUIRE(std::sqrt(num / den) < 1e-2);
      REQUIRE(std::sqrt(num / den) > 0);  // bf16 products and storage: not the fp32 kernel's bits
      // q, k, v given in bf16 (the copy kept for backward): the same bits as rounding them here
      AttentionBf16 given = h;
      given.qkv = Words("given", qkv.size()), given.qkv_written = true;
      store_bf16(ExecSpace(), given.qkv, In1<float>(vqkv.data(), vqkv.span()));
      View3<float> g2("g2", B, T, W);
      attention_backward_bf16(blas, g2, scratch, given, gout, View3<float>("unread", B, T, W), NH, KV, cb);
      REQUIRE(to_vec(g2) == got);
      AttentionBf16 short_probs = h;
      short_probs.probs = Words("short", tt - 1);
      REQUIRE_THROWS_AS(attention_forward_bf16(blas, out, scores, short_probs, vqkv, NH, KV), std::invalid_argument);
    }
}

TEST_CASE("grouped-query tiled attention matches the naive reference and finite differences", "[kernels][attention][tiled][gqa]") {
  ExecSpace ex;
  const int B = 2, NH = 6, hs = 4, C = NH * hs;
  // T = 37: two query and key tiles of kAttnTile = 32, the last one partial
  for (const int T : {13, 37})
    for (const int KV : {6, 3, 2, 1}) {
      CAPTURE(T, KV);
      const int W = C + 2 * KV * hs;
      const V qkv = randn(std::size_t(B) * T * W, 30);
      const V wout = randn(std::size_t(B) * T * C, 31);
      View3<double> vqkv("qkv", B, T, W), vout("out", B, T, C), lse("lse", B, NH, T);
      from_vec(vqkv, qkv);
      attention_tiled_forward<double>(ex, vout, lse, vqkv, NH, KV);
      REQUIRE(max_rel_err(to_vec(vout), naive_attention(qkv, B, T, C, NH, KV)) < 1e-12);
      View3<double> gqkv("gqkv", B, T, W), gout("gout", B, T, C);
      from_vec(gout, wout);
      from_vec(gqkv, randn(qkv.size(), 32));  // overwritten
      attention_tiled_backward<double>(ex, gqkv, gout, vqkv, vout, lse, NH, KV);
      auto J = [&](const V& x) { return dot(naive_attention(x, B, T, C, NH, KV), wout); };
      REQUIRE(max_rel_err(to_vec(gqkv), finite_diff(qkv, J)) < kGradTol);
      // the same gradient from the matrix kernel
      Blas blas;
      View4<double> att("att", B, NH, T, T), scratch("scratch", B, NH, T, T);
      View3<double> ref("ref", B, T, W), o2("o2", B, T, C);
      attention_forward(blas, o2, att, vqkv, NH, KV);
      attention_backward(blas, ref, scratch, gout, vqkv, att, NH, KV);
      REQUIRE(max_rel_err(to_vec(gqkv), to_vec(ref)) < 1e-12);
    }
  // n_kv_head must divide n_head, and qkv's width must be (n_head + 2 n_kv_head) hs
  View3<double> vqkv("qkv", 1, 3, C + 2 * 4 * hs), vout("out", 1, 3, C), lse("lse", 1, NH, 3);
  REQUIRE_THROWS_AS(attention_tiled_forward<double>(ex, vout, lse, vqkv, NH, 4), std::invalid_argument);
  REQUIRE_THROWS_AS(attention_tiled_forward<double>(ex, vout, lse, vqkv, NH, 2), std::invalid_argument);
}

TEST_CASE("document-masked attention (matrix and tiled) matches the naive reference and finite differences", "[kernels][attention][docmask]") {
  ExecSpace ex;
  Blas blas;
  const int NH = 4, hs = 3, C = NH * hs;
  // T = 37: a document boundary inside a key tile and documents spanning two tiles; row 0 is one
  // whole document, row 1 has documents of lengths 5, 1, 20 and 11 (position 0 at each start).
  for (const int T : {9, 37})
    for (const int KV : {4, 2}) {
      CAPTURE(T, KV);
      const int B = 2, W = C + 2 * KV * hs;
      std::vector<int> pos(std::size_t(B) * T);
      const int starts[] = {0, 5, 6, 26};
      for (int t = 0; t < T; ++t) {
        pos[std::size_t(t)] = t;
        int s0 = 0;
        for (int st : starts)
          if (st <= t) s0 = st;
        pos[std::size_t(T + t)] = t - s0;
      }
      Kokkos::View<int*, Layout, MemSpace> vpos("pos", pos.size());
      auto hpos = Kokkos::create_mirror_view(vpos);
      for (std::size_t i = 0; i < pos.size(); ++i) hpos(i) = pos[i];
      Kokkos::deep_copy(vpos, hpos);
      const V qkv = randn(std::size_t(B) * T * W, 33);
      const V wout = randn(std::size_t(B) * T * C, 34);
      const V ref = naive_attention(qkv, B, T, C, NH, KV, pos);
      // the mask changes the result (documents after the first do not see earlier ones)
      REQUIRE(max_rel_err(ref, naive_attention(qkv, B, T, C, NH, KV)) > 1e-3);
      View3<double> vqkv("qkv", B, T, W), vout("out", B, T, C), tout("tout", B, T, C), lse("lse", B, NH, T);
      View4<double> att("att", B, NH, T, T), scratch("scratch", B, NH, T, T);
      from_vec(vqkv, qkv);
      attention_forward(blas, vout, att, vqkv, NH, KV, vpos);
      REQUIRE(max_rel_err(to_vec(vout), ref) < 1e-12);
      attention_tiled_forward<double>(ex, tout, lse, vqkv, NH, KV, vpos);
      REQUIRE(max_rel_err(to_vec(tout), ref) < 1e-12);
      View3<double> gqkv("gqkv", B, T, W), tgqkv("tgqkv", B, T, W), gout("gout", B, T, C);
      from_vec(gout, wout);
      attention_backward(blas, gqkv, scratch, gout, vqkv, att, NH, KV);
      attention_tiled_backward<double>(ex, tgqkv, gout, vqkv, tout, lse, NH, KV, vpos);
      auto J = [&](const V& x) { return dot(naive_attention(x, B, T, C, NH, KV, pos), wout); };
      const V fd = finite_diff(qkv, J);
      REQUIRE(max_rel_err(to_vec(gqkv), fd) < kGradTol);
      REQUIRE(max_rel_err(to_vec(tgqkv), fd) < kGradTol);
      check_causal_blocks(vqkv, gout, NH, KV, vpos);
    }
}

// ---------------------------------------------------------------- gelu, residual
TEST_CASE("gelu matches the tanh formula and its backward matches finite differences", "[kernels][gelu]") {
  ExecSpace ex;
  const int n = 13;
  V x = randn(n, 31, 2.0);
  x[0] = 0.0, x[1] = 30.0, x[2] = -30.0, x[3] = 1e-6;
  auto gelu = [](const V& xx) {
    V y(xx.size());
    for (std::size_t i = 0; i < xx.size(); ++i)
      y[i] = 0.5 * xx[i] * (1 + std::tanh(std::sqrt(2 / M_PI) * (xx[i] + 0.044715 * xx[i] * xx[i] * xx[i])));
    return y;
  };
  View1<double> vx("x", n), vy("y", n), gx("gx", n), gy("gy", n);
  from_vec(vx, x);
  gelu_forward(ex, vy, vx);
  REQUIRE(max_rel_err(to_vec(vy), gelu(x)) < 1e-14);
  const V w = randn(n, 32);
  from_vec(gy, w);
  gelu_backward(ex, gx, vx, gy);
  REQUIRE(max_rel_err(to_vec(gx), finite_diff(x, [&](const V& xx) { return dot(gelu(xx), w); })) < kGradTol);
  gelu_backward(ex, gy, vx, gy);  // in place (dinp aliases dout)
  REQUIRE(max_rel_err(to_vec(gy), to_vec(gx)) == 0.0);
}

namespace {
/// A device buffer of n bf16 outputs: words (W = std::uint16_t) or bf16 values in floats.
template <class W> using Out16 = Kokkos::View<W*, Layout, MemSpace>;
/// Every element of a kernel's bf16 output is the fp32 kernel's output rounded, bit for bit.
template <class W> void require_rounded(const Out16<W>& got, const V& fp32) {
  const auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), got);
  REQUIRE(h.extent(0) == fp32.size());
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < fp32.size(); ++i) {
    W want;
    store_rounded(want, float(fp32[i]));
    std::uint32_t a = 0, b = 0;
    std::memcpy(&a, &h(i), sizeof(W)), std::memcpy(&b, &want, sizeof(W));
    wrong += a != b;
  }
  REQUIRE(wrong == 0);
}
}  // namespace

TEMPLATE_TEST_CASE("kernels writing bf16 outputs write their fp32 output rounded, bitwise", "[kernels][bf16][bf16_out]",
                   std::uint16_t, float) {
  using W = TestType;  // 16-bit words, or bf16 values held in floats
  // GELU forward and backward
  const std::size_t n = 1000;
  View1<float> x("x", n), d("d", n), y("y", n);
  V xs = randn(n, 201);
  for (auto& v : xs) v *= 3;
  from_vec(x, xs), from_vec(d, randn(n, 202));
  Out16<W> y16("y16", n);
  gelu_forward<float>(ExecSpace(), y, x);
  gelu_forward_bf16<W>(ExecSpace(), y16.data(), x);
  require_rounded(y16, to_vec(y));
  gelu_backward<float>(ExecSpace(), y, x, d);
  gelu_backward_bf16<W>(ExecSpace(), y16.data(), x, d);
  require_rounded(y16, to_vec(y));
  // SwiGLU forward (N, F) and backward (N, 2F)
  const int N = 7, F = 33;
  View2<float> gu("gu", N, 2 * F), o("o", N, F), dout("dout", N, F), dgu("dgu", N, 2 * F);
  from_vec(gu, randn(std::size_t(N) * 2 * F, 203)), from_vec(dout, randn(std::size_t(N) * F, 204));
  Out16<W> o16("o16", std::size_t(N) * F), dgu16("dgu16", std::size_t(N) * 2 * F);
  swiglu_forward<float>(ExecSpace(), o, gu);
  swiglu_forward_bf16<W>(ExecSpace(), o16.data(), gu);
  require_rounded(o16, to_vec(o));
  swiglu_backward<float>(ExecSpace(), dgu, gu, dout);
  swiglu_backward_bf16<W>(ExecSpace(), dgu16.data(), gu, dout);
  require_rounded(dgu16, to_vec(dgu));
  // xIELU forward and backward, with the parameters' gradients (fp32 in both: the same bits)
  View1<float> params("params", 2), dp("dp", 2), dp16("dp16", 2);
  from_vec(params, V{0.3, -0.2});
  xielu_forward<float>(ExecSpace(), y, x, params);
  xielu_forward_bf16<W>(ExecSpace(), y16.data(), x, params);
  require_rounded(y16, to_vec(y));
  xielu_backward<float>(ExecSpace(), y, dp, x, d, params);
  xielu_backward_bf16<W>(ExecSpace(), y16.data(), dp16, x, d, params);
  require_rounded(y16, to_vec(y));
  REQUIRE(to_vec(dp16) == to_vec(dp));
  REQUIRE(std::isfinite(to_vec(dp)[0]));
  // LayerNorm and RMSNorm forward, with their statistics
  const int R = 9, C = 70;
  View2<float> in("in", R, C), out("out", R, C);
  View1<float> w("w", C), b("b", C), mean("mean", R), rstd("rstd", R), mean16("mean16", R), rstd16("rstd16", R);
  from_vec(in, randn(std::size_t(R) * C, 205)), from_vec(w, randn(C, 206)), from_vec(b, randn(C, 207));
  Out16<W> out16("out16", std::size_t(R) * C);
  layernorm_forward<float>(ExecSpace(), out, mean, rstd, in, w, b);
  layernorm_forward_bf16<W>(ExecSpace(), out16.data(), mean16, rstd16, in, w, b);
  require_rounded(out16, to_vec(out));
  REQUIRE(to_vec(mean16) == to_vec(mean));
  REQUIRE(to_vec(rstd16) == to_vec(rstd));
  rmsnorm_forward<float>(ExecSpace(), out, rstd, in, w);
  rmsnorm_forward_bf16<W>(ExecSpace(), out16.data(), rstd16, in, w);
  require_rounded(out16, to_vec(out));
  REQUIRE(to_vec(rstd16) == to_vec(rstd));
}

TEST_CASE("residual forward adds and backward accumulates into both inputs", "[kernels][residual]") {
  ExecSpace ex;
  const int n = 13;
  const V a = randn(n, 41), b = randn(n, 42), w = randn(n, 43), ga0 = randn(n, 44), gb0 = randn(n, 45);
  View1<double> va("a", n), vb("b", n), vy("y", n), ga("ga", n), gb("gb", n), gy("gy", n);
  from_vec(va, a), from_vec(vb, b), from_vec(gy, w), from_vec(ga, ga0), from_vec(gb, gb0);
  residual_forward(ex, vy, va, vb);
  const V y = to_vec(vy);
  for (int i = 0; i < n; ++i) REQUIRE(y[std::size_t(i)] == a[std::size_t(i)] + b[std::size_t(i)]);
  residual_backward(ex, ga, gb, gy);
  auto sum = [](const V& x, const V& z) { V r(x); for (std::size_t i = 0; i < r.size(); ++i) r[i] += z[i]; return r; };
  V fa = finite_diff(a, [&](const V& x) { return dot(sum(x, b), w); });
  V fb = finite_diff(b, [&](const V& x) { return dot(sum(a, x), w); });
  REQUIRE(max_rel_err(to_vec(ga), sum(fa, ga0)) < kGradTol);
  REQUIRE(max_rel_err(to_vec(gb), sum(fb, gb0)) < kGradTol);
}

// ---------------------------------------------------------------- rope
namespace {
/// Rotate-half RoPE of columns [c0, c0 + nh hd) of x (N, W) by pos(n) * inv_freq(i), sign -1 for the inverse.
V naive_rope(V x, const std::vector<int>& pos, const V& inv_freq, int W, int c0, int nh, int hd, double sign = 1) {
  const int half = hd / 2;
  for (std::size_t n = 0; n < pos.size(); ++n)
    for (int h = 0; h < nh; ++h)
      for (int i = 0; i < half; ++i) {
        const double a = pos[n] * inv_freq[std::size_t(i)], c = std::cos(a), s = sign * std::sin(a);
        const std::size_t o = n * std::size_t(W) + std::size_t(c0 + h * hd + i);
        const double x1 = x[o], x2 = x[o + std::size_t(half)];
        x[o] = x1 * c - x2 * s;
        x[o + std::size_t(half)] = x2 * c + x1 * s;
      }
  return x;
}

Kokkos::View<const int*, Layout, MemSpace> device_positions(const std::vector<int>& pos) {
  Kokkos::View<int*, Layout, MemSpace> v("pos", pos.size());
  auto h = Kokkos::create_mirror_view(v);
  for (std::size_t i = 0; i < pos.size(); ++i) h(i) = pos[i];
  Kokkos::deep_copy(v, h);
  return v;
}

Kokkos::View<const double*, Layout, MemSpace> device_freqs(const V& f) {
  Kokkos::View<double*, Layout, MemSpace> v("inv_freq", f.size());
  from_vec(v, f);
  return v;
}

/// rope_table's cos and sin for positions [0, P) in T.
template <class T> struct RopeTable {
  View2<T> cos, sin;
  RopeTable(const V& f, int P) : cos("rope_cos", P, f.size()), sin("rope_sin", P, f.size()) {
    rope_table<T>(ExecSpace(), cos, sin, device_freqs(f));
  }
};
}  // namespace

TEST_CASE("rope_inv_freq: 1 / theta^(2i/hd), and Llama 3's scaling in its three bands", "[kernels][rope]") {
  for (const auto& [hd, theta] : {std::pair{6, 10000.0}, std::pair{128, 500000.0}, std::pair{2, 10.0}}) {
    CAPTURE(hd, theta);
    const V f = rope_inv_freq(hd, theta);
    REQUIRE(f.size() == std::size_t(hd / 2));
    for (int i = 0; i < hd / 2; ++i)
      REQUIRE(std::abs(f[std::size_t(i)] - 1 / std::pow(theta, 2.0 * i / hd)) <= 1e-15 * f[std::size_t(i)]);
  }
  REQUIRE_THROWS_AS(rope_inv_freq(5, 10000.0), std::invalid_argument);

  // Llama 3.1: hd 128, theta 500000, factor 8, low 1, high 4, original context 8192
  RopeScaling sc;
  sc.llama3 = true;
  const int hd = 128;
  const double theta = 500000, pi = 3.14159265358979323846;
  const V f = rope_inv_freq(hd, theta, sc);
  REQUIRE(f.size() == 64);
  int low = 0, medium = 0, high = 0;
  for (int i = 0; i < hd / 2; ++i) {
    CAPTURE(i);
    const double inv = std::pow(theta, -2.0 * i / hd), wavelen = 2 * pi / inv;
    double expect = inv;
    if (wavelen < 8192.0 / 4) {  // high frequencies: unchanged
      ++high;
    } else if (wavelen > 8192.0 / 1) {  // low frequencies: divided by the factor
      expect = inv / 8, ++low;
    } else {  // in between: interpolated
      const double smooth = (8192.0 / wavelen - 1) / (4 - 1);
      expect = (1 - smooth) * inv / 8 + smooth * inv, ++medium;
      REQUIRE(expect > inv / 8);
      REQUIRE(expect < inv);
    }
    REQUIRE(std::abs(f[std::size_t(i)] - expect) <= 1e-15 * expect);
  }
  REQUIRE(low > 0);
  REQUIRE(medium > 0);
  REQUIRE(high > 0);
  REQUIRE(f[0] == 1.0);                                           // wavelength 2 pi
  REQUIRE(std::abs(f[63] - std::pow(theta, -126.0 / 128) / 8) <= 1e-15 * f[63]);  // the longest
}

TEST_CASE("rope_apply rotates only its columns by each row's position; the inverse undoes it and is the transpose", "[kernels][rope]") {
  ExecSpace ex;
  // (N, W, c0, nh, hd): heads in the middle of wider rows; a single pair
  for (const auto& shape : {std::tuple{8, 23, 2, 3, 6}, std::tuple{1, 2, 0, 1, 2}, std::tuple{6, 16, 0, 2, 8}}) {
    const int N = std::get<0>(shape), W = std::get<1>(shape), c0 = std::get<2>(shape), nh = std::get<3>(shape),
              hd = std::get<4>(shape);
    CAPTURE(N, W, c0, nh, hd);
    const std::vector<int> all_pos{0, 1, 2, 0, 1, 5, 3, 7};  // documents restart: positions not monotone
    const std::vector<int> pos = N == 1 ? std::vector<int>{4} : std::vector<int>(all_pos.begin(), all_pos.begin() + N);
    const V f = rope_inv_freq(hd, 10000.0);
    const auto vpos = device_positions(pos);
    const RopeTable<double> tab(f, 8);
    {  // the table against cos and sin at each position (a device's cos may differ in the last bit)
      const V c = to_vec(tab.cos), sn = to_vec(tab.sin);
      double err = 0;
      for (int p = 0; p < 8; ++p)
        for (int i = 0; i < hd / 2; ++i) {
          err = std::max(err, rel_diff(c[std::size_t(p * hd / 2 + i)], std::cos(p * f[std::size_t(i)])));
          err = std::max(err, rel_diff(sn[std::size_t(p * hd / 2 + i)], std::sin(p * f[std::size_t(i)])));
        }
      REQUIRE(err < 1e-15);
    }
    const V x = randn(std::size_t(N) * W, 121);
    View2<double> vx("x", N, W);
    from_vec(vx, x);
    rope_apply<double>(ex, vx, vpos, tab.cos, tab.sin, c0, nh, hd, false);
    const V y = to_vec(vx);
    REQUIRE(max_rel_err(y, naive_rope(x, pos, f, W, c0, nh, hd)) < 1e-14);
    for (std::size_t k = 0; k < y.size(); ++k) {
      const int c = int(k % std::size_t(W));
      if (c < c0 || c >= c0 + nh * hd) REQUIRE(y[k] == x[k]);
    }
    rope_apply<double>(ex, vx, vpos, tab.cos, tab.sin, c0, nh, hd, true);
    REQUIRE(max_rel_err(to_vec(vx), x) < 1e-12);

    // d dot(rope(x), w) / dx = rope^T w = inverse rope of w
    const V w = randn(std::size_t(N) * W, 122);
    View2<double> vw("w", N, W);
    from_vec(vw, w);
    rope_apply<double>(ex, vw, vpos, tab.cos, tab.sin, c0, nh, hd, true);
    REQUIRE(max_rel_err(to_vec(vw), finite_diff(x, [&](const V& xx) { return dot(naive_rope(xx, pos, f, W, c0, nh, hd), w); })) < kGradTol);
  }
}

// ---------------------------------------------------------------- SwiGLU, xIELU
namespace {
double silu(double x) { return x / (1 + std::exp(-x)); }

V naive_swiglu(const V& gu, int N, int F) {
  V y(std::size_t(N) * F);
  for (int n = 0; n < N; ++n)
    for (int f = 0; f < F; ++f)
      y[std::size_t(n * F + f)] = silu(gu[std::size_t(n * 2 * F + f)]) * gu[std::size_t(n * 2 * F + F + f)];
  return y;
}

double softplus(double x) { return std::log1p(std::exp(x)); }

V naive_xielu(const V& x, const V& p, double beta = 0.5, double eps = -1e-6) {
  const double ap = softplus(p[0]), an = beta + softplus(p[1]);
  V y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    y[i] = x[i] > 0 ? ap * x[i] * x[i] + beta * x[i] : an * (std::expm1(std::min(x[i], eps)) - x[i]) + beta * x[i];
  return y;
}
}  // namespace

TEST_CASE("swiglu matches silu(gate) * up and its backward matches finite differences", "[kernels][swiglu]") {
  ExecSpace ex;
  for (const auto& shape : {std::pair{13, 7}, std::pair{1, 1}}) {
    const int N = shape.first, F = shape.second;
    CAPTURE(N, F);
    V gu = randn(std::size_t(N) * 2 * F, 131, 2.0);
    if (N > 1) gu[0] = 0.0, gu[1] = 30.0, gu[2] = -30.0, gu[3] = -100.0, gu[4] = 1e-3, gu[5] = -1e-3;
    View2<double> vgu("gu", N, 2 * F), vy("y", N, F), gdu("gdu", N, 2 * F), gy("gy", N, F);
    from_vec(vgu, gu);
    swiglu_forward(ex, vy, vgu);
    REQUIRE(max_rel_err(to_vec(vy), naive_swiglu(gu, N, F)) < 1e-14);
    const V w = randn(std::size_t(N) * F, 132);
    from_vec(gy, w);
    from_vec(gdu, randn(gu.size(), 133));  // overwritten
    swiglu_backward(ex, gdu, vgu, gy);
    REQUIRE(max_rel_err(to_vec(gdu), finite_diff(gu, [&](const V& g) { return dot(naive_swiglu(g, N, F), w); })) < kGradTol);
  }
}

TEST_CASE("xielu matches the formula; its backward matches finite differences for inputs and parameters, in place too", "[kernels][xielu]") {
  ExecSpace ex;
  REQUIRE(std::abs(softplus(softplus_inverse(0.8)) - 0.8) < 1e-15);
  REQUIRE(std::abs(softplus(softplus_inverse(0.3)) - 0.3) < 1e-15);
  REQUIRE(std::abs(softplus_inverse(50.0) - 50.0) < 1e-15);  // log(e^50 - 1), without overflow
  REQUIRE(std::abs(softplus(softplus_inverse(25.0)) - 25.0) < 1e-14);
  REQUIRE_THROWS_AS(softplus_inverse(0.0), std::invalid_argument);
  // Apertus' initialisation and arbitrary raw values; n = 1000 sums over several chunks
  for (const auto& p : {V{softplus_inverse(0.8), softplus_inverse(0.8 - 0.5)}, V{-0.7, 1.3}})
    for (const std::size_t n : {std::size_t(13), std::size_t(1), std::size_t(1000)}) {
      CAPTURE(p[0], p[1], n);
      V x = randn(n, 141, 2.0);
      // near the kinks at 0 and eps = -1e-6 (farther than the finite-difference step), and far out
      const V special{0.01, -0.01, 3e-5, -3e-5, 0.5, -0.5, 20.0, -20.0, -50.0, 1e-4, -1e-4};
      if (n > 1)
        for (std::size_t i = 0; i < special.size(); ++i) x[i] = special[i];
      View1<double> vx("x", n), vy("y", n), vp("p", 2), gx("gx", n), gy("gy", n), gp("gp", 2);
      from_vec(vx, x), from_vec(vp, p);
      xielu_forward(ex, vy, vx, vp);
      REQUIRE(max_rel_err(to_vec(vy), naive_xielu(x, p)) < 1e-14);
      const V w = randn(n, 142), gp0 = randn(2, 143);
      from_vec(gy, w), from_vec(gp, gp0);
      from_vec(gx, randn(n, 144));  // overwritten
      xielu_backward(ex, gx, gp, vx, gy, vp);
      REQUIRE(max_rel_err(to_vec(gx), finite_diff(x, [&](const V& xx) { return dot(naive_xielu(xx, p), w); })) < kGradTol);
      REQUIRE(max_rel_err(to_vec(gp), plus(finite_diff(p, [&](const V& pp) { return dot(naive_xielu(x, pp), w); }), gp0)) < kGradTol);
      // in place: dinp aliases dout; bit-identical, parameter gradients too (a fixed order)
      View1<double> gp2("gp2", 2);
      from_vec(gp2, gp0);
      xielu_backward(ex, gy, gp2, vx, gy, vp);
      REQUIRE(to_vec(gy) == to_vec(gx));
      REQUIRE(to_vec(gp2) == to_vec(gp));
    }
}

// ---------------------------------------------------------------- embedding
TEST_CASE("embedding forward gathers rows and backward scatters deterministically", "[kernels][embedding]") {
  ExecSpace ex;
  const int B = 2, T = 3, C = 5, Vp = 7, maxT = 4;
  const std::vector<int> tok = {3, 0, 3, 6, 3, 1};  // repeats collide in dwte
  const V wte = randn(std::size_t(Vp) * C, 51), wpe = randn(std::size_t(maxT) * C, 52), w = randn(std::size_t(B) * T * C, 53);
  auto fwd = [&](const V& te, const V& pe) {
    V y(std::size_t(B) * T * C);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int c = 0; c < C; ++c)
          y[std::size_t((b * T + t) * C + c)] = te[std::size_t(tok[std::size_t(b * T + t)] * C + c)] + pe[std::size_t(t * C + c)];
    return y;
  };
  TokenView vt("tok", B, T);
  View2<double> vte("wte", Vp, C), vpe("wpe", maxT, C), gte("gwte", Vp, C), gpe("gwpe", maxT, C);
  View3<double> vy("y", B, T, C), gy("gy", B, T, C);
  from_vec(vt, tok), from_vec(vte, wte), from_vec(vpe, wpe), from_vec(gy, w);
  embedding_forward(ex, vy, vt, vte, vpe);
  REQUIRE(max_rel_err(to_vec(vy), fwd(wte, wpe)) == 0.0);
  TokenRows rows_of;
  rows_of.build(ex, tok, 0, Vp);
  REQUIRE(rows_of.groups == 4);  // rows 0, 1, 3, 6
  embedding_backward(ex, gte, gpe, gy, rows_of);
  REQUIRE(max_rel_err(to_vec(gte), finite_diff(wte, [&](const V& x) { return dot(fwd(x, wpe), w); })) < kGradTol);
  REQUIRE(max_rel_err(to_vec(gpe), finite_diff(wpe, [&](const V& x) { return dot(fwd(wte, x), w); })) < kGradTol);
}

TEST_CASE("vocabulary-parallel embedding: the shards' outputs and gradients add up to the whole", "[kernels][embedding][tp]") {
  ExecSpace ex;
  const int B = 2, T = 3, C = 4, Vp = 8, maxT = 3, R = 2, rows = Vp / R;
  const std::vector<int> tok = {3, 0, 5, 7, 3, 4};
  const V wte = randn(std::size_t(Vp) * C, 54), wpe = randn(std::size_t(maxT) * C, 55), w = randn(std::size_t(B) * T * C, 56);
  TokenView vt("tok", B, T);
  View2<double> vte("wte", Vp, C), vpe("wpe", maxT, C), gte("gwte", Vp, C), gpe("gwpe", maxT, C);
  View3<double> whole("y", B, T, C), gy("gy", B, T, C);
  from_vec(vt, tok), from_vec(vte, wte), from_vec(vpe, wpe), from_vec(gy, w);
  embedding_forward(ex, whole, vt, vte, vpe);
  TokenRows all_rows;
  all_rows.build(ex, tok, 0, Vp);
  embedding_backward(ex, gte, gpe, gy, all_rows);
  V sum(std::size_t(B) * T * C, 0.0), gshards;
  for (int r = 0; r < R; ++r) {
    View2<double> shard("shard", rows, C), gshard("gshard", rows, C), gpe_r("gpe_r", maxT, C);
    from_vec(shard, V(wte.begin() + r * rows * C, wte.begin() + (r + 1) * rows * C));
    View3<double> y("y_r", B, T, C);
    embedding_forward(ex, y, vt, shard, vpe, r * rows, r == 0);  // position once
    const V yr = to_vec(y);
    for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += yr[i];
    TokenRows shard_rows;
    shard_rows.build(ex, tok, r * rows, rows);
    embedding_backward(ex, gshard, gpe_r, gy, shard_rows);
    const V g = to_vec(gshard);
    gshards.insert(gshards.end(), g.begin(), g.end());
    REQUIRE(max_rel_err(to_vec(gpe_r), to_vec(gpe)) < 1e-15);  // every shard: the whole position gradient
  }
  REQUIRE(max_rel_err(sum, to_vec(whole)) < 1e-15);
  REQUIRE(max_rel_err(gshards, to_vec(gte)) < 1e-15);
}

TEST_CASE("vocabulary-parallel cross-entropy equals the whole-row one, padding masked", "[kernels][xent][tp]") {
  ExecSpace ex;
  // Vr = 11 real columns of Vp = 16, over R = 2 and 4 shards: the last shard is all padding at R = 4.
  const int N = 5, Vr = 11, Vp = 16;
  V logits = randn(std::size_t(N) * Vp, 62, 3.0);
  for (int n = 0; n < N; ++n)
    for (int v = Vr; v < Vp; ++v) logits[std::size_t(n * Vp + v)] = 50.0;
  std::vector<int> tg(static_cast<std::size_t>(N));
  for (int n = 0; n < N; ++n) tg[std::size_t(n)] = (4 * n + 2) % Vr;
  tg[1] = -1;  // an ignored row (document masking): loss 0, no gradient, on every shard
  Kokkos::View<int*, Layout, MemSpace> vt("targets", N);
  from_vec(vt, tg);
  View2<double> vl("logits", N, Vp), probs("probs", N, Vp);
  View1<double> losses("losses", N);
  from_vec(vl, logits);
  softmax_xent_forward(ex, probs, losses, vl, vt, Vr);
  softmax_xent_backward(ex, probs, probs, vt, 0.37, Vr);  // FD-checked above
  const V want_loss = to_vec(losses), want_grad = to_vec(probs);
  for (const int R : {2, 4}) {
    CAPTURE(R);
    const int Vl = Vp / R;
    std::vector<View2<double>> shard(static_cast<std::size_t>(R));
    View3<double> all("all_stats", R, N, 3);
    for (int r = 0; r < R; ++r) {
      V part;
      for (int n = 0; n < N; ++n)
        part.insert(part.end(), logits.begin() + n * Vp + r * Vl, logits.begin() + n * Vp + (r + 1) * Vl);
      shard[std::size_t(r)] = View2<double>("shard", N, Vl);
      from_vec(shard[std::size_t(r)], part);
      xent_shard_stats<double>(ex, Kokkos::subview(all, r, Kokkos::ALL, Kokkos::ALL), shard[std::size_t(r)], vt, Vr, r * Vl);
    }
    for (int r = 0; r < R; ++r) {
      View1<double> l("l", N);
      xent_shard_finish<double>(ex, shard[std::size_t(r)], l, shard[std::size_t(r)], all, vt, Vr, r * Vl);
      REQUIRE(max_rel_err(to_vec(l), want_loss) < 1e-13);
      softmax_xent_backward<double>(ex, shard[std::size_t(r)], shard[std::size_t(r)], vt, 0.37, Vr, r * Vl);
      const V g = to_vec(shard[std::size_t(r)]);
      for (int n = 0; n < N; ++n)
        for (int v = 0; v < Vl; ++v)
          REQUIRE(std::abs(g[std::size_t(n * Vl + v)] - want_grad[std::size_t(n * Vp + r * Vl + v)]) < 1e-14);
    }
  }
}

// ---------------------------------------------------------------- softmax + cross-entropy
TEST_CASE("softmax cross-entropy ignores padded columns and its backward matches finite differences", "[kernels][xent]") {
  ExecSpace ex;
  // (2, 2100, 2112): rows longer than a host reduction block (1024 values in kLanes partial sums).
  for (const auto& shape : {std::tuple{5, 7, 9}, std::tuple{1, 2, 2}, std::tuple{13, 11, 16}, std::tuple{2, 2100, 2112}}) {
    const int N = std::get<0>(shape), Vr = std::get<1>(shape), Vp = std::get<2>(shape);
    CAPTURE(N, Vr, Vp);
    V logits = randn(std::size_t(N) * Vp, 61, 3.0);
    for (int n = 0; n < N; ++n)
      for (int v = Vr; v < Vp; ++v) logits[std::size_t(n * Vp + v)] = 50.0;  // padding would win if counted
    std::vector<int> tg(static_cast<std::size_t>(N));
    for (int n = 0; n < N; ++n) tg[std::size_t(n)] = (3 * n + 1) % Vr;
    if (N > 1) tg[1] = -1;  // ignored row: loss 0 and no gradient
    const double dloss = 0.37;
    auto losses_of = [&](const V& lg) {
      V l(static_cast<std::size_t>(N));
      for (int n = 0; n < N; ++n) {
        double mx = -1e300, z = 0;
        for (int v = 0; v < Vr; ++v) mx = std::max(mx, lg[std::size_t(n * Vp + v)]);
        for (int v = 0; v < Vr; ++v) z += std::exp(lg[std::size_t(n * Vp + v)] - mx);
        l[std::size_t(n)] = tg[std::size_t(n)] < 0 ? 0.0 : -(lg[std::size_t(n * Vp + tg[std::size_t(n)])] - mx - std::log(z));
      }
      return l;
    };
    View2<double> vl("logits", N, Vp), probs("probs", N, Vp);
    View1<double> losses("losses", N);
    Kokkos::View<int*, Layout, MemSpace> vt("targets", N);
    from_vec(vl, logits), from_vec(vt, tg);
    softmax_xent_forward(ex, probs, losses, vl, vt, Vr);
    REQUIRE(max_rel_err(to_vec(losses), losses_of(logits)) < 1e-12);
    const V p = to_vec(probs);
    for (int n = 0; n < N; ++n)
      for (int v = Vr; v < Vp; ++v) REQUIRE(p[std::size_t(n * Vp + v)] == 0.0);
    softmax_xent_backward(ex, probs, probs, vt, dloss, Vr);  // in place, as the model does
    auto J = [&](const V& lg) { V l = losses_of(lg); double s = 0; for (double x : l) s += x; return dloss * s; };
    const V fd = finite_diff(logits, J);
    REQUIRE(max_rel_err(to_vec(probs), fd) < kGradTol);  // padded columns: fd is 0 and so is ours
    // The fused kernel: the two kernels' losses and gradient bit for bit, in place (as the model
    // calls it) and into another buffer, in double and in float.
    {
      View2<double> dl("dl", N, Vp);
      View1<double> fl("fused_losses", N);
      softmax_xent_fused(ex, dl, fl, vl, vt, Vr, dloss);
      REQUIRE(to_vec(fl) == to_vec(losses));
      REQUIRE(to_vec(dl) == to_vec(probs));
      softmax_xent_fused(ex, vl, fl, vl, vt, Vr, dloss);
      REQUIRE(to_vec(fl) == to_vec(losses));
      REQUIRE(to_vec(vl) == to_vec(probs));
      View2<float> lf("lf", N, Vp), pf("pf", N, Vp);
      View1<float> lsf("lsf", N), flf("flf", N);
      from_vec(lf, logits);
      softmax_xent_forward(ex, pf, lsf, lf, vt, Vr);
      softmax_xent_backward(ex, pf, pf, vt, dloss, Vr);
      softmax_xent_fused(ex, lf, flf, lf, vt, Vr, dloss);
      REQUIRE(to_vec(flf) == to_vec(lsf));
      REQUIRE(to_vec(lf) == to_vec(pf));
      // Into a bf16 buffer only: the same gradient rounded (as 16-bit words and as floats).
      V want = to_vec(pf);
      for (auto& x : want) x = round_bf16(float(x));
      Kokkos::View<std::uint16_t*, Layout, MemSpace> g16("g16", std::size_t(N) * Vp);
      View1<float> g32("g32", std::size_t(N) * Vp);
      from_vec(lf, logits);
      softmax_xent_fused_bf16(ex, lf, flf, lf, vt, Vr, dloss, g16.data());
      REQUIRE(to_vec(flf) == to_vec(lsf));
      V got16;
      for (double w : to_vec(g16)) got16.push_back(from_bf16(std::uint16_t(w)));
      REQUIRE(got16 == want);
      from_vec(lf, logits);
      softmax_xent_fused_bf16(ex, lf, flf, lf, vt, Vr, dloss, g32.data());
      REQUIRE(to_vec(g32) == want);
    }
  }
}

// ---------------------------------------------------------------- AdamW, norms
TEST_CASE("AdamW matches the reference update; sum of squares and clip factor", "[kernels][adamw]") {
  ExecSpace ex;
  const int n = 13;
  V p = randn(n, 71), m = randn(n, 72, 0.1), v = randn(n, 73, 0.1), g = randn(n, 74);
  for (auto& x : v) x = std::abs(x);
  AdamWStep s;
  s.lr = 0.01, s.beta1 = 0.8, s.beta2 = 0.95, s.eps = 1e-6, s.weight_decay = 0.1, s.t = 3, s.grad_scale = 0.5;
  View1<double> vp("p", n), vm("m", n), vv("v", n), vg("g", n);
  from_vec(vp, p), from_vec(vm, m), from_vec(vv, v), from_vec(vg, g);
  adamw_update(ex, vp, vm, vv, vg, s);
  for (int i = 0; i < n; ++i) {
    const std::size_t k = std::size_t(i);
    const double gi = g[k] * s.grad_scale;
    m[k] = s.beta1 * m[k] + (1 - s.beta1) * gi;
    v[k] = s.beta2 * v[k] + (1 - s.beta2) * gi * gi;
    const double mh = m[k] / (1 - std::pow(s.beta1, 3)), vh = v[k] / (1 - std::pow(s.beta2, 3));
    p[k] -= s.lr * (mh / (std::sqrt(vh) + s.eps) + s.weight_decay * p[k]);
  }
  REQUIRE(max_rel_err(to_vec(vp), p) < 1e-14);
  REQUIRE(max_rel_err(to_vec(vm), m) < 1e-14);
  REQUIRE(max_rel_err(to_vec(vv), v) < 1e-14);

  double ss = 0;
  for (double x : g) ss += x * x;
  REQUIRE(std::abs(sum_squares<double>(ex, vg) - ss) < 1e-12 * ss);
  REQUIRE(sum_squares<double>(ex, View1<double>("empty", 0)) == 0.0);
  REQUIRE(clip_factor(2.0, 1.0) == 0.5);
  REQUIRE(clip_factor(0.5, 1.0) == 1.0);
  REQUIRE(clip_factor(5.0, 0.0) == 1.0);
}

TEST_CASE("DiLoCo outer step: pseudo-gradient and Nesterov SGD match the reference", "[kernels][diloco]") {
  ExecSpace ex;
  const int n = 11;
  const V outer0 = randn(n, 91), local = randn(n, 92), mom0 = randn(n, 93, 0.1);
  for (const bool nesterov : {true, false}) {
    View1<double> vo("o", n), vl("l", n), vd("d", n), vm("m", n);
    from_vec(vo, outer0), from_vec(vl, local), from_vec(vm, mom0);
    pseudo_gradient<double>(ex, vo, vl, vd);
    OuterStep s;
    s.lr = 0.7, s.momentum = 0.9, s.nesterov = nesterov, s.delta_scale = 0.5;
    outer_sgd_update<double>(ex, vo, vm, vd, s);
    V o = outer0, m = mom0;
    for (std::size_t i = 0; i < std::size_t(n); ++i) {
      const double g = (outer0[i] - local[i]) * 0.5;
      m[i] = 0.9 * m[i] + g;
      o[i] -= 0.7 * (nesterov ? g + 0.9 * m[i] : m[i]);
    }
    REQUIRE(max_rel_err(to_vec(vo), o) < 1e-14);
    REQUIRE(max_rel_err(to_vec(vm), m) < 1e-14);
  }
  // lr 1, no momentum, one site: the outer step lands on the local parameters.
  View1<double> vo("o", n), vl("l", n), vd("d", n), vm("m", n);
  from_vec(vo, outer0), from_vec(vl, local);
  pseudo_gradient<double>(ex, vo, vl, vd);
  OuterStep s;
  s.lr = 1, s.momentum = 0;
  outer_sgd_update<double>(ex, vo, vm, vd, s);
  REQUIRE(max_rel_err(to_vec(vo), local) < 1e-14);
  // Streaming DiLoCo's merge: mix * local + (1 - mix) * outer
  View1<double> ml("ml", n), mo("mo", n);
  from_vec(ml, local), from_vec(mo, outer0);
  outer_merge<double>(ex, ml, mo, 0.25);
  V want(std::size_t(n), 0.0);
  for (std::size_t i = 0; i < std::size_t(n); ++i) want[i] = 0.25 * local[i] + 0.75 * outer0[i];
  REQUIRE(max_rel_err(to_vec(ml), want) < 1e-14);
}

TEST_CASE("cross-site codecs: bytes, per-value error bounds, residual = input - decoded, error feedback telescopes", "[kernels][compress]") {
  ExecSpace ex;
  const std::size_t n = 1000;  // not a multiple of any block: a short last block
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = float(std::sin(0.37 * double(i)) * (1.0 + double(i % 7)) * 1e-3);
  x[5] = 0, x[300] = -0.02f;  // a zero, and one value far above its block's others
  View1<float> v("v", n);
  from_vec(v, x);
  for (auto c : {Compression::none, Compression::bf16, Compression::int8, Compression::int4, Compression::topk}) {
    CAPTURE(compression_name(c));
    REQUIRE(parse_compression(compression_name(c)) == c);
    const std::size_t bytes = compressed_bytes(c, n);
    const std::size_t want = c == Compression::none ? 4000
                             : c == Compression::bf16 ? 2000
                             : c == Compression::int8 ? 4 * 4 + 1000                // 4 scales
                             : c == Compression::int4 ? 4 * 16 + 500                // 16 scales, 2 values a byte
                                                      : 4 * std::size_t(kTopkKeep) * 3;  // 4 blocks of 8 kept
    REQUIRE(bytes == want);
    View1<float> residual("r", n), acc("acc", n);
    std::vector<std::uint8_t> wire(bytes);
    compress_with_feedback(ex, c, v, residual, wire.data());
    decompress_add(ex, c, wire.data(), acc);
    ex.fence();
    const auto y = to_vec(acc), r = to_vec(residual);
    std::size_t bad = 0, exact_residual = 0;
    double first_err = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const double err = std::fabs(double(x[i]) - y[i]);
      first_err = std::max(first_err, err);
      double bound = 0;  // per value, from its own block
      const std::size_t blk = c == Compression::int4 ? kInt4Block : c == Compression::int8 ? kInt8Block : kTopkBlock;
      const std::size_t lo = i / blk * blk, hi = std::min(n, lo + blk);
      double amax = 0;
      for (std::size_t j = lo; j < hi; ++j) amax = std::max(amax, double(std::fabs(x[j])));
      // to rounding (the kernel may fuse x - k * scale into one FMA); NaN fails
      if (std::fabs(double(x[i]) - y[i] - r[i]) <= amax * 0x1p-22) ++exact_residual;
      if (c == Compression::bf16) bound = std::fabs(x[i]) * 0x1p-8;
      if (c == Compression::int8) bound = amax / 254.0 * 1.0001;
      if (c == Compression::int4) bound = amax / 14.0 * 1.0001;
      if (c == Compression::topk) {
        // kept: bf16 rounding; dropped: no larger than any kept value of its block
        std::vector<double> mags;
        for (std::size_t j = lo; j < hi; ++j) mags.push_back(std::fabs(x[j]));
        std::sort(mags.rbegin(), mags.rend());
        const double kth = mags[std::min(mags.size(), std::size_t(kTopkKeep)) - 1];
        bound = y[i] != 0 ? std::fabs(x[i]) * 0x1p-8 : kth;
        if (y[i] == 0 && std::fabs(x[i]) > kth) bound = -1;  // a larger value was dropped
      }
      if (!(err <= bound)) ++bad;
    }
    CAPTURE(first_err, bad, exact_residual);
    REQUIRE(bad == 0);
    REQUIRE(exact_residual == n);
    if (c == Compression::topk) {  // exactly kTopkKeep values of each full block were sent
      std::size_t sent = 0;
      for (double t : y) sent += t != 0;
      REQUIRE(sent == 4 * std::size_t(kTopkKeep));
    }
    if (c == Compression::none) {
      REQUIRE(first_err == 0);
      continue;
    }
    // Error feedback: K calls on the same input send K * x minus the last residual, so the mean
    // of what was sent is off by at most max |residual| / K.
    const int K = 64;
    for (int k = 1; k < K; ++k) {
      compress_with_feedback(ex, c, v, residual, wire.data());
      decompress_add(ex, c, wire.data(), acc);
    }
    ex.fence();
    const auto sum = to_vec(acc), last = to_vec(residual);
    double mean_err = 0, rmax = 0;
    for (std::size_t i = 0; i < n; ++i) {
      mean_err = std::max(mean_err, std::fabs(sum[i] / K - x[i]));
      rmax = std::max(rmax, std::fabs(last[i]));
    }
    CAPTURE(mean_err, rmax);
    REQUIRE(mean_err <= rmax / K * 1.01 + 1e-9);
    // The residual stays bounded: within one encoding step of the largest |x| (0.02) plus the
    // residual itself (int8: /254, int4: /14, geometric), and for top-k what waits its turn: at
    // most 256 / 8 calls' worth of a block's values.
    const double A = 0.02;
    const double rbound = c == Compression::bf16   ? A * 0x1p-8 * 1.01
                          : c == Compression::int8 ? A / 253.0
                          : c == Compression::int4 ? A / 13.0
                                                   : A * double(kTopkBlock) / kTopkKeep;
    REQUIRE(rmax <= rbound);
    REQUIRE(mean_err < first_err / 4);
  }
}

// ---------------------------------------------------------------- float against double
TEST_CASE("float kernels agree with double kernels", "[kernels][float]") {
  Blas blas;
  const int B = 2, T = 9, C = 8, NH = 2;
  const V qkv = randn(std::size_t(B) * T * 3 * C, 81);
  View3<double> qd("qd", B, T, 3 * C), od("od", B, T, C);
  View3<float> qf("qf", B, T, 3 * C), of("of", B, T, C);
  View4<double> ad("ad", B, NH, T, T);
  View4<float> af("af", B, NH, T, T);
  from_vec(qd, qkv), from_vec(qf, qkv);
  attention_forward(blas, od, ad, qd, NH);
  attention_forward(blas, of, af, qf, NH);
  REQUIRE(max_rel_err(to_vec(of), to_vec(od)) < 1e-5);
  View2<double> xd("xd", 7, C), wd("wd", 5, C), yd("yd", 7, 5);
  View2<float> xf("xf", 7, C), wf("wf", 5, C), yf("yf", 7, 5);
  const V x = randn(7 * C, 82), w = randn(5 * C, 83);
  from_vec(xd, x), from_vec(xf, x), from_vec(wd, w), from_vec(wf, w);
  matmul_forward(blas, yd, xd, wd, View1<double>());
  matmul_forward(blas, yf, xf, wf, View1<float>());
  REQUIRE(max_rel_err(to_vec(yf), to_vec(yd)) < 1e-5);
}

TEST_CASE("float norm, rope, activation and grouped-query attention kernels agree with double ones", "[kernels][float]") {
  ExecSpace ex;
  const double tol = 200 * double(std::numeric_limits<float>::epsilon());  // ~2.4e-5
  const int N = 13, C = 7;
  const V x = randn(std::size_t(N) * C, 151), w = randn(std::size_t(C), 152), g = randn(std::size_t(N) * C, 153);
  SECTION("rmsnorm") {
    View2<double> xd("xd", N, C), yd("yd", N, C), gd("gd", N, C), dxd("dxd", N, C);
    View2<float> xf("xf", N, C), yf("yf", N, C), gf("gf", N, C), dxf("dxf", N, C);
    View1<double> wd("wd", C), rd("rd", N), dwd("dwd", C);
    View1<float> wf("wf", C), rf("rf", N), dwf("dwf", C);
    from_vec(xd, x), from_vec(xf, x), from_vec(wd, w), from_vec(wf, w), from_vec(gd, g), from_vec(gf, g);
    rmsnorm_forward(ex, yd, rd, xd, wd);
    rmsnorm_forward(ex, yf, rf, xf, wf);
    REQUIRE(max_rel_err(to_vec(yf), to_vec(yd)) < tol);
    View2<double> sd("sd", norm_scratch_rows(N), 2 * C);
    View2<float> sf("sf", norm_scratch_rows(N), 2 * C);
    rmsnorm_backward(ex, dxd, dwd, gd, xd, wd, rd, sd);
    rmsnorm_backward(ex, dxf, dwf, gf, xf, wf, rf, sf);
    REQUIRE(max_rel_err(to_vec(dxf), to_vec(dxd)) < tol);
    REQUIRE(max_rel_err(to_vec(dwf), to_vec(dwd)) < tol);
  }
  SECTION("QK-norm") {
    const int W = 23, c0 = 3, nh = 3, hd = 6;
    const V xx = randn(std::size_t(N) * W, 154), ww = randn(std::size_t(hd), 155), gg = randn(std::size_t(N) * W, 156);
    View2<double> xd("xd", N, W), yd("yd", N, W), gd("gd", N, W), rd("rd", N, nh);
    View2<float> xf("xf", N, W), yf("yf", N, W), gf("gf", N, W), rf("rf", N, nh);
    View1<double> wd("wd", hd), dwd("dwd", hd);
    View1<float> wf("wf", hd), dwf("dwf", hd);
    from_vec(xd, xx), from_vec(xf, xx), from_vec(wd, ww), from_vec(wf, ww), from_vec(gd, gg), from_vec(gf, gg);
    head_rmsnorm_forward(ex, yd, rd, xd, wd, c0, nh);
    head_rmsnorm_forward(ex, yf, rf, xf, wf, c0, nh);
    REQUIRE(max_rel_err(to_vec(yf), to_vec(yd)) < tol);
    head_rmsnorm_backward(ex, gd, dwd, gd, xd, wd, rd, c0, nh);
    head_rmsnorm_backward(ex, gf, dwf, gf, xf, wf, rf, c0, nh);
    REQUIRE(max_rel_err(to_vec(gf), to_vec(gd)) < tol);
    REQUIRE(max_rel_err(to_vec(dwf), to_vec(dwd)) < tol);
  }
  SECTION("rope at large positions: the angle is computed in double") {
    const int W = 16, hd = 8, nh = 2;
    RopeScaling sc;
    sc.llama3 = true;
    const V f = rope_inv_freq(hd, 500000.0, sc);
    const RopeTable<double> td(f, 131072);
    const RopeTable<float> tf(f, 131072);
    const auto vpos = device_positions({0, 1, 100000, 131071, 7, 65536});
    const V xx = randn(6 * W, 157);
    View2<double> xd("xd", 6, W);
    View2<float> xf("xf", 6, W);
    from_vec(xd, xx), from_vec(xf, xx);
    rope_apply<double>(ex, xd, vpos, td.cos, td.sin, 0, nh, hd, false);
    rope_apply<float>(ex, xf, vpos, tf.cos, tf.sin, 0, nh, hd, false);
    REQUIRE(max_rel_err(to_vec(xf), to_vec(xd)) < tol);
  }
  SECTION("swiglu") {
    const V gu = randn(std::size_t(N) * 2 * C, 158, 3.0);
    View2<double> gud("gud", N, 2 * C), yd("yd", N, C), gd("gd", N, C), dgd("dgd", N, 2 * C);
    View2<float> guf("guf", N, 2 * C), yf("yf", N, C), gf("gf", N, C), dgf("dgf", N, 2 * C);
    from_vec(gud, gu), from_vec(guf, gu), from_vec(gd, g), from_vec(gf, g);
    swiglu_forward(ex, yd, gud);
    swiglu_forward(ex, yf, guf);
    REQUIRE(max_rel_err(to_vec(yf), to_vec(yd)) < tol);
    swiglu_backward(ex, dgd, gud, gd);
    swiglu_backward(ex, dgf, guf, gf);
    REQUIRE(max_rel_err(to_vec(dgf), to_vec(dgd)) < tol);
  }
  SECTION("xielu") {
    const std::size_t n = 1000;
    const V xx = randn(n, 159, 2.0), gg = randn(n, 160), p{softplus_inverse(0.8), softplus_inverse(0.3)};
    View1<double> xd("xd", n), yd("yd", n), gd("gd", n), pd("pd", 2), dpd("dpd", 2);
    View1<float> xf("xf", n), yf("yf", n), gf("gf", n), pf("pf", 2), dpf("dpf", 2);
    from_vec(xd, xx), from_vec(xf, xx), from_vec(gd, gg), from_vec(gf, gg), from_vec(pd, p), from_vec(pf, p);
    xielu_forward(ex, yd, xd, pd);
    xielu_forward(ex, yf, xf, pf);
    REQUIRE(max_rel_err(to_vec(yf), to_vec(yd)) < tol);
    xielu_backward(ex, gd, dpd, xd, gd, pd);
    xielu_backward(ex, gf, dpf, xf, gf, pf);
    REQUIRE(max_rel_err(to_vec(gf), to_vec(gd)) < tol);
    // a sum of 1000 terms of size ~10: relative to the sum's magnitude
    const V a = to_vec(dpf), b = to_vec(dpd);
    for (int i = 0; i < 2; ++i) REQUIRE(std::abs(a[std::size_t(i)] - b[std::size_t(i)]) < tol * std::max(1.0, std::abs(b[std::size_t(i)])));
  }
  SECTION("grouped-query attention, matrix and tiled") {
    Blas blas;
    const int B = 2, T = 37, NH = 6, KV = 2, hs = 4, Cq = NH * hs, Wq = Cq + 2 * KV * hs;
    const V qkv = randn(std::size_t(B) * T * Wq, 161), go = randn(std::size_t(B) * T * Cq, 162);
    View3<double> qd("qd", B, T, Wq), od("od", B, T, Cq), ld("ld", B, NH, T), gd("gd", B, T, Cq), dqd("dqd", B, T, Wq);
    View3<float> qf("qf", B, T, Wq), of("of", B, T, Cq), lf("lf", B, NH, T), gf("gf", B, T, Cq), dqf("dqf", B, T, Wq);
    from_vec(qd, qkv), from_vec(qf, qkv), from_vec(gd, go), from_vec(gf, go);
    attention_tiled_forward<double>(ex, od, ld, qd, NH, KV);
    attention_tiled_forward<float>(ex, of, lf, qf, NH, KV);
    REQUIRE(max_rel_err(to_vec(of), to_vec(od)) < tol);
    attention_tiled_backward<double>(ex, dqd, gd, qd, od, ld, NH, KV);
    attention_tiled_backward<float>(ex, dqf, gf, qf, of, lf, NH, KV);
    REQUIRE(max_rel_err(to_vec(dqf), to_vec(dqd)) < tol);
    View4<double> ad("ad", B, NH, T, T), sd("sd", B, NH, T, T);
    View4<float> af("af", B, NH, T, T), sf("sf", B, NH, T, T);
    attention_forward(blas, od, ad, qd, NH, KV);
    attention_forward(blas, of, af, qf, NH, KV);
    REQUIRE(max_rel_err(to_vec(of), to_vec(od)) < tol);
    attention_backward(blas, dqd, sd, gd, qd, ad, NH, KV);
    attention_backward(blas, dqf, sf, gf, qf, af, NH, KV);
    REQUIRE(max_rel_err(to_vec(dqf), to_vec(dqd)) < tol);
  }
}

// ---------------------------------------------------------------- determinism across thread counts
TEST_CASE("kernels that promise determinism: a checksum of their bits, compared across thread counts by determinism.sh", "[kernels][determinism]") {
  // The grouped embedding backward (one team per table row, positions in order) and the tiled
  // attention (one team per tile, fixed loop orders, no atomics), forward and backward, with and
  // without document masking. tests/determinism.sh runs this case at OMP_NUM_THREADS=1 and 2 and
  // requires the same checksum; here it checks that the bits do not change from call to call.
  ExecSpace ex;
  std::uint64_t hash = 1469598103934665603ull;  // FNV-1a over the output bits
  auto mix = [&](const auto& view) {
    auto h = Kokkos::create_mirror_view(view);
    Kokkos::deep_copy(h, view);
    const auto* p = reinterpret_cast<const unsigned char*>(h.data());
    for (std::size_t i = 0; i < h.span() * sizeof(typename decltype(h)::value_type); ++i) hash = (hash ^ p[i]) * 1099511628211ull;
  };
  auto run = [&] {
    hash = 1469598103934665603ull;
    const int B = 4, T = 70, C = 32, Vp = 64;
    std::vector<int> tok(std::size_t(B) * T);
    for (std::size_t i = 0; i < tok.size(); ++i) tok[i] = int((i * 7 + i / 5) % 37);  // rows used many times
    TokenView vt("tok", B, T);
    View2<float> gte("gwte", Vp, C), gpe("gwpe", T, C);
    View3<float> gy("gy", B, T, C);
    from_vec(vt, tok);
    const V w = randn(std::size_t(B) * T * C, 201);
    from_vec(gy, std::vector<float>(w.begin(), w.end()));
    TokenRows rows_of;
    rows_of.build(ex, tok, 0, Vp);
    embedding_backward(ex, gte, gpe, gy, rows_of);
    mix(gte), mix(gpe);
    const int NH = 4, KV = 2, hs = 16, W = (NH + 2 * KV) * hs;
    const V qkv = randn(std::size_t(B) * T * W, 202), dout = randn(std::size_t(B) * T * NH * hs, 203);
    View3<float> vqkv("qkv", B, T, W), out("out", B, T, NH * hs), lse("lse", B, NH, T), gqkv("gqkv", B, T, W),
        gout("gout", B, T, NH * hs);
    from_vec(vqkv, std::vector<float>(qkv.begin(), qkv.end()));
    from_vec(gout, std::vector<float>(dout.begin(), dout.end()));
    std::vector<int> pos(std::size_t(B) * T);
    for (std::size_t i = 0; i < pos.size(); ++i) pos[i] = int(i % std::size_t(T)) % 23;  // documents of 23 tokens
    Kokkos::View<int*, Layout, MemSpace> vpos("pos", pos.size());
    from_vec(vpos, pos);
    for (const bool masked : {false, true}) {
      const In1<int> dp = masked ? In1<int>(vpos) : In1<int>();
      attention_tiled_forward<float>(ex, out, lse, vqkv, NH, KV, dp);
      attention_tiled_backward<float>(ex, gqkv, gout, vqkv, out, lse, NH, KV, dp);
      mix(out), mix(lse), mix(gqkv);
    }
    return hash;
  };
  const std::uint64_t first = run();
  REQUIRE(run() == first);
  std::printf("determinism: concurrency %d checksum %016llx\n", int(ExecSpace().concurrency()),
              static_cast<unsigned long long>(first));
}

TEST_CASE("the comparison helpers treat NaN and inf as an infinite difference", "[helpers]") {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  REQUIRE(max_rel_err({1.0, 2.0}, {1.0, 2.0}) == 0.0);
  REQUIRE(max_rel_err({1.0, nan}, {1.0, 2.0}) == inf);  // a NaN output fails every "< tol" check
  REQUIRE(max_rel_err({1.0, 2.0}, {nan, 2.0}) == inf);
  REQUIRE(max_rel_err({inf, 2.0}, {inf, 2.0}) == inf);
  REQUIRE_FALSE(max_rel_err({nan}, {1.0}) < kGradTol);
}
