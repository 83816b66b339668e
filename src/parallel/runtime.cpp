#include "tapestry/parallel/runtime.hpp"

#include <Kokkos_Core.hpp>
#include <string>
#include <vector>

namespace tapestry::parallel {

Runtime::Runtime(int& argc, char**& argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  // Kokkos sees only its own --kokkos-* arguments (otherwise it answers --help too).
  std::vector<char*> kargs{argv[0]};
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]).rfind("--kokkos-", 0) == 0) kargs.push_back(argv[i]);
  int kargc = int(kargs.size());
  kargs.push_back(nullptr);
  Kokkos::initialize(kargc, kargs.data());
}

Runtime::~Runtime() {
  Kokkos::finalize();
  MPI_Finalize();
}

}  // namespace tapestry::parallel
