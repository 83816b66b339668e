#include "tapestry/parallel/site_mesh.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "tapestry/core/error.hpp"

namespace tapestry::parallel {

namespace {

constexpr std::uint32_t kMagic = 0x31535054;  // "TPS1"
enum : std::uint32_t { kHello = 1, kData = 2, kHave = 3, kAdmit = 4, kWelcome = 5 };
constexpr std::size_t kHeader = 16;             // magic, type, length
constexpr std::uint64_t kMaxBody = std::uint64_t(1) << 40;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void set_nonblocking(int fd) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

std::vector<char> frame(std::uint32_t type, const std::vector<char>& body) {
  std::vector<char> f(kHeader + body.size());
  const std::uint64_t len = body.size();
  std::memcpy(f.data(), &kMagic, 4);
  std::memcpy(f.data() + 4, &type, 4);
  std::memcpy(f.data() + 8, &len, 8);
  if (!body.empty()) std::memcpy(f.data() + kHeader, body.data(), body.size());
  return f;
}

template <class T>
void put(std::vector<char>& b, T v) {
  const auto at = b.size();
  b.resize(at + sizeof(T));
  std::memcpy(b.data() + at, &v, sizeof(T));
}
template <class T>
T get(const std::vector<char>& b, std::size_t& at) {
  T v{};
  if (at + sizeof(T) <= b.size()) std::memcpy(&v, b.data() + at, sizeof(T));
  at += sizeof(T);
  return v;
}

/// Writes all of `bytes` before `deadline`; false on an error, a closed peer or the deadline.
bool write_all(int fd, const std::vector<char>& bytes, double deadline) {
  std::size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t k = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (k > 0) {
      off += std::size_t(k);
      continue;
    }
    if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
    const double left = deadline - now();
    if (left <= 0) return false;
    pollfd p{fd, POLLOUT, 0};
    poll(&p, 1, int(std::min(left, 1.0) * 1000) + 1);
  }
  return true;
}

/// \brief Incremental reading of one frame from a non-blocking socket.
struct Reader {
  char head[kHeader];
  std::size_t head_got = 0, body_got = 0;
  SiteMesh::Frame f;
  /// Reads what is there. Returns 1 when the frame is complete, 0 when more is needed, -1 on an
  /// error or a closed connection (why in `err`).
  int pump(int fd, std::string& err) {
    for (;;) {
      char* dst;
      std::size_t want;
      if (head_got < kHeader) dst = head + head_got, want = kHeader - head_got;
      else dst = f.body.data() + body_got, want = f.body.size() - body_got;
      if (want == 0) return 1;
      const ssize_t k = ::recv(fd, dst, want, 0);
      if (k == 0) return err = "connection closed", -1;
      if (k < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
        return err = std::string("connection lost: ") + std::strerror(errno), -1;
      }
      if (head_got < kHeader) {
        head_got += std::size_t(k);
        if (head_got == kHeader) {
          std::uint32_t magic;
          std::uint64_t len;
          std::memcpy(&magic, head, 4);
          std::memcpy(&f.type, head + 4, 4);
          std::memcpy(&len, head + 8, 8);
          if (magic != kMagic || len > kMaxBody) return err = "not a Tapestry site message", -1;
          f.body.resize(std::size_t(len));
        }
      } else {
        body_got += std::size_t(k);
      }
    }
  }
};

/// One frame, waited for until `deadline`; false when none came (why in `err`).
bool read_frame(int fd, double deadline, SiteMesh::Frame& out, std::string& err) {
  Reader r;
  for (;;) {
    const int st = r.pump(fd, err);
    if (st < 0) return false;
    if (st > 0) return out = std::move(r.f), true;
    const double left = deadline - now();
    if (left <= 0) return err = "no answer in time", false;
    pollfd p{fd, POLLIN, 0};
    poll(&p, 1, int(std::min(left, 1.0) * 1000) + 1);
  }
}

/// A connection to `peer` within `timeout` seconds, non-blocking; -1 when refused or too slow.
int connect_to(const SitePeer& peer, double timeout) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC, hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(peer.host.c_str(), std::to_string(peer.port).c_str(), &hints, &res) != 0) return -1;
  int fd = -1;
  for (addrinfo* a = res; a && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    set_nonblocking(fd);
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc < 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int err = 0;
      socklen_t len = sizeof(err);
      rc = poll(&p, 1, int(timeout * 1000)) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0 ? 0 : -1;
    }
    if (rc < 0) ::close(fd), fd = -1;
  }
  freeaddrinfo(res);
  return fd;
}

