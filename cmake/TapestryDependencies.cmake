# Finds every third-party dependency and repairs what distributions ship broken.

find_package(MPI REQUIRED COMPONENTS C)
find_package(Threads REQUIRED)  # the federation watchdog
# C bindings only: keep Open MPI's deprecated C++ bindings out of every translation unit.
add_library(tapestry_mpi INTERFACE)
target_link_libraries(tapestry_mpi INTERFACE MPI::MPI_C)
target_compile_definitions(tapestry_mpi INTERFACE OMPI_SKIP_MPICXX MPICH_SKIP_MPICXX)

set(HDF5_PREFER_PARALLEL TRUE)
find_package(HDF5 REQUIRED COMPONENTS C)
if(NOT HDF5_IS_PARALLEL)
  message(FATAL_ERROR "Tapestry needs a parallel (MPI) HDF5; found a serial one at ${HDF5_INCLUDE_DIRS}. "
                      "On Debian: apt-get install libhdf5-openmpi-dev")
endif()
add_library(tapestry_hdf5 INTERFACE)
target_include_directories(tapestry_hdf5 SYSTEM INTERFACE ${HDF5_INCLUDE_DIRS})
target_link_libraries(tapestry_hdf5 INTERFACE ${HDF5_C_LIBRARIES} tapestry_mpi)
target_compile_definitions(tapestry_hdf5 INTERFACE ${HDF5_DEFINITIONS})

# Kokkos: any 4.x through Kokkos_ROOT, or Debian's Trilinos 3.4 whose exported target points at
# <prefix>/include while the headers live in <prefix>/include/trilinos.
find_package(Kokkos REQUIRED)
get_target_property(_kk_inc Kokkos::kokkos INTERFACE_INCLUDE_DIRECTORIES)
set(_kk_ok FALSE)
foreach(_d IN LISTS _kk_inc)
  if(EXISTS "${_d}/Kokkos_Core.hpp")
    set(_kk_ok TRUE)
  endif()
