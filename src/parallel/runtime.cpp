#include "tapestry/parallel/runtime.hpp"

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#ifdef TAPESTRY_HAVE_ONEDNN
#include "tapestry/kernels/onednn.hpp"
#endif

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>
#endif

namespace tapestry::parallel {

#ifdef KOKKOS_ENABLE_CUDA
namespace {

/// The compute capability the Kokkos found was built for (Kokkos builds one GPU architecture).
int built_sm() {
#if defined(KOKKOS_ARCH_BLACKWELL120)
  return 120;
#elif defined(KOKKOS_ARCH_BLACKWELL100)
  return 100;
#elif defined(KOKKOS_ARCH_HOPPER90)
  return 90;
#elif defined(KOKKOS_ARCH_ADA89)
  return 89;
#elif defined(KOKKOS_ARCH_AMPERE87)
  return 87;
#elif defined(KOKKOS_ARCH_AMPERE86)
  return 86;
#elif defined(KOKKOS_ARCH_AMPERE80)
  return 80;
#elif defined(KOKKOS_ARCH_TURING75)
  return 75;
#elif defined(KOKKOS_ARCH_VOLTA72)
  return 72;
#elif defined(KOKKOS_ARCH_VOLTA70)
  return 70;
#else
  return 0;  // unknown to this list: no check
#endif
}

std::string sm_name(int sm) { return "sm_" + std::to_string(sm); }

/// This rank's GPU, from its node-local rank: device `local rank` when the node's ranks see enough
/// GPUs, device 0 when each rank sees one (a scheduler's per-task binding). `error` is one line
/// naming rank, node and device when that cannot work; `line` describes the choice for the log.
struct GpuChoice {
  int device = -1;
  std::string error, line;
};

GpuChoice choose_gpu(MPI_Comm world, int rank) {
  GpuChoice c;
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  int lr = 0, ls = 1;
  MPI_Comm_rank(node, &lr);
  MPI_Comm_size(node, &ls);
  char host[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_Get_processor_name(host, &len);
  const char* cvd = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string who = "rank " + std::to_string(rank) + " on node " + host + " (local rank " + std::to_string(lr) +
                          " of " + std::to_string(ls) + ")";
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  unsigned char uuid[16] = {};
  if (e != cudaSuccess || n == 0) {
    c.error = who + ": no CUDA device visible (" + (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices") +
              "; CUDA_VISIBLE_DEVICES=" + (cvd ? "'" + std::string(cvd) + "'" : "unset") + ")";
  } else if (ls > n && n > 1) {
    c.error = who + ": " + std::to_string(ls) + " ranks on this node but " + std::to_string(n) +
              " GPUs visible; start at most " + std::to_string(n) + " ranks per node (one per GPU)";
  } else {
    c.device = ls <= n ? lr : 0;
    cudaDeviceProp p{};
    cudaGetDeviceProperties(&p, c.device);
    const int sm = p.major * 10 + p.minor, built = built_sm();
    char bus[32];
    std::snprintf(bus, sizeof(bus), "%04x:%02x:%02x", p.pciDomainID, p.pciBusID, p.pciDeviceID);
    c.line = who + ": GPU " + std::to_string(c.device) + " of " + std::to_string(n) + ", " + p.name + ", " +
             sm_name(sm) + ", " + std::to_string(p.totalGlobalMem >> 30) + " GiB, PCI " + bus;
    if (built && sm < built)
      c.error = who + ": GPU " + std::to_string(c.device) + " (" + p.name + ", " + sm_name(sm) + ") is older than " +
                sm_name(built) + ", which this build's Kokkos targets; rebuild Kokkos with this GPU's architecture";
    else if (built && sm > built)
      c.line += " (binary built for " + sm_name(built) + ": runs through PTX JIT, below full speed)";
    std::memcpy(uuid, p.uuid.bytes, 16);
  }
  // Two ranks of the node on one physical GPU (each sees one device, the same one): too many ranks.
  std::vector<unsigned char> all(std::size_t(ls) * 16);
  MPI_Allgather(uuid, 16, MPI_UNSIGNED_CHAR, all.data(), 16, MPI_UNSIGNED_CHAR, node);
  if (c.error.empty())
    for (int other = 0; other < lr; ++other)
      if (std::memcmp(all.data() + std::size_t(other) * 16, uuid, 16) == 0) {
        c.error = who + ": GPU " + std::to_string(c.device) + " is already used by local rank " + std::to_string(other) +
                  ": more ranks on this node than GPUs (" + std::to_string(ls) + " ranks; give each rank its own GPU)";
        break;
      }
  MPI_Comm_free(&node);
  return c;
}

}  // namespace
#endif

Runtime::Runtime(int& argc, char**& argv) {
  int provided = 0;
  // MULTIPLE: checkpoints are written by a background thread while the main one trains.
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  // Kokkos sees only its own --kokkos-* arguments (otherwise it answers --help too).
  std::vector<char*> kargs{argv[0]};
  bool device_given = false;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]).rfind("--kokkos-", 0) == 0) {
      kargs.push_back(argv[i]);
      device_given = device_given || std::string(argv[i]).rfind("--kokkos-device-id", 0) == 0 ||
                     std::string(argv[i]).rfind("--kokkos-map-device-id-by", 0) == 0;
    }
#ifdef KOKKOS_ENABLE_CUDA
  std::string device_arg;
  if (!device_given) {
    const GpuChoice g = choose_gpu(MPI_COMM_WORLD, rank_);
    int bad = g.error.empty() ? 0 : 1, any = 0;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any) {  // every rank leaves; the ranks at fault say why
      if (bad) std::fprintf(stderr, "tapestry: error: %s\n", g.error.c_str());
      MPI_Finalize();
      std::exit(1);
    }
    // Rank 0 collects one line per rank for the log.
    char mine[512] = {};
    std::snprintf(mine, sizeof(mine), "%s", g.line.c_str());
    std::vector<char> lines(rank_ == 0 ? std::size_t(size_) * sizeof(mine) : 0);
    MPI_Gather(mine, int(sizeof(mine)), MPI_CHAR, lines.data(), int(sizeof(mine)), MPI_CHAR, 0, MPI_COMM_WORLD);
    for (int r = 0; rank_ == 0 && r < size_; ++r) devices_ += std::string(lines.data() + std::size_t(r) * sizeof(mine)) + "\n";
    device_arg = "--kokkos-device-id=" + std::to_string(g.device);
    kargs.push_back(device_arg.data());
  }