/// The bitmap of a list of sites (sites < 64).
std::uint64_t bits(const std::vector<int>& sites) {
  std::uint64_t b = 0;
  for (int s : sites) b |= std::uint64_t(1) << s;
  return b;
}

/// \brief A greeting: who is at the other end, whether it is already training, and its config.
struct Hello {
  int site = -1, running = 0, step = 0;
  std::string name, fingerprint;
  std::vector<char> body() const {
    std::vector<char> b;
    put<std::int32_t>(b, site), put<std::int32_t>(b, running), put<std::int32_t>(b, step);
    put<std::uint32_t>(b, std::uint32_t(name.size()));
    b.insert(b.end(), name.begin(), name.end());
    b.insert(b.end(), fingerprint.begin(), fingerprint.end());
    return b;
  }
  static bool parse(const SiteMesh::Frame& f, Hello& h) {
    if (f.type != kHello || f.body.size() < 16) return false;
    std::size_t at = 0;
    h.site = get<std::int32_t>(f.body, at), h.running = get<std::int32_t>(f.body, at), h.step = get<std::int32_t>(f.body, at);
    const auto n = get<std::uint32_t>(f.body, at);
    if (at + n > f.body.size()) return false;
    h.name.assign(f.body.data() + at, n);
    h.fingerprint.assign(f.body.data() + at + n, f.body.size() - at - n);
    return true;
  }
};

/// A greeting from another site (of `sites`, not `me`) on `fd` within `seconds`; false when none
/// came or it is not one.
bool read_hello(int fd, double seconds, int sites, int me, Hello& h) {
  SiteMesh::Frame f;
  std::string err;
  return read_frame(fd, now() + seconds, f, err) && Hello::parse(f, h) && h.site >= 0 && h.site < sites && h.site != me;
}

}  // namespace

std::vector<SitePeer> parse_site_peers(const std::string& list, int sites) {
  std::vector<SitePeer> out;
  std::size_t at = 0;
  while (at <= list.size() && !list.empty()) {
    const std::size_t comma = std::min(list.find(',', at), list.size());
    const std::string item = list.substr(at, comma - at);
    const std::size_t colon = item.rfind(':');
    SitePeer p;
    char* end = nullptr;
    const long port = colon == std::string::npos ? 0 : std::strtol(item.c_str() + colon + 1, &end, 10);
    require(colon != std::string::npos && colon > 0 && end != nullptr && *end == '\0' && port > 0 && port < 65536,
            "--federation-peers: '" + item + "' is not host:port");
    p.host = item.substr(0, colon), p.port = int(port);
    out.push_back(p);
    at = comma + 1;
  }
  require(int(out.size()) == sites, "--federation-peers names " + std::to_string(out.size()) +
                                        " address(es) but the run has --sites " + std::to_string(sites) +
                                        " (one host:port per site, in site order)");
  require(sites <= 64, "--federation-peers: at most 64 sites");
  return out;
}

SiteMesh::SiteMesh(Spec spec) : spec_(std::move(spec)) {
  const int S = spec_.sites, me = spec_.site;
  fd_.assign(std::size_t(S), -1);
  joining_.assign(std::size_t(S), false);
  const int port = spec_.peers.at(std::size_t(me)).port;
  // A restarted site may come up while its old job still holds the port: tried again for a while.
  const double deadline = now() + std::min(spec_.timeout_s, 30.0);
  std::string why;
  for (;;) {
    why = listen_on(port);
    if (why.empty() || why.find(std::strerror(EADDRINUSE)) == std::string::npos || now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  require(why.empty(), "federation '" + spec_.name + "': site " + std::to_string(me) + " cannot listen on port " +
                           std::to_string(port) + " (" + why + ")");
}

std::string SiteMesh::listen_on(int port) {
  if (listen_fd_ >= 0) ::close(listen_fd_);
  int zero = 0, one = 1;
  listen_fd_ = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in6 a6{};
  a6.sin6_family = AF_INET6, a6.sin6_port = htons(std::uint16_t(port)), a6.sin6_addr = in6addr_any;
  bool ok = listen_fd_ >= 0 && setsockopt(listen_fd_, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) == 0 &&
            setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
            ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a6), sizeof(a6)) == 0;
  if (!ok && errno != EADDRINUSE) {  // no IPv6: IPv4 only
    if (listen_fd_ >= 0) ::close(listen_fd_);
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a4{};
    a4.sin_family = AF_INET, a4.sin_port = htons(std::uint16_t(port)), a4.sin_addr.s_addr = htonl(INADDR_ANY);
    ok = listen_fd_ >= 0 && setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
         ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a4), sizeof(a4)) == 0;
  }
  ok = ok && ::listen(listen_fd_, 64) == 0;
  if (!ok) return std::strerror(errno);
  set_nonblocking(listen_fd_);
  return "";
}