endforeach()
if(NOT _kk_ok)
  find_path(TAPESTRY_KOKKOS_INCLUDE_DIR Kokkos_Core.hpp
            HINTS ${Kokkos_INCLUDE_DIRS} PATH_SUFFIXES trilinos REQUIRED)
  message(STATUS "Kokkos: repairing broken include path -> ${TAPESTRY_KOKKOS_INCLUDE_DIR}")
  set_property(TARGET Kokkos::kokkos PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${TAPESTRY_KOKKOS_INCLUDE_DIR}")
  # Debian's target also carries a stray "-DKOKKOS_DEPENDENCE" in its link line.
  get_target_property(_kk_libs Kokkos::kokkos INTERFACE_LINK_LIBRARIES)
  list(FILTER _kk_libs EXCLUDE REGEX "^-D")
  set_property(TARGET Kokkos::kokkos PROPERTY INTERFACE_LINK_LIBRARIES "${_kk_libs}")
endif()

set(TAPESTRY_ENABLE_CUDA OFF)
if(Kokkos_ENABLE_CUDA OR "CUDA" IN_LIST Kokkos_DEVICES)
  set(TAPESTRY_ENABLE_CUDA ON)
  find_package(CUDAToolkit REQUIRED)
endif()
message(STATUS "Tapestry: Kokkos ${Kokkos_VERSION}, GPU path (CUDA/cuBLAS): ${TAPESTRY_ENABLE_CUDA}")

# NCCL: built whenever the CUDA toolkit and NCCL are present (it compiles and links on GPU-less
# machines too); used at run time when Kokkos runs on CUDA.
find_package(CUDAToolkit QUIET)
set(TAPESTRY_HAVE_NCCL OFF)
if(CUDAToolkit_FOUND)
  find_path(TAPESTRY_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME PATH_SUFFIXES include)
  find_library(TAPESTRY_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ENV NCCL_HOME PATH_SUFFIXES lib lib64)
  if(TAPESTRY_NCCL_INCLUDE_DIR AND TAPESTRY_NCCL_LIBRARY)
    set(TAPESTRY_HAVE_NCCL ON)
    add_library(tapestry_nccl INTERFACE)
    target_include_directories(tapestry_nccl SYSTEM INTERFACE ${TAPESTRY_NCCL_INCLUDE_DIR})
    target_link_libraries(tapestry_nccl INTERFACE ${TAPESTRY_NCCL_LIBRARY} CUDA::cudart)
  endif()
endif()
message(STATUS "Tapestry: NCCL collectives: ${TAPESTRY_HAVE_NCCL} ${TAPESTRY_NCCL_LIBRARY}")

find_package(CLI11 CONFIG REQUIRED)
find_package(nlohmann_json 3 CONFIG REQUIRED)  # Debian: nlohmann-json3-dev (safetensors headers, config.json)

# Tokenizers: PCRE2 (Unicode regexes of BPE pre-tokenizers; Debian libpcre2-dev) and SentencePiece
# (Debian libsentencepiece-dev), found through pkg-config.
find_package(PkgConfig REQUIRED)
pkg_check_modules(TAPESTRY_PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(TAPESTRY_SPM REQUIRED IMPORTED_TARGET sentencepiece)
find_library(TAPESTRY_SPM_TRAIN_LIBRARY sentencepiece_train HINTS ${TAPESTRY_SPM_LIBRARY_DIRS} REQUIRED)
add_library(tapestry_pcre2 INTERFACE)
target_link_libraries(tapestry_pcre2 INTERFACE PkgConfig::TAPESTRY_PCRE2)
add_library(tapestry_sentencepiece INTERFACE)
target_link_libraries(tapestry_sentencepiece INTERFACE PkgConfig::TAPESTRY_SPM ${TAPESTRY_SPM_TRAIN_LIBRARY})

# Host BLAS (OpenBLAS preferred) with its CBLAS header. With Kokkos on OpenMP, an OpenBLAS built on
# OpenMP (Debian: libopenblas0-openmp) shares the kernels' thread pool instead of spinning against
# it on the same cores (docs/performance.md): it is taken when found, through an RPATH to its folder
# (Debian's default libopenblas.so.0 is the pthreads build).
set(BLA_VENDOR OpenBLAS)
find_package(BLAS)
if(NOT BLAS_FOUND)
  unset(BLA_VENDOR)
  find_package(BLAS REQUIRED)
endif()
set(TAPESTRY_BLAS_THREADS "as built")
if(Kokkos_DEVICES MATCHES "OPENMP" AND NOT TAPESTRY_ENABLE_CUDA)
  find_library(TAPESTRY_OPENBLAS_OPENMP NAMES libopenblas.so.0 openblas
               PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp NO_DEFAULT_PATH)
  if(TAPESTRY_OPENBLAS_OPENMP)
    set(BLAS_LIBRARIES ${TAPESTRY_OPENBLAS_OPENMP})
    get_filename_component(_omp_blas_dir ${TAPESTRY_OPENBLAS_OPENMP} DIRECTORY)
    list(APPEND CMAKE_BUILD_RPATH ${_omp_blas_dir})
    list(APPEND CMAKE_INSTALL_RPATH ${_omp_blas_dir})
    set(TAPESTRY_BLAS_THREADS "OpenMP (${TAPESTRY_OPENBLAS_OPENMP})")
  else()
    message(WARNING "Tapestry: Kokkos runs on OpenMP but no OpenMP build of OpenBLAS was found "
                    "(Debian: libopenblas0-openmp); BLAS and Kokkos threads will compete for the cores")
  endif()
endif()
message(STATUS "Tapestry: BLAS ${BLAS_LIBRARIES}, threads: ${TAPESTRY_BLAS_THREADS}")
find_path(TAPESTRY_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas openblas-pthread REQUIRED)
add_library(tapestry_blas INTERFACE)
target_include_directories(tapestry_blas SYSTEM INTERFACE ${TAPESTRY_CBLAS_INCLUDE_DIR})
target_link_libraries(tapestry_blas INTERFACE ${BLAS_LIBRARIES})

# oneDNN (Debian: libdnnl-dev), optional: bf16 x bf16 -> fp32 products on CPUs with bf16
# instructions (AVX512-BF16, AMX) for --precision bf16, about twice the fp32 BLAS's rate. Without it
# (or on a CPU without them) bf16 runs as fp32 products of bf16-rounded inputs, the same numbers.
option(TAPESTRY_ONEDNN "Use oneDNN for bf16 matrix products on the host CPU, where found" ON)
set(TAPESTRY_HAVE_ONEDNN OFF)
if(TAPESTRY_ONEDNN AND NOT TAPESTRY_ENABLE_CUDA)
  find_path(TAPESTRY_DNNL_INCLUDE_DIR oneapi/dnnl/dnnl.hpp)
  find_library(TAPESTRY_DNNL_LIBRARY dnnl)
  find_package(OpenMP COMPONENTS CXX)
  if(TAPESTRY_DNNL_INCLUDE_DIR AND TAPESTRY_DNNL_LIBRARY AND OpenMP_CXX_FOUND)
    set(TAPESTRY_HAVE_ONEDNN ON)
  endif()
endif()
message(STATUS "Tapestry: oneDNN bf16 products on the CPU: ${TAPESTRY_HAVE_ONEDNN} ${TAPESTRY_DNNL_LIBRARY}")
