// SiteMesh (elastic federation's TCP transport): sites on threads of one process, on loopback.
// A fresh start, all-gathers, a site that dies (its mesh destroyed: its sockets close), the
// survivors' agreement, its restart and admission with the welcome's state, and a config that
// differs.
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tapestry/core/error.hpp"
#include "tapestry/parallel/site_mesh.hpp"

using tapestry::parallel::SiteMesh;
using tapestry::parallel::SitePeer;

namespace {

/// A port nobody listens on now (bound to 0, read, closed).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET, a.sin_port = 0, a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

SiteMesh::Spec spec(int site, const std::vector<SitePeer>& peers, double timeout = 10) {
  SiteMesh::Spec s;
  s.name = "test", s.site = site, s.sites = int(peers.size()), s.peers = peers, s.timeout_s = timeout;
  s.fingerprint = "model x";
  return s;
}

std::vector<char> bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string text(const std::vector<char>& b) { return {b.begin(), b.end()}; }

/// Runs f(site) for every site in `sites` on its own thread and waits for all.
void on_threads(const std::vector<int>& sites, const std::function<void(int)>& f) {
  std::vector<std::thread> t;
  for (int s : sites) t.emplace_back(f, s);
  for (auto& x : t) x.join();
}

}  // namespace

TEST_CASE("site mesh: peers list", "[site_mesh]") {
  const auto p = tapestry::parallel::parse_site_peers("a.example:5000,10.0.0.2:5001", 2);
  REQUIRE(p.size() == 2);
  CHECK(p[0].host == "a.example");
  CHECK(p[1].port == 5001);
  CHECK_THROWS_WITH(tapestry::parallel::parse_site_peers("a:1", 2),
                    "--federation-peers names 1 address(es) but the run has --sites 2 (one host:port per site, in site order)");
  CHECK_THROWS_WITH(tapestry::parallel::parse_site_peers("a:1,b", 2), "--federation-peers: 'b' is not host:port");
  CHECK_THROWS_WITH(tapestry::parallel::parse_site_peers("a:1,b:70000", 2), "--federation-peers: 'b:70000' is not host:port");
}