SiteMesh::~SiteMesh() {
  for (int fd : fd_)
    if (fd >= 0) ::close(fd);
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

std::vector<std::string> SiteMesh::take_events() { return std::exchange(events_, {}); }

void SiteMesh::drop(int site, const std::string& why) {
  auto& fd = fd_[std::size_t(site)];
  if (fd >= 0) ::close(fd);
  fd = -1;
  joining_[std::size_t(site)] = false;
  const auto it = std::find(members_.begin(), members_.end(), site);
  if (it != members_.end()) {
    members_.erase(it);
    events_.push_back("site " + std::to_string(site) + " dropped (" + why + ")");
  }
}

int SiteMesh::greet_incoming(int fd, bool running, int step) {
  Hello h;
  const double deadline = now() + std::min(spec_.timeout_s, 10.0);
  if (!read_hello(fd, deadline - now(), spec_.sites, spec_.site, h)) {
    ::close(fd);
    return -1;
  }
  if (running && h.running) {  // not a restart: a site that went on alone after losing this one
    events_.push_back("site " + std::to_string(h.site) + " trains apart from this one (it was dropped and went on " +
                      "alone; restart it to rejoin): not merged");
    ::close(fd);
    return -1;
  }
  if (h.name != spec_.name || h.fingerprint != spec_.fingerprint) {
    events_.push_back("site " + std::to_string(h.site) + " turned away: " +
                      (h.name != spec_.name ? "it joins federation '" + h.name + "'" : "its config differs"));
    ::close(fd);
    return -1;
  }
  Hello mine{spec_.site, running ? 1 : 0, step, spec_.name, spec_.fingerprint};
  if (!write_all(fd, frame(kHello, mine.body()), deadline)) {
    ::close(fd);
    return -1;
  }
  return h.site;
}

SiteMesh::Start SiteMesh::start(int step) {
  const int S = spec_.sites, me = spec_.site;
  const double deadline = now() + spec_.timeout_s;
  std::vector<int> pending(std::size_t(S), -1), running(std::size_t(S), -1);
  std::vector<double> next_try(std::size_t(S), 0);
  const Hello mine{me, 0, step, spec_.name, spec_.fingerprint};
  auto check = [&](const Hello& h, int expect) {
    require(h.running || h.step == step, "federation '" + spec_.name + "': site " + std::to_string(expect) +
                                             " starts at step " + std::to_string(h.step) + " but site " +
                                             std::to_string(me) + " at step " + std::to_string(step) +
                                             " (a fresh start needs every site's checkpoint of the same step)");
    require(h.name == spec_.name, "federation '" + spec_.name + "': site " + std::to_string(expect) +
                                      " answers for federation '" + h.name + "'");
    require(h.fingerprint == spec_.fingerprint,
            "federation '" + spec_.name + "': site " + std::to_string(expect) + "'s config differs from site " +
                std::to_string(me) + "'s (" + h.fingerprint + " | " + spec_.fingerprint + ")");
  };
  while (now() < deadline) {
    // The higher site connects to the lower one; a refused connection is tried again.
    for (int j = 0; j < me; ++j) {
      if (fd_[std::size_t(j)] >= 0 || pending[std::size_t(j)] >= 0 || now() < next_try[std::size_t(j)]) continue;
      next_try[std::size_t(j)] = now() + 0.2;
      const int fd = connect_to(spec_.peers[std::size_t(j)], 1.0);
      if (fd < 0) continue;
      if (write_all(fd, frame(kHello, mine.body()), deadline)) pending[std::size_t(j)] = fd;
      else ::close(fd);
    }
    std::vector<pollfd> pf{{listen_fd_, POLLIN, 0}};
    std::vector<int> who{-1};
    for (int j = 0; j < S; ++j) {
      if (pending[std::size_t(j)] >= 0) pf.push_back({pending[std::size_t(j)], POLLIN, 0}), who.push_back(j);
      else if (running[std::size_t(j)] == 1) pf.push_back({fd_[std::size_t(j)], POLLIN, 0}), who.push_back(j);
    }
    poll(pf.data(), pf.size(), 100);
    if (pf[0].revents & POLLIN) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) {
        set_nonblocking(fd);
        Hello h;
        if (read_hello(fd, std::min(spec_.timeout_s, 10.0), S, me, h)) {
          try {
            check(h, h.site);
          } catch (...) {
            ::close(fd);
            throw;
          }
          if (write_all(fd, frame(kHello, mine.body()), deadline)) {
            if (fd_[std::size_t(h.site)] >= 0) ::close(fd_[std::size_t(h.site)]);
            fd_[std::size_t(h.site)] = fd, running[std::size_t(h.site)] = h.running;
          } else {
            ::close(fd);
          }
        } else {
          ::close(fd);
        }
      }
    }
    for (std::size_t i = 1; i < pf.size(); ++i) {
      if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const int j = who[i];
      Frame f;
      std::string err;
      if (pending[std::size_t(j)] >= 0) {  // the answer to this site's greeting
        const int fd = std::exchange(pending[std::size_t(j)], -1);
        Hello h;
        if (read_hello(fd, std::min(spec_.timeout_s, 10.0), S, me, h) && h.site == j) {
          try {
            check(h, j);
          } catch (...) {
            ::close(fd);
            throw;
          }
          fd_[std::size_t(j)] = fd, running[std::size_t(j)] = h.running;
        } else {
          ::close(fd);
        }
        continue;
      }
      // A running member's welcome: this site rejoins. Another member's first payload may come
      // before it: left in the socket for the first round.
      char head[kHeader];
      std::uint32_t type = 0;
      const ssize_t peeked = ::recv(fd_[std::size_t(j)], head, kHeader, MSG_PEEK);
      if (peeked > 0 && peeked < ssize_t(kHeader)) continue;  // the rest of the header is on its way
      if (peeked == ssize_t(kHeader)) {
        std::memcpy(&type, head + 4, 4);
        if (type != kWelcome) {
          running[std::size_t(j)] = 2;  // a member, not the one that welcomes
          continue;
        }
      }
      if (!read_frame(fd_[std::size_t(j)], now() + spec_.timeout_s, f, err) || f.type != kWelcome || f.body.size() < 12) {
        ::close(fd_[std::size_t(j)]);
        fd_[std::size_t(j)] = -1, running[std::size_t(j)] = -1;
        continue;
      }
      std::size_t at = 0;
      Start st;
      st.rejoined = true, st.from = j;
      st.step = get<std::int32_t>(f.body, at);
      const auto members = get<std::uint64_t>(f.body, at);
      st.state.assign(f.body.begin() + std::ptrdiff_t(at), f.body.end());
      members_.clear();
      for (int s = 0; s < S; ++s) {
        if (!(members >> s & 1)) continue;
        if (s != me && fd_[std::size_t(s)] < 0) {
          events_.push_back("site " + std::to_string(s) + " is a member but not connected to this one: left out");
          continue;
        }
        members_.push_back(s);
      }
      for (int s = 0; s < S; ++s)  // connections to sites that are not members: closed
        if (s != me && !(members >> s & 1) && fd_[std::size_t(s)] >= 0) ::close(fd_[std::size_t(s)]), fd_[std::size_t(s)] = -1;
      for (int fd : pending)
        if (fd >= 0) ::close(fd);
      events_.push_back("rejoined at step " + std::to_string(st.step) + " with the state of site " + std::to_string(j) +
                        " (" + std::to_string(members_.size()) + " site(s) now)");
      return st;
    }
    bool all = true;
    for (int j = 0; j < S; ++j) all = all && (j == me || (fd_[std::size_t(j)] >= 0 && running[std::size_t(j)] == 0));
    if (all) {
      members_.clear();
      for (int j = 0; j < S; ++j) members_.push_back(j);
      return {};
    }
  }
  std::string missing;
  for (int j = 0; j < S; ++j)
    if (j != me && fd_[std::size_t(j)] < 0) missing += (missing.empty() ? "" : ", ") + std::to_string(j);
  for (int fd : pending)
    if (fd >= 0) ::close(fd);
  throw Error("federation '" + spec_.name + "': site " + std::to_string(me) + " of " + std::to_string(S) +
              ": neither did every site connect nor did a running site admit this one within " +
              std::to_string(int(spec_.timeout_s)) + " s (not connected: " + (missing.empty() ? "none" : missing) +
              "; check --federation-peers and that every site was started)");
}

