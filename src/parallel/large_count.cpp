#include "tapestry/parallel/large_count.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

namespace tapestry::parallel {

namespace {
char* at(void* p, std::size_t i, std::size_t bytes) { return static_cast<char*>(p) + i * bytes; }
const char* at(const void* p, std::size_t i, std::size_t bytes) { return static_cast<const char*>(p) + i * bytes; }
int size_of(MPI_Comm comm) {
  int p = 1;
  MPI_Comm_size(comm, &p);
  return p;
}
}  // namespace

void all_reduce_sum(void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, MPI_Comm comm) {
  for (std::size_t off = 0; off < n; off += kMaxCount)
    MPI_Allreduce(MPI_IN_PLACE, at(buf, off, bytes), int(std::min(kMaxCount, n - off)), type, MPI_SUM, comm);
}

void reduce_sum(const void* send, void* recv, std::size_t n, MPI_Datatype type, std::size_t bytes, int root,
                MPI_Comm comm) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  for (std::size_t off = 0; off < n; off += kMaxCount)
    MPI_Reduce(at(send, off, bytes), rank == root ? at(recv, off, bytes) : nullptr, int(std::min(kMaxCount, n - off)),
               type, MPI_SUM, root, comm);
}

void reduce_scatter_sum(const void* send, void* recv, std::size_t n, MPI_Datatype type, std::size_t bytes,
                        MPI_Comm comm) {
  if (n <= kMaxCount) {
    MPI_Reduce_scatter_block(send, recv, int(n), type, MPI_SUM, comm);
    return;
  }
  // Round by round: element range [off, off + k) of every rank's block, packed side by side.
  const std::size_t P = std::size_t(size_of(comm));
  std::vector<char> stage(P * kStageElements * bytes);
  for (std::size_t off = 0; off < n; off += kStageElements) {
    const std::size_t k = std::min(kStageElements, n - off);
    for (std::size_t r = 0; r < P; ++r) std::memcpy(stage.data() + r * k * bytes, at(send, r * n + off, bytes), k * bytes);
    MPI_Reduce_scatter_block(stage.data(), at(recv, off, bytes), int(k), type, MPI_SUM, comm);
  }
}

void all_gather_inplace(void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, MPI_Comm comm) {
  if (n <= kMaxCount) {
    MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, int(n), type, comm);
    return;
  }
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  const std::size_t P = std::size_t(size_of(comm));
  std::vector<char> stage(P * kStageElements * bytes);
  for (std::size_t off = 0; off < n; off += kStageElements) {
    const std::size_t k = std::min(kStageElements, n - off);
    MPI_Allgather(at(buf, std::size_t(rank) * n + off, bytes), int(k), type, stage.data(), int(k), type, comm);
    for (std::size_t r = 0; r < P; ++r) std::memcpy(at(buf, r * n + off, bytes), stage.data() + r * k * bytes, k * bytes);
  }
}

void broadcast(void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, int root, MPI_Comm comm) {
  for (std::size_t off = 0; off < n; off += kMaxCount)
    MPI_Bcast(at(buf, off, bytes), int(std::min(kMaxCount, n - off)), type, root, comm);
}

void send(const void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, int peer, int tag, MPI_Comm comm) {
  for (std::size_t off = 0; off < n; off += kMaxCount)
    MPI_Send(at(buf, off, bytes), int(std::min(kMaxCount, n - off)), type, peer, tag, comm);
}

void recv(void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, int peer, int tag, MPI_Comm comm) {
  for (std::size_t off = 0; off < n; off += kMaxCount)
    MPI_Recv(at(buf, off, bytes), int(std::min(kMaxCount, n - off)), type, peer, tag, comm, MPI_STATUS_IGNORE);
}

void isend(const void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, int peer, int tag, MPI_Comm comm,
           std::vector<MPI_Request>& reqs) {
  for (std::size_t off = 0; off < n; off += kMaxCount) {
    reqs.emplace_back();
    MPI_Isend(at(buf, off, bytes), int(std::min(kMaxCount, n - off)), type, peer, tag, comm, &reqs.back());
  }
}

void irecv(void* buf, std::size_t n, MPI_Datatype type, std::size_t bytes, int peer, int tag, MPI_Comm comm,
           std::vector<MPI_Request>& reqs) {
  for (std::size_t off = 0; off < n; off += kMaxCount) {
    reqs.emplace_back();
    MPI_Irecv(at(buf, off, bytes), int(std::min(kMaxCount, n - off)), type, peer, tag, comm, &reqs.back());
  }
}

}  // namespace tapestry::parallel
