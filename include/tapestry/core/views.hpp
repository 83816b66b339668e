#pragma once
/// \file
/// \brief View aliases shared by every layer: one layout, one memory space.

#include <Kokkos_Core.hpp>

namespace tapestry {

using ExecSpace = Kokkos::DefaultExecutionSpace;
using MemSpace = ExecSpace::memory_space;
using HostSpace = Kokkos::HostSpace;
using Layout = Kokkos::LayoutRight;

template <class T> using View1 = Kokkos::View<T*, Layout, MemSpace>;
template <class T> using View2 = Kokkos::View<T**, Layout, MemSpace>;
template <class T> using View3 = Kokkos::View<T***, Layout, MemSpace>;
template <class T> using View4 = Kokkos::View<T****, Layout, MemSpace>;

namespace detail {
template <class T> struct Identity { using type = T; };
}  // namespace detail

/// Read-only inputs. The element type is a non-deduced context, so a kernel's scalar type is taken
/// from its outputs and a `View2<float>` binds to `In2<float>` without naming the type at the call.
template <class T> using In1 = Kokkos::View<const typename detail::Identity<T>::type*, Layout, MemSpace>;
template <class T> using In2 = Kokkos::View<const typename detail::Identity<T>::type**, Layout, MemSpace>;
template <class T> using In3 = Kokkos::View<const typename detail::Identity<T>::type***, Layout, MemSpace>;
template <class T> using In4 = Kokkos::View<const typename detail::Identity<T>::type****, Layout, MemSpace>;

/// Token ids (B, T) as stored on the device.
using TokenView = Kokkos::View<int**, Layout, MemSpace>;
using ConstTokenView = Kokkos::View<const int**, Layout, MemSpace>;

}  // namespace tapestry