std::vector<SiteMesh::Frame> SiteMesh::round(const std::vector<std::vector<char>>& out, std::uint32_t type,
                                             const std::vector<int>& from) {
  const std::size_t S = std::size_t(spec_.sites);
  struct Peer {
    std::vector<char> out;
    std::size_t off = 0;
    bool want = false, got = false;
    Reader in;
  };
  std::vector<Peer> p(S);
  std::vector<Frame> frames(S);
  for (std::size_t s = 0; s < S; ++s)
    if (!out[s].empty() && fd_[s] >= 0) p[s].out = frame(type, out[s]);
  for (int s : from) p[std::size_t(s)].want = fd_[std::size_t(s)] >= 0;
  const double deadline = now() + spec_.timeout_s;
  for (;;) {
    std::vector<pollfd> pf;
    std::vector<std::size_t> who;
    for (std::size_t s = 0; s < S; ++s) {
      if (fd_[s] < 0) continue;
      short ev = 0;
      if (p[s].off < p[s].out.size()) ev |= POLLOUT;
      if (p[s].want && !p[s].got) ev |= POLLIN;
      if (ev) pf.push_back({fd_[s], ev, 0}), who.push_back(s);
    }
    if (pf.empty()) break;
    const double left = deadline - now();
    if (left <= 0) {
      for (std::size_t s : who)
        drop(int(s), "no answer within " + std::to_string(int(spec_.timeout_s)) + " s");
      break;
    }
    poll(pf.data(), pf.size(), int(std::min(left, 1.0) * 1000) + 1);
    for (std::size_t i = 0; i < pf.size(); ++i) {
      const std::size_t s = who[i];
      auto& q = p[s];
      std::string err;
      if (pf[i].revents & POLLOUT) {
        const ssize_t k = ::send(fd_[s], q.out.data() + q.off, q.out.size() - q.off, MSG_NOSIGNAL);
        if (k > 0) q.off += std::size_t(k), bytes_ += std::uint64_t(k);
        else if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) err = std::string("connection lost: ") + std::strerror(errno);
      }
      if (err.empty() && (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) && q.want && !q.got) {
        const int st = q.in.pump(fd_[s], err);
        if (st > 0) {
          if (q.in.f.type != type) err = "unexpected message";
          else frames[s] = std::move(q.in.f), q.got = true;
        }
      } else if (err.empty() && (pf[i].revents & (POLLHUP | POLLERR)) && !(pf[i].revents & POLLOUT)) {
        err = "connection closed";
      }
      if (!err.empty()) drop(int(s), err);
    }
  }
  return frames;
}