TEST_CASE("site mesh: drop a dead site, agree, admit it again", "[site_mesh]") {
  std::vector<SitePeer> peers;
  for (int i = 0; i < 3; ++i) peers.push_back({"127.0.0.1", free_port()});
  std::vector<std::unique_ptr<SiteMesh>> m(3);
  for (int s = 0; s < 3; ++s) m[std::size_t(s)] = std::make_unique<SiteMesh>(spec(s, peers));
  std::vector<SiteMesh::Start> st(3);
  on_threads({0, 1, 2}, [&](int s) { st[std::size_t(s)] = m[std::size_t(s)]->start(); });
  for (int s = 0; s < 3; ++s) {
    CHECK_FALSE(st[std::size_t(s)].rejoined);
    CHECK(m[std::size_t(s)]->members() == std::vector<int>{0, 1, 2});
  }

  // Everyone gets every payload; site 1 does not contribute (empty).
  std::vector<std::vector<std::vector<char>>> got(3);
  on_threads({0, 1, 2}, [&](int s) {
    got[std::size_t(s)] = m[std::size_t(s)]->all_gather(s == 1 ? std::vector<char>{} : bytes("from " + std::to_string(s)));
  });
  for (int s = 0; s < 3; ++s) {
    const auto& g = got[std::size_t(s)];
    REQUIRE(g.size() == 3);
    CHECK(text(g[0]) == "from 0");
    CHECK(g[1].empty());
    CHECK(text(g[2]) == "from 2");
  }

  // Site 2 dies: its sockets close. The survivors drop it in the next round and agree.
  m[2].reset();
  on_threads({0, 1}, [&](int s) { got[std::size_t(s)] = m[std::size_t(s)]->all_gather(bytes("again " + std::to_string(s))); });
  for (int s = 0; s < 2; ++s) {
    CHECK(m[std::size_t(s)]->members() == std::vector<int>{0, 1});
    CHECK(text(got[std::size_t(s)][0]) == "again 0");
    CHECK(text(got[std::size_t(s)][1]) == "again 1");
    CHECK(got[std::size_t(s)][2].empty());
    const auto ev = m[std::size_t(s)]->take_events();
    REQUIRE(ev.size() == 1);
    CHECK(ev[0].rfind("site 2 dropped (", 0) == 0);
  }

  // Site 2 restarts: it connects, the members admit it at their next boundary, site 0 welcomes it
  // with the state, and the three exchange again.
  m[2] = std::make_unique<SiteMesh>(spec(2, peers));
  std::vector<int> admitted0, admitted1;
  on_threads({0, 1, 2}, [&](int s) {
    if (s == 2) {
      st[2] = m[2]->start();
      got[2] = m[2]->all_gather({});
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the joiner connects first
    auto& a = s == 0 ? admitted0 : admitted1;
    a = m[std::size_t(s)]->admit(40);
    m[std::size_t(s)]->welcome(40, bytes("state at 40"));
    got[std::size_t(s)] = m[std::size_t(s)]->all_gather(bytes("third " + std::to_string(s)));
  });
  CHECK(admitted0 == std::vector<int>{2});
  CHECK(admitted1 == std::vector<int>{2});
  CHECK(st[2].rejoined);
  CHECK(st[2].step == 40);
  CHECK(st[2].from == 0);
  CHECK(text(st[2].state) == "state at 40");
  for (int s = 0; s < 3; ++s) {
    CHECK(m[std::size_t(s)]->members() == std::vector<int>{0, 1, 2});
    CHECK(text(got[std::size_t(s)][0]) == "third 0");
    CHECK(text(got[std::size_t(s)][1]) == "third 1");
    CHECK(got[std::size_t(s)][2].empty());  // just rejoined: not contributing
  }
  CHECK(m[0]->bytes_sent() > 0);
}

TEST_CASE("site mesh: the lowest site dies and rejoins (the others connect to it)", "[site_mesh]") {
  std::vector<SitePeer> peers;
  for (int i = 0; i < 3; ++i) peers.push_back({"127.0.0.1", free_port()});
  std::vector<std::unique_ptr<SiteMesh>> m(3);
  for (int s = 0; s < 3; ++s) m[std::size_t(s)] = std::make_unique<SiteMesh>(spec(s, peers));
  on_threads({0, 1, 2}, [&](int s) { m[std::size_t(s)]->start(); });
  m[0].reset();  // site 0 dies
  std::vector<std::vector<std::vector<char>>> got(3);
  on_threads({1, 2}, [&](int s) { got[std::size_t(s)] = m[std::size_t(s)]->all_gather(bytes("x" + std::to_string(s))); });
  CHECK(m[1]->members() == std::vector<int>{1, 2});
  CHECK(m[2]->members() == std::vector<int>{1, 2});
  CHECK(text(got[1][2]) == "x2");
  // Site 0 restarts and waits; sites 1 and 2 connect to it at their boundary; site 1 welcomes it.
  m[0] = std::make_unique<SiteMesh>(spec(0, peers));
  SiteMesh::Start st0;
  std::vector<std::vector<int>> admitted(3);
  on_threads({0, 1, 2}, [&](int s) {
    if (s == 0) {
      st0 = m[0]->start();
      got[0] = m[0]->all_gather({});
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    admitted[std::size_t(s)] = m[std::size_t(s)]->admit(20);
    CHECK(m[std::size_t(s)]->welcomes() == (s == 1));
    m[std::size_t(s)]->welcome(20, bytes("from the lowest member"));
    got[std::size_t(s)] = m[std::size_t(s)]->all_gather(bytes("y" + std::to_string(s)));
  });
  CHECK(admitted[1] == std::vector<int>{0});
  CHECK(admitted[2] == std::vector<int>{0});
  CHECK(st0.rejoined);
  CHECK(st0.step == 20);
  CHECK(st0.from == 1);
  CHECK(text(st0.state) == "from the lowest member");
  for (int s = 0; s < 3; ++s) {
    CHECK(m[std::size_t(s)]->members() == std::vector<int>{0, 1, 2});
    CHECK(got[std::size_t(s)][0].empty());
    CHECK(text(got[std::size_t(s)][1]) == "y1");
    CHECK(text(got[std::size_t(s)][2]) == "y2");
  }
}

TEST_CASE("site mesh: a boundary with nobody joining admits nobody", "[site_mesh]") {
  std::vector<SitePeer> peers{{"127.0.0.1", free_port()}, {"127.0.0.1", free_port()}};
  SiteMesh a(spec(0, peers)), b(spec(1, peers));
  on_threads({0, 1}, [&](int s) { (s == 0 ? a : b).start(); });
  std::vector<int> ra, rb;
  on_threads({0, 1}, [&](int s) { (s == 0 ? ra : rb) = (s == 0 ? a : b).admit(10); });
  CHECK(ra.empty());
  CHECK(rb.empty());
  CHECK(a.members() == std::vector<int>{0, 1});
}

TEST_CASE("site mesh: a site that stops answering is dropped after the timeout", "[site_mesh]") {
  std::vector<SitePeer> peers{{"127.0.0.1", free_port()}, {"127.0.0.1", free_port()}};
  SiteMesh a(spec(0, peers, 1)), b(spec(1, peers, 1));
  on_threads({0, 1}, [&](int s) { (s == 0 ? a : b).start(); });
  std::vector<std::vector<char>> got;
  const auto t0 = std::chrono::steady_clock::now();
  on_threads({0, 1}, [&](int s) {
    if (s == 0) got = a.all_gather(bytes("alone"));
    else std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // stalls: no answer
  });
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(a.members() == std::vector<int>{0});
  CHECK(text(got[0]) == "alone");
  CHECK(got[1].empty());
  const auto ev = a.take_events();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0] == "site 1 dropped (no answer within 1 s)");
  CHECK(waited >= 1.0);
}

TEST_CASE("site mesh: a site with another config is refused with one clear error", "[site_mesh]") {
  std::vector<SitePeer> peers{{"127.0.0.1", free_port()}, {"127.0.0.1", free_port()}};
  auto s1 = spec(1, peers, 3);
  s1.fingerprint = "model y";
  SiteMesh a(spec(0, peers, 3)), b(s1);
  std::string err0, err1;
  on_threads({0, 1}, [&](int s) {
    try {
      (s == 0 ? a : b).start();
    } catch (const tapestry::Error& e) {
      (s == 0 ? err0 : err1) = e.what();
    }
  });
  CHECK(err0 == "federation 'test': site 1's config differs from site 0's (model y | model x)");
  // Site 1 gets no answer from site 0 (which refused it) and gives up after its timeout.
  CHECK(err1.find("neither did every site connect") != std::string::npos);
}

TEST_CASE("site mesh: nobody there: an error after the timeout", "[site_mesh]") {
  std::vector<SitePeer> peers{{"127.0.0.1", free_port()}, {"127.0.0.1", free_port()}};
  SiteMesh b(spec(1, peers, 1));
  CHECK_THROWS_WITH(b.start(), "federation 'test': site 1 of 2: neither did every site connect nor did a running site "
                               "admit this one within 1 s (not connected: 0; check --federation-peers and that every "
                               "site was started)");
}
