#pragma once
// Shared test helpers: views <-> vectors, random data, finite differences.

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/kernels/blas.hpp"

namespace tapestry::test {

/// A Blas of `precision` on the bf16 engine `engine`: "auto" (the build's: oneDNN's 16-bit words
/// where the CPU has bf16) or "sgemm" (the rounded-float path). The Blas reads TAPESTRY_BF16_GEMM
/// when it is made; the variable is unset again after.
inline std::unique_ptr<kernels::Blas> blas_on(const std::string& engine, Precision precision = Precision::bf16) {
  setenv("TAPESTRY_BF16_GEMM", engine.c_str(), 1);
  auto blas = std::make_unique<kernels::Blas>(ExecSpace(), precision);
  unsetenv("TAPESTRY_BF16_GEMM");
  return blas;
}

template <class V> std::vector<double> to_vec(const V& v) {
  auto h = Kokkos::create_mirror_view(v);
  Kokkos::deep_copy(h, v);
  return std::vector<double>(h.data(), h.data() + h.span());
}

template <class V, class S> void from_vec(const V& v, const std::vector<S>& x) {
  REQUIRE(x.size() == v.span());
  auto h = Kokkos::create_mirror_view(v);
  std::copy(x.begin(), x.end(), h.data());
  Kokkos::deep_copy(v, h);
}

inline std::vector<double> randn(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> x(n);
  for (auto& v : x) v = d(rng);
  return x;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

/// Largest |a - b| / max(1, |b|).
/// |a - b| / max(1, |b|); infinite when either value is NaN or infinite (std::max would drop a NaN).
inline double rel_diff(double a, double b) {
  if (!std::isfinite(a) || !std::isfinite(b)) return std::numeric_limits<double>::infinity();
  return std::abs(a - b) / std::max(1.0, std::abs(b));
}

inline double max_rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double e = 0;
  for (std::size_t i = 0; i < a.size(); ++i) e = std::max(e, rel_diff(a[i], b[i]));
  return e;
}

/// Central finite differences of J(x) for every element of x.
inline std::vector<double> finite_diff(std::vector<double> x, const std::function<double(const std::vector<double>&)>& J,
                                       double h = 1e-5) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double jp = J(x);
    x[i] = x0 - h;
    const double jm = J(x);
    x[i] = x0;
    g[i] = (jp - jm) / (2 * h);
  }
  return g;
}

/// Tolerance for double-precision gradient checks with h = 1e-5: truncation O(h^2) plus rounding.
constexpr double kGradTol = 1e-6;

}  // namespace tapestry::test