std::vector<std::vector<char>> SiteMesh::all_gather(const std::vector<char>& mine) {
  const std::size_t S = std::size_t(spec_.sites), me = std::size_t(spec_.site);
  std::vector<int> others;
  for (int s : members_)
    if (s != spec_.site) others.push_back(s);
  // Round 1: the payloads; an empty body still says "here, not contributing".
  std::vector<std::vector<char>> out(S);
  const std::vector<char> body = mine.empty() ? std::vector<char>{0} : [&] {
    std::vector<char> b{1};
    b.insert(b.end(), mine.begin(), mine.end());
    return b;
  }();
  for (int s : others) out[std::size_t(s)] = body;
  auto got = round(out, kData, others);
  // Round 2: which payloads each member got; those every survivor got count.
  std::vector<int> have{spec_.site};
  for (int s : members_)
    if (s != spec_.site) have.push_back(s);  // members_ now holds only those that delivered
  std::uint64_t agreed = bits(have);
  std::vector<char> hb;
  put<std::uint64_t>(hb, agreed);
  out.assign(S, {});
  others.clear();
  for (int s : members_)
    if (s != spec_.site) others.push_back(s), out[std::size_t(s)] = hb;
  const auto haves = round(out, kHave, others);
  for (int s : members_) {
    if (s == spec_.site) continue;
    std::size_t at = 0;
    agreed &= get<std::uint64_t>(haves[std::size_t(s)].body, at);
  }
  for (int s : std::vector<int>(members_))
    if (!(agreed >> s & 1)) drop(s, "not every site got its payload");
  // What counts is decided by the bitmaps alone. A site that died during round 2, after every
  // survivor got its payload, still counts, on every survivor alike (some may have its bitmap,
  // some not; with one failure that bitmap lists every payload anyway).
  std::vector<std::vector<char>> result(S);
  for (std::size_t s = 0; s < S; ++s) {
    if (!(agreed >> s & 1)) continue;
    if (s == me) {
      result[me] = mine;
    } else if (got[s].body.size() > 1) {
      const auto& b = got[s].body;
      result[s].assign(b.begin() + 1, b.end());
    }
  }
  return result;
}

