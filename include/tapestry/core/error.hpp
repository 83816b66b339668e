#pragma once
/// \file
/// \brief The one exception type user-facing errors travel in.

#include <stdexcept>
#include <string>

namespace tapestry {

/// \brief An error caused by the user's input (config, files, layout). Its message is one line that
/// names the problem; the CLI prints it as "tapestry: error: <what>" and exits non-zero.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// \brief Throw `Error(msg)` unless `cond` holds.
inline void require(bool cond, const std::string& msg) {
  if (!cond) throw Error(msg);
}

}  // namespace tapestry
