// Test-only LD_PRELOAD shim (never linked into tapestry), started on one rank of an MPMD mpirun:
// - open(), open64() and openat() of a path containing $TAPESTRY_FAULT_OPEN fail with EACCES, as
//   on a disk that is read-only for one rank only (bad_input_one_rank_ckpt_unwritable);
// - writes to files whose path ends with $TAPESTRY_FAULT_WRITE fail with ENOSPC once
//   $TAPESTRY_FAULT_WRITE_AFTER bytes (default 0) have gone to them, as on a disk that fills up in
//   the middle of a checkpoint (bad_input_one_rank_ckpt_disk_full).
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdlib>
#include <cstring>

namespace {
bool blocked(const char* path) {
  const char* pat = std::getenv("TAPESTRY_FAULT_OPEN");
  return pat != nullptr && *pat != '\0' && path != nullptr && std::strstr(path, pat) != nullptr;
}
mode_t mode_arg(int flags, va_list ap) { return (flags & O_CREAT) != 0 ? mode_t(va_arg(ap, int)) : 0; }

constexpr int kMaxFd = 1 << 16;
std::atomic<bool> g_tracked[kMaxFd];        // fds open on a file that will fill up
std::atomic<long long> g_written{0};        // bytes written to such files so far
bool fills_up(const char* path) {
  const char* pat = std::getenv("TAPESTRY_FAULT_WRITE");
  if (pat == nullptr || *pat == '\0' || path == nullptr) return false;
  const std::size_t n = std::strlen(path), m = std::strlen(pat);
  return n >= m && std::strcmp(path + n - m, pat) == 0;
}
int track(int fd, const char* path) {
  if (fd >= 0 && fd < kMaxFd) g_tracked[fd] = fills_up(path);
  return fd;
}
/// True where a write of n bytes to fd must fail (the disk is "full").
bool full(int fd, std::size_t n) {
  if (fd < 0 || fd >= kMaxFd || !g_tracked[fd] || n == 0) return false;
  const char* after = std::getenv("TAPESTRY_FAULT_WRITE_AFTER");
  const long long limit = after != nullptr ? std::atoll(after) : 0;
  return g_written.fetch_add((long long)n) + (long long)n > limit;
}
std::size_t iov_bytes(const struct iovec* iov, int n) {
  std::size_t s = 0;
  for (int i = 0; i < n; ++i) s += iov[i].iov_len;
  return s;
}
template <class Fn> Fn next(const char* name) { return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name)); }
}  // namespace

extern "C" {
int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  if (blocked(path)) return errno = EACCES, -1;
  return track(next<int (*)(const char*, int, ...)>("open")(path, flags, mode), path);
}
int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  if (blocked(path)) return errno = EACCES, -1;
  return track(next<int (*)(const char*, int, ...)>("open64")(path, flags, mode), path);
}
int openat(int dir, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  if (blocked(path)) return errno = EACCES, -1;
  return track(next<int (*)(int, const char*, int, ...)>("openat")(dir, path, flags, mode), path);
}
int close(int fd) {
  if (fd >= 0 && fd < kMaxFd) g_tracked[fd] = false;
  return next<int (*)(int)>("close")(fd);
}
ssize_t write(int fd, const void* buf, size_t n) {
  if (full(fd, n)) return errno = ENOSPC, -1;
  return next<ssize_t (*)(int, const void*, size_t)>("write")(fd, buf, n);
}
ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
  if (full(fd, n)) return errno = ENOSPC, -1;
  return next<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite")(fd, buf, n, off);
}
ssize_t pwrite64(int fd, const void* buf, size_t n, off64_t off) {
  if (full(fd, n)) return errno = ENOSPC, -1;
  return next<ssize_t (*)(int, const void*, size_t, off64_t)>("pwrite64")(fd, buf, n, off);
}
ssize_t writev(int fd, const struct iovec* iov, int cnt) {
  if (full(fd, iov_bytes(iov, cnt))) return errno = ENOSPC, -1;
  return next<ssize_t (*)(int, const struct iovec*, int)>("writev")(fd, iov, cnt);
}
ssize_t pwritev(int fd, const struct iovec* iov, int cnt, off_t off) {
  if (full(fd, iov_bytes(iov, cnt))) return errno = ENOSPC, -1;
  return next<ssize_t (*)(int, const struct iovec*, int, off_t)>("pwritev")(fd, iov, cnt, off);
}
ssize_t pwritev64(int fd, const struct iovec* iov, int cnt, off64_t off) {
  if (full(fd, iov_bytes(iov, cnt))) return errno = ENOSPC, -1;
  return next<ssize_t (*)(int, const struct iovec*, int, off64_t)>("pwritev64")(fd, iov, cnt, off);
}
}