std::vector<int> SiteMesh::admit(int step) {
  const int S = spec_.sites, me = spec_.site;
  const double short_wait = std::min(spec_.timeout_s, 5.0);
  // Sites that connect to this one (higher ones, restarted).
  for (;;) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) break;
    set_nonblocking(fd);
    const int j = greet_incoming(fd, true, step);
    if (j < 0) continue;
    if (std::find(members_.begin(), members_.end(), j) != members_.end()) drop(j, "its job restarted");
    if (fd_[std::size_t(j)] >= 0) ::close(fd_[std::size_t(j)]);
    fd_[std::size_t(j)] = fd, joining_[std::size_t(j)] = true;
  }
  // Lower sites that are not members: this site connects to them (refused: still down).
  const Hello mine{me, 1, step, spec_.name, spec_.fingerprint};
  for (int j = 0; j < me; ++j) {
    if (joining_[std::size_t(j)] || std::find(members_.begin(), members_.end(), j) != members_.end()) continue;
    const int fd = connect_to(spec_.peers[std::size_t(j)], std::min(spec_.timeout_s, 1.0));
    if (fd < 0) continue;
    Hello h;
    if (write_all(fd, frame(kHello, mine.body()), now() + short_wait) && read_hello(fd, short_wait, S, me, h) &&
        h.site == j && h.name == spec_.name && h.fingerprint == spec_.fingerprint && h.running == 0) {
      fd_[std::size_t(j)] = fd, joining_[std::size_t(j)] = true;
    } else {
      if (h.site == j && h.running == 1)
        events_.push_back("site " + std::to_string(j) + " trains apart from this one (it was dropped and went on " +
                          "alone; restart it to rejoin): not merged");
      ::close(fd);
    }
  }
  // Which joiners every member holds: those are admitted.
  std::vector<int> joiners;
  for (int j = 0; j < S; ++j)
    if (joining_[std::size_t(j)]) joiners.push_back(j);
  std::vector<char> jb;
  put<std::uint64_t>(jb, bits(joiners));
  std::vector<std::vector<char>> out(static_cast<std::size_t>(S));
  std::vector<int> others;
  for (int s : members_)
    if (s != me) others.push_back(s), out[std::size_t(s)] = jb;
  const auto got = round(out, kAdmit, others);
  std::uint64_t agreed = bits(joiners);
  for (int s : members_) {
    if (s == me) continue;
    std::size_t at = 0;
    agreed &= get<std::uint64_t>(got[std::size_t(s)].body, at);
  }
  admitted_.clear();
  welcomer_ = members_.empty() ? -1 : members_.front();
  for (int j = 0; j < S; ++j)
    if (agreed >> j & 1) {
      admitted_.push_back(j), joining_[std::size_t(j)] = false, members_.push_back(j);
      events_.push_back("site " + std::to_string(j) + " admitted at step " + std::to_string(step) +
                        " (it takes the state of site " + std::to_string(welcomer_) + ")");
    }
  std::sort(members_.begin(), members_.end());
  return admitted_;
}

void SiteMesh::welcome(int step, const std::vector<char>& state) {
  if (!welcomes()) return;
  std::vector<char> body;
  put<std::int32_t>(body, step);
  put<std::uint64_t>(body, bits(members_));
  body.insert(body.end(), state.begin(), state.end());
  const auto f = frame(kWelcome, body);
  for (int j : admitted_) {
    if (fd_[std::size_t(j)] < 0) continue;
    if (write_all(fd_[std::size_t(j)], f, now() + spec_.timeout_s)) bytes_ += f.size();
    else drop(j, "the welcome could not be sent");
  }
}

}  // namespace tapestry::parallel
