#include "tapestry/parallel/federation.hpp"

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "tapestry/core/error.hpp"

namespace tapestry::parallel {

namespace {

/// Ends the process with one error line when the federation is not complete by the deadline.
/// Only this thread's timer runs beside MPI; it makes no MPI calls.
class Watchdog {
 public:
  Watchdog(double seconds, std::string message, bool print) {
    thread_ = std::thread([this, seconds, message = std::move(message), print] {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return done_; })) {
        if (print) std::fprintf(stderr, "tapestry: error: %s\n", message.c_str());
        std::fflush(stderr);
        std::_Exit(1);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

/// Sets MPI_ERRORS_RETURN on a communicator for the lifetime of this object.
class ReturnErrors {
 public:
  explicit ReturnErrors(MPI_Comm c) : comm_(c) {
    MPI_Comm_get_errhandler(c, &old_);
    MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
  }
  ~ReturnErrors() {
    MPI_Comm_set_errhandler(comm_, old_);
    MPI_Errhandler_free(&old_);
  }
  ReturnErrors(const ReturnErrors&) = delete;
  ReturnErrors& operator=(const ReturnErrors&) = delete;

 private:
  MPI_Comm comm_;
  MPI_Errhandler old_;
};

std::string mpi_error(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, buf, &len);
  return std::string(buf, std::size_t(len));
}

/// Every rank's string, in rank order.
std::vector<std::string> all_gather_strings(const std::string& s, MPI_Comm comm) {
  int n = 0;
  MPI_Comm_size(comm, &n);
  int len = int(s.size());
  std::vector<int> lens(static_cast<std::size_t>(n)), displs(static_cast<std::size_t>(n));
  MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, comm);
  int total = 0;
  for (int i = 0; i < n; ++i) displs[std::size_t(i)] = total, total += lens[std::size_t(i)];
  std::string all(std::size_t(total), '\0');
  MPI_Allgatherv(s.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR, comm);
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(all.substr(std::size_t(displs[std::size_t(i)]), std::size_t(lens[std::size_t(i)])));
  return out;
}

/// The space-separated fields of `a` that differ from `b`'s, as "L=2 (site 0: L=4)".
std::string differing_fields(const std::string& a, const std::string& b, const std::string& b_name) {
  auto fields = [](const std::string& s) {
    std::vector<std::string> out;
    std::string cur;
    for (char ch : s + " ") {
      if (ch == ' ' || ch == ';') {
        if (!cur.empty()) out.push_back(cur);
        cur.clear();
      } else {
        cur += ch;
      }
    }
    return out;
  };
  const auto fa = fields(a), fb = fields(b);
  std::string d;
  for (std::size_t i = 0; i < fa.size() && i < fb.size(); ++i)
    if (fa[i] != fb[i]) d += (d.empty() ? "" : ", ") + fa[i] + " (" + b_name + ": " + fb[i] + ")";
  return d.empty() ? "'" + a + "' vs '" + b + "'" : d;
}

/// Merges an intercommunicator into an intracommunicator (this side first when `high` is 0).
Comm merge(MPI_Comm inter, int high) {
  MPI_Comm merged = MPI_COMM_NULL;
  MPI_Intercomm_merge(inter, high, &merged);
  MPI_Comm_free(&inter);
  return Comm::adopt(merged);
}

}  // namespace

Comm federate(const Comm& local, const FederationSpec& spec, const std::string& fingerprint) {
  require(!spec.name.empty(), "federation: empty name");
  require(spec.sites >= 2 && spec.site >= 0 && spec.site < spec.sites,
          "federation '" + spec.name + "': site " + std::to_string(spec.site) + " is not in [0, " +
              std::to_string(spec.sites) + ")");
  const bool first = local.rank() == 0;
  const std::string service = "tapestry-" + spec.name;
  Watchdog watchdog(spec.timeout_s,
                    "federation '" + spec.name + "': site " + std::to_string(spec.site) + " of " +
                        std::to_string(spec.sites) + ": not all sites joined within " +
                        std::to_string(int(spec.timeout_s)) +
                        " s (is the rendezvous reachable: ompi-server running, every mpirun started with "
                        "--ompi-server file:URI, the same --federation name, every site started?)",
                    first);
  ReturnErrors on_self(MPI_COMM_SELF), on_world(MPI_COMM_WORLD);
  MPI_Info info = MPI_INFO_NULL;
  Comm merged;  // the sites joined so far (including this one)
  int joined = 0;
  if (spec.site == 0) {
    // The host opens a port, publishes it, and accepts the other sites one by one.
    char port[MPI_MAX_PORT_NAME] = {};
    int rc = MPI_SUCCESS;
    if (first) {
      MPI_Open_port(info, port);
      rc = MPI_Publish_name(service.c_str(), info, port);
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, local.get());
    require(rc == MPI_SUCCESS, "federation '" + spec.name + "': cannot publish at the rendezvous (" + mpi_error(rc) +
                                   "); start mpirun with --ompi-server file:URI of a running ompi-server");
    MPI_Comm dup = MPI_COMM_NULL;
    MPI_Comm_dup(local.get(), &dup);
    merged = Comm::adopt(dup);
    joined = 1;
    while (joined < spec.sites) {
      MPI_Comm inter = MPI_COMM_NULL;
      MPI_Comm_accept(port, info, 0, merged.get(), &inter);
      merged = merge(inter, 0);
      ++joined;
      MPI_Bcast(&joined, 1, MPI_INT, 0, merged.get());
    }
    if (first) {
      MPI_Unpublish_name(service.c_str(), info, port);
      MPI_Close_port(port);
    }
  } else {
    // The others look the port up (retrying until the host has published it) and connect.
    char port[MPI_MAX_PORT_NAME] = {};
    if (first) {
      while (MPI_Lookup_name(service.c_str(), info, port) != MPI_SUCCESS)
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    MPI_Bcast(port, MPI_MAX_PORT_NAME, MPI_CHAR, 0, local.get());
    MPI_Comm inter = MPI_COMM_NULL;
    MPI_Comm_connect(port, info, 0, local.get(), &inter);
    merged = merge(inter, 1);
    MPI_Bcast(&joined, 1, MPI_INT, 0, merged.get());
    while (joined < spec.sites) {  // take part in accepting the sites still to come
      MPI_Comm next = MPI_COMM_NULL;
      MPI_Comm_accept(nullptr, info, 0, merged.get(), &next);
      merged = merge(next, 0);
      MPI_Bcast(&joined, 1, MPI_INT, 0, merged.get());
    }
  }
  // Order by site, then by rank inside the site; then check that the sites fit together.
  Comm world = merged.split(0, spec.site * (1 << 20) + local.rank());
  // The joining ran with MPI_ERRORS_RETURN (to report a failed connect); the run's communicator
  // must not inherit it, or a failed call in training would go unnoticed.
  MPI_Comm_set_errhandler(world.get(), MPI_ERRORS_ARE_FATAL);
  const auto prints = all_gather_strings(std::to_string(spec.site) + "|" + std::to_string(local.size()) + "|" + fingerprint,
                                         world.get());
  std::string problem;
  std::vector<int> seen(std::size_t(spec.sites), 0);
  const std::string& ref = prints[0];
  const auto head = [](const std::string& p) { return p.substr(0, p.find('|')); };
  for (const auto& p : prints) {
    const int s = std::atoi(head(p).c_str());
    const std::string rest = p.substr(p.find('|') + 1);
    const std::string ref_rest = ref.substr(ref.find('|') + 1);
    const std::string size = rest.substr(0, rest.find('|')), ref_size = ref_rest.substr(0, ref_rest.find('|'));
    const std::string fp = rest.substr(rest.find('|') + 1), ref_fp = ref_rest.substr(ref_rest.find('|') + 1);
    if (s < 0 || s >= spec.sites) continue;
    ++seen[std::size_t(s)];
    if (problem.empty() && fp != ref_fp)
      problem = "site " + head(p) + "'s config differs: " + differing_fields(fp, ref_fp, "site " + head(ref));
    if (problem.empty() && size != ref_size)
      problem = "site " + head(p) + " has " + size + " ranks but site " + head(ref) + " has " + ref_size +
                " (sites must be the same size)";
  }
  for (int s = 0; s < spec.sites && problem.empty(); ++s)
    if (seen[std::size_t(s)] != local.size())
      problem = "site numbers are not 0.." + std::to_string(spec.sites - 1) + " once each (check --site-id)";
  if (!problem.empty()) {
    if (first) throw Error("federation '" + spec.name + "': " + problem);
    throw PeerError();
  }
  return world;
}

}  // namespace tapestry::parallel
