// Test runner: Kokkos lives for the whole session; every View dies inside a test case.
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif
#include <Kokkos_Core.hpp>
#include <cstdlib>

int main(int argc, char** argv) {
  setenv("OMP_PROC_BIND", "false", 0);  // as the executable does: quiet on OpenMP unless the site binds
  Kokkos::initialize();
  const int rc = Catch::Session().run(argc, argv);
  Kokkos::finalize();
  return rc;
}
