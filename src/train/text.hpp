#pragma once
// Small helpers private to the train layer: wall-clock timing and printf-style numbers.
#include <chrono>
#include <cstdio>
#include <string>

namespace tapestry::train::detail {

using Clock = std::chrono::steady_clock;

/// Seconds since `t0`.
inline double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// One number formatted with a printf format, e.g. fmt("%.2f", x).
inline std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

}  // namespace tapestry::train::detail
