// Test-only LD_PRELOAD shim (never linked into tapestry): open(), open64() and openat() of a path
// containing $TAPESTRY_FAULT_OPEN fail with EACCES, as on a disk that is read-only or full for one
// rank only. Started on one rank of an MPMD mpirun (bad_input_one_rank_ckpt_unwritable).
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/types.h>

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
}  // namespace

extern "C" {
int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  if (blocked(path)) return errno = EACCES, -1;
  using Fn = int (*)(const char*, int, ...);
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "open"))(path, flags, mode);
}
int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  if (blocked(path)) return errno = EACCES, -1;
  using Fn = int (*)(const char*, int, ...);
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "open64"))(path, flags, mode);
}
int openat(int dir, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  if (blocked(path)) return errno = EACCES, -1;
  using Fn = int (*)(int, const char*, int, ...);
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "openat"))(dir, path, flags, mode);
}
}