#endif
  (void)device_given;
#if defined(KOKKOS_ENABLE_OPENMP) || defined(TAPESTRY_HAVE_ONEDNN)
  // The node's cores and this rank's share of them: the default threads per rank of a host pool.
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
  int local = 1;
  MPI_Comm_size(node, &local);
  MPI_Comm_free(&node);
  const int cores = std::max(1, int(std::thread::hardware_concurrency()));
#endif
#ifdef KOKKOS_ENABLE_OPENMP
  // Tapestry's defaults for an OpenMP host backend, chosen here so that Kokkos has nothing to warn
  // about: threads = the node's cores / its ranks (unless OMP_NUM_THREADS or --kokkos-num-threads
  // say otherwise), and no thread binding unless the site sets OMP_PROC_BIND. (Binding threads
  // only helps where the launcher binds each rank to its own cores; an unbound rank's threads
  // bound with `spread` all start at core 0, so the job scripts leave it to the site.)
  std::string threads_arg;
  bool threads_given = std::getenv("OMP_NUM_THREADS") != nullptr;
  for (std::size_t i = 1; i < kargs.size(); ++i)
    threads_given = threads_given || std::string(kargs[i]).rfind("--kokkos-num-threads", 0) == 0 ||
                    std::string(kargs[i]).rfind("--kokkos-threads", 0) == 0;
  if (!threads_given) {
    threads_arg = "--kokkos-num-threads=" + std::to_string(std::max(1, cores / local));
    kargs.push_back(threads_arg.data());
  }
  const bool bind_set = std::getenv("OMP_PROC_BIND") != nullptr;
  if (!bind_set) setenv("OMP_PROC_BIND", "false", 0);
#endif
  int kargc = int(kargs.size());
  kargs.push_back(nullptr);
  Kokkos::initialize(kargc, kargs.data());
  // One line for the log: the host backend and its threads.
  backend_ = std::string("Kokkos ") + std::to_string(KOKKOS_VERSION / 10000) + "." +
             std::to_string(KOKKOS_VERSION / 100 % 100) + "." + std::to_string(KOKKOS_VERSION % 100) + ", " +
             Kokkos::DefaultExecutionSpace::name();
#ifdef KOKKOS_ENABLE_OPENMP
  backend_ += std::string(", host: ") + Kokkos::DefaultHostExecutionSpace::name() + " with " +
              std::to_string(Kokkos::DefaultHostExecutionSpace().concurrency()) + " threads per rank (" +
              (threads_given ? "OMP_NUM_THREADS or --kokkos-num-threads" :
                               std::to_string(cores) + " cores / " + std::to_string(local) + " ranks on the node") +
              "), OMP_PROC_BIND=" + std::getenv("OMP_PROC_BIND") + (bind_set ? "" : " (Tapestry's default; unset)");
#else
  backend_ += std::string(", host: ") + Kokkos::DefaultHostExecutionSpace::name() + " (one thread per rank)";
#endif
#ifdef TAPESTRY_HAVE_ONEDNN
  // oneDNN's bf16 products run on OpenMP threads: the Kokkos pool's count in an OpenMP build (the
  // same libgomp pool), else the node's cores / its ranks, unless OMP_NUM_THREADS says otherwise.
#ifdef KOKKOS_ENABLE_OPENMP
  kernels::onednn::set_threads(Kokkos::DefaultHostExecutionSpace().concurrency());
#else
  if (std::getenv("OMP_NUM_THREADS") == nullptr) kernels::onednn::set_threads(std::max(1, cores / local));
#endif
#endif
}

Runtime::~Runtime() {
  Kokkos::finalize();
  MPI_Finalize();
}

}  // namespace tapestry::parallel
