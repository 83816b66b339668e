#pragma once
// Catch2 v2 (Debian) or v3, behind one include and one spelling.
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
using Catch::Approx;
namespace Catch::Matchers {
inline auto Contains(const std::string& s) { return ContainsSubstring(s); }
}  // namespace Catch::Matchers
#else
#include <catch2/catch.hpp>
#endif
