#pragma once
/// \file
/// \brief Elastic federation's transport: TCP connections between the leaders (first rank) of
/// separately launched site jobs. Unlike a federation joined through MPI (federation.hpp), a site
/// whose job dies does not take the others with it: its connections close (or it stops answering
/// within the timeout), the survivors drop it and go on, and a site restarted from its checkpoint
/// connects again and is admitted at the next outer boundary, with the current outer state sent by
/// a peer. No MPI here: this is plain sockets, used by one thread at a time.
///
/// Every round (an all-gather of the sites' payloads, or an admission at a boundary) is two
/// exchanges among the members: the messages, then which messages each member got; the sites that
/// count are those every surviving member got. So the survivors agree on who contributed when a
/// site dies in the middle of a round. Out of scope: a link that fails between two live sites (a
/// network partition), which can leave the two sides with different members.

#include <cstdint>
#include <string>
#include <vector>

namespace tapestry::parallel {

/// \brief One site's address: its leader listens on `port` (on every interface); the others reach
/// it at `host`.
struct SitePeer {
  std::string host;
  int port = 0;
};

/// "host:port,host:port,...": one address per site, in site order. Throws tapestry::Error naming
/// the first bad entry, or a count other than `sites`.
std::vector<SitePeer> parse_site_peers(const std::string& list, int sites);

/// \brief The connections of one site's leader to the other sites' leaders.
class SiteMesh {
 public:
  struct Spec {
    std::string name;         ///< the run's name (checked at every connection)
    int site = 0, sites = 2;  ///< this site, and how many the run has
    std::vector<SitePeer> peers;
    double timeout_s = 120;   ///< a peer that does not answer within this is dropped
    std::string fingerprint;  ///< what every site must agree on (config), compared at every connection
  };
  /// Listens on this site's port. Throws tapestry::Error when it cannot.
  explicit SiteMesh(Spec spec);
  ~SiteMesh();
  SiteMesh(const SiteMesh&) = delete;
  SiteMesh& operator=(const SiteMesh&) = delete;

  /// \brief What start() found: a fresh run (every site connected), or a running federation this
  /// site rejoins, with the step it joins at and the state a member sent.
  struct Start {
    bool rejoined = false;
    int step = 0;
    int from = -1;             ///< the member that sent the state
    std::vector<char> state;
  };
  /// Connects to the other sites; `step` is where this site starts (0, or its checkpoint's).
  /// Throws tapestry::Error when neither every site connected nor a running member admitted this
  /// site within the timeout, when a site's config differs, or when sites start at different steps.
  Start start(int step = 0);

  /// One round among the members: every member's `mine` to every other (empty: this site does not
  /// contribute this time, e.g. just after rejoining). Returns, by site, the payloads that count
  /// (agreed by the survivors; empty for the others). A member that fails is dropped.
  std::vector<std::vector<char>> all_gather(const std::vector<char>& mine);

  /// At an outer boundary (nothing in flight): takes the connections of sites that (re)start, and
  /// admits those that every member has. Returns the sites admitted (the same on every member).
  std::vector<int> admit(int step);
  /// True when this site sends the state to the sites admitted last (the lowest earlier member).
  bool welcomes() const { return welcomer_ == spec_.site; }
  /// Sends the welcome (step and `state`) to the sites admitted last; a site that cannot take it
  /// is dropped.
  void welcome(int step, const std::vector<char>& state);

  const std::vector<int>& members() const { return members_; }  ///< sorted, this site included
  /// Decisions since the last call (drops, admissions), one line each, for the log.
  std::vector<std::string> take_events();
  std::uint64_t bytes_sent() const { return bytes_; }

  /// \brief A framed message on a connection: type and payload.
  struct Frame {
    std::uint32_t type = 0;
    std::vector<char> body;
  };

 private:
  Spec spec_;
  int listen_fd_ = -1;
  std::vector<int> fd_;          ///< by site: the connection to a member or a pending joiner (-1: none)
  std::vector<bool> joining_;    ///< by site: connected and greeted, not yet admitted
  std::vector<int> members_, admitted_;
  int welcomer_ = -1;
  std::vector<std::string> events_;
  std::uint64_t bytes_ = 0;

  void drop(int site, const std::string& why);
  /// Binds and listens on `port` (every interface; IPv6 with IPv4, else IPv4): "" or why not.
  std::string listen_on(int port);
  /// Sends out[s] to every site s with a message and receives one frame of `type` from every site
  /// in `from`, all at once (poll), within the timeout. Sites that fail are dropped; returns the
  /// frames received, by site.
  std::vector<Frame> round(const std::vector<std::vector<char>>& out, std::uint32_t type, const std::vector<int>& from);
  /// Reads the greeting on a new connection and checks it; answers with this site's. Returns the
  /// peer's site, or -1 (closed, with an event).
  int greet_incoming(int fd, bool running, int step);
};

}  // namespace tapestry::parallel
