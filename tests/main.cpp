// Test runner: Kokkos lives for the whole session; every View dies inside a test case.
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif
#include <Kokkos_Core.hpp>
#include <cstdio>
#include <cstdlib>
#include <exception>

int main(int argc, char** argv) {
  setenv("OMP_PROC_BIND", "false", 0);  // as the executable does: quiet on OpenMP unless the site binds
  try {
    Kokkos::initialize();
  } catch (const std::exception& e) {  // no usable device, say: one line, not std::terminate's
    std::fprintf(stderr, "%s: error: Kokkos could not start: %s\n", argv[0], e.what());
    return 1;
  }
  const int rc = Catch::Session().run(argc, argv);
  Kokkos::finalize();
  return rc;
}
