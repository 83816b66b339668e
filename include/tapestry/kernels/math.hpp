#pragma once
/// \file
/// \brief Device math functions under one name for Kokkos 3.x (Kokkos::Experimental::) and 4.x (Kokkos::).

#include <Kokkos_Core.hpp>

namespace tapestry::math {
#if KOKKOS_VERSION >= 40000
using Kokkos::exp;
using Kokkos::fmax;
using Kokkos::log;
using Kokkos::sqrt;
using Kokkos::tanh;
#else
using Kokkos::Experimental::exp;
using Kokkos::Experimental::fmax;
using Kokkos::Experimental::log;
using Kokkos::Experimental::sqrt;
using Kokkos::Experimental::tanh;
#endif
}  // namespace tapestry::math
