// Every kernel: forward against a naive reference, backward against central finite differences,
// both in double precision, on odd sizes; and float against double.
#include <tuple>

#include "helpers.hpp"
#include "tapestry/kernels/attention.hpp"
#include "tapestry/kernels/attention_tiled.hpp"
#include "tapestry/kernels/bf16.hpp"
#include "tapestry/kernels/blas.hpp"
#ifdef TAPESTRY_HAVE_CUBLAS
#include "tapestry/kernels/cublas.hpp"
#endif
#include "tapestry/kernels/crossentropy.hpp"
#include "tapestry/kernels/elementwise.hpp"
#include "tapestry/kernels/embedding.hpp"
#include "tapestry/kernels/layernorm.hpp"
#include "tapestry/kernels/matmul.hpp"
#include "tapestry/kernels/optim.hpp"

using namespace tapestry;
using namespace tapestry::kernels;
using namespace tapestry::test;
using V = std::vector<double>;

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
}  // namespace

TEST_CASE("bf16 gemm: bf16-rounded inputs, fp32 accumulation; fp32 gemm is not rounded", "[kernels][bf16]") {
  const int M = 19, N = 23, K = 301, count = 3;
  const long sa = long(M) * K, sb = long(K) * N;
  const V A = randn(std::size_t(sa) * count, 91), B = randn(std::size_t(sb) * count, 92);
  View1<float> a("a", A.size()), b("b", B.size()), c("c", std::size_t(count) * M * N);
  from_vec(a, A), from_vec(b, B);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      CAPTURE(ta, tb);
      const V exact = ref_gemm(A, B, ta, tb, M, N, K, sa, sb, count, false);
      const V rounded = ref_gemm(A, B, ta, tb, M, N, K, sa, sb, count, true);
      auto run = [&](Precision p) {
        Blas blas(ExecSpace(), p);
        blas.gemm_strided_batched<float>(ta, tb, M, N, K, 1.0f, a.data(), ta ? M : K, sa, b.data(), tb ? K : N, sb,
                                         0.0f, c.data(), N, long(M) * N, count);
        return to_vec(c);
      };
      // fp32 accumulation of K products of size ~1: error ~ sqrt(K) * 2^-24 * sqrt(K); bf16 input
      // rounding moves each product by ~2^-8 relative: ~ sqrt(K) * 2^-8 in total.
      auto max_abs = [](const V& x, const V& y) {
        double m = 0;
        for (std::size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
        return m;
      };
      const V f32 = run(Precision::fp32), bf = run(Precision::bf16);
      REQUIRE(max_abs(f32, exact) < 1e-3);
      REQUIRE(max_abs(bf, rounded) < 1e-3);  // what the bf16 path computes
      REQUIRE(max_abs(bf, exact) > 1e-2);    // and it is not the fp32 product
      REQUIRE(max_abs(bf, exact) < 1.0);
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
  for (const auto& shape : {std::pair{13, 7}, std::pair{1, 1}, std::pair{3, 64}}) {
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
    layernorm_backward(ex, gx, gw, gb, gout, vx, vw, mean, rstd);
    auto add = [](V a, const V& b0) { for (std::size_t i = 0; i < a.size(); ++i) a[i] += b0[i]; return a; };
    REQUIRE(max_rel_err(to_vec(gx), add(finite_diff(x, [&](const V& xx) { return dot(naive_layernorm(xx, w, b, N, C), wout); }), gx0)) < kGradTol);
    REQUIRE(max_rel_err(to_vec(gw), add(finite_diff(w, [&](const V& ww) { return dot(naive_layernorm(x, ww, b, N, C), wout); }), gw0)) < kGradTol);
    REQUIRE(max_rel_err(to_vec(gb), add(finite_diff(b, [&](const V& bb) { return dot(naive_layernorm(x, w, bb, N, C), wout); }), gb0)) < kGradTol);
  }
}

// ---------------------------------------------------------------- attention
namespace {
/// Causal multi-head attention, straight from the definition.
V naive_attention(const V& qkv, int B, int T, int C, int NH) {
  const int hs = C / NH;
  V out(std::size_t(B) * T * C, 0.0);
  auto at = [&](int b, int t, int c) { return qkv[std::size_t((b * T + t) * 3 * C + c)]; };
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < T; ++t) {
        V s(std::size_t(t) + 1);
        double mx = -1e300;
        for (int t2 = 0; t2 <= t; ++t2) {
          double d = 0;
          for (int j = 0; j < hs; ++j) d += at(b, t, h * hs + j) * at(b, t2, C + h * hs + j);
          s[std::size_t(t2)] = d / std::sqrt(double(hs));
          mx = std::max(mx, s[std::size_t(t2)]);
        }
        double z = 0;
        for (auto& v : s) z += (v = std::exp(v - mx));
        for (int j = 0; j < hs; ++j) {
          double o = 0;
          for (int t2 = 0; t2 <= t; ++t2) o += s[std::size_t(t2)] / z * at(b, t2, 2 * C + h * hs + j);
          out[std::size_t((b * T + t) * C + h * hs + j)] = o;
        }
      }
  return out;
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
      xent_shard_finish<double>(ex, shard[std::size_t(r)], l, shard[std::size_t(r)], all, Vr, r * Vl);
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
  for (const auto& shape : {std::tuple{5, 7, 9}, std::tuple{1, 2, 2}, std::tuple{13, 11, 16}}) {
    const int N = std::get<0>(shape), Vr = std::get<1>(shape), Vp = std::get<2>(shape);
    CAPTURE(N, Vr, Vp);
    V logits = randn(std::size_t(N) * Vp, 61, 3.0);
    for (int n = 0; n < N; ++n)
      for (int v = Vr; v < Vp; ++v) logits[std::size_t(n * Vp + v)] = 50.0;  // padding would win if counted
    std::vector<int> tg(static_cast<std::size_t>(N));
    for (int n = 0; n < N; ++n) tg[std::size_t(n)] = (3 * n + 1) % Vr;
    const double dloss = 0.37;
    auto losses_of = [&](const V& lg) {
      V l(static_cast<std::size_t>(N));
      for (int n = 0; n < N; ++n) {
        double mx = -1e300, z = 0;
        for (int v = 0; v < Vr; ++v) mx = std::max(mx, lg[std::size_t(n * Vp + v)]);
        for (int v = 0; v < Vr; ++v) z += std::exp(lg[std::size_t(n * Vp + v)] - mx);
        l[std::size_t(n)] = -(lg[std::size_t(n * Vp + tg[std::size_t(n)])] - mx - std::log(z));
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
