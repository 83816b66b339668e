#pragma once
/// \file
/// \brief MPI collectives and point-to-point transfers of any element count. MPI's counts are
/// int (2^31 - 1): larger transfers go in chunks, and the block collectives (reduce-scatter,
/// all-gather), whose per-rank blocks cannot simply be cut, go through a packed staging buffer of
/// a bounded size (kStageElements per rank), so no count ever wraps and nothing is refused.

#include <mpi.h>

#include <cstddef>
#include <vector>

namespace tapestry::parallel {

/// Largest count handed to one MPI call.
constexpr std::size_t kMaxCount = std::size_t(1) << 30;
/// Elements per rank of one staged round of reduce-scatter / all-gather above kMaxCount.
constexpr std::size_t kStageElements = std::size_t(1) << 26;

/// In place: buf (n elements of `type`, `bytes` each) = the sum over the communicator.
void all_reduce_sum(void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, MPI_Comm comm);
/// recv (n) = the sum over ranks of block `rank` of send (size x n).
/// On `root`: recv (n) = sum over ranks of send (n), in chunks of at most kMaxCount.
void reduce_sum(const void* send, void* recv, std::size_t n, MPI_Datatype type, std::size_t bytes, int root,
                MPI_Comm comm);
void reduce_scatter_sum(const void* send, void* recv, std::size_t n, MPI_Datatype type, std::size_t bytes,
                        MPI_Comm comm);
/// In place on buf (size x n): every rank's block r becomes rank r's block r.
void all_gather_inplace(void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, MPI_Comm comm);
void broadcast(void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, int root, MPI_Comm comm);
void send(const void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, int peer, int tag, MPI_Comm comm);
void recv(void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, int peer, int tag, MPI_Comm comm);
/// Non-blocking send / receive of n elements: one request per chunk of at most kMaxCount,
/// appended to `reqs` (complete them all, e.g. MPI_Waitall). Messages of one tag between two ranks
/// match in the order posted, so the chunks land in place.
void isend(const void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, int peer, int tag, MPI_Comm comm,
           std::vector<MPI_Request>& reqs);
void irecv(void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, int peer, int tag, MPI_Comm comm,
           std::vector<MPI_Request>& reqs);

}  // namespace tapestry::parallel
