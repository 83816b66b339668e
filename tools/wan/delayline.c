/* delayline: fixed one-way delay for IP packets, in user space, on a TUN device.
 *
 * Why: this machine's kernel has no sch_netem, so `tc qdisc ... netem delay` is unavailable.
 * wan.sh routes every packet that crosses the emulated WAN into TUN device DEV (policy routing
 * in the router namespace); this program reads each packet, holds it for DELAY_MS and writes it
 * back to DEV, from where the kernel forwards it to the destination site.
 *
 * Usage: delayline DEV DELAY_MS MTU
 * Packets wait in a FIFO of fixed-size slots (MTU bytes each, mapped and populated once at
 * start, so the hot loop never allocates or page-faults). Since the delay is constant, the FIFO
 * is ordered by release time. When the FIFO is full we stop reading; the kernel then drops at
 * the TUN queue, like a router whose buffer overflowed. Counters go to stderr on SIGTERM/SIGINT.
 * Run it under SCHED_FIFO (chrt) on a busy machine so that wake-ups are on time. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define NSLOTS 8192u /* packets in flight: 8192 x 9000 B = 74 MB, 0.6 s at 1 Gbit/s */

struct slot {
  int64_t due_ns;
  uint32_t len;
};

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s DEV DELAY_MS MTU\n", argv[0]);
    return 2;
  }
  const int64_t delay_ns = (int64_t)(atof(argv[2]) * 1e6);
  const size_t mtu = (size_t)atoi(argv[3]);
  if (delay_ns < 0 || mtu < 576 || mtu > 65535) {
    fprintf(stderr, "delayline: bad DELAY_MS or MTU\n");
    return 2;
  }

  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI; /* raw IP packets, no extra header */
  strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
  if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0) {
    perror("delayline: attach to TUN device");
    return 1;
  }

  /* MAP_POPULATE: pages are faulted in now, not on the first packets */
  struct slot *q = mmap(NULL, NSLOTS * sizeof *q, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  char *buf = mmap(NULL, NSLOTS * mtu, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (q == MAP_FAILED || buf == MAP_FAILED) {
    perror("delayline: mmap");
    return 1;
  }

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  uint64_t head = 0, tail = 0; /* FIFO = slots [head, tail) modulo NSLOTS */
  uint64_t forwarded = 0, full_stalls = 0, write_errors = 0;
  while (!stop) {
    /* 1. release every packet whose time has come */
    int64_t t = now_ns();
    while (head != tail && q[head % NSLOTS].due_ns <= t) {
      const struct slot *s = &q[head % NSLOTS];
      if (write(fd, buf + (head % NSLOTS) * mtu, s->len) < 0) write_errors++;
      head++;
      forwarded++;
    }
    /* 2. sleep until the next release or a new packet (no reading while the FIFO is full) */
    const int full = tail - head == NSLOTS;
    struct timespec to, *tp = NULL;
    if (head != tail) {
      int64_t d = q[head % NSLOTS].due_ns - t;
      to.tv_sec = d / 1000000000;
      to.tv_nsec = d % 1000000000;
      tp = &to;
    }
    struct pollfd p = {.fd = fd, .events = full ? 0 : POLLIN, .revents = 0};
    if (full) full_stalls++;
    int r = ppoll(&p, 1, tp, NULL);
    if (r < 0 && errno != EINTR) {
      perror("delayline: ppoll");
      return 1;
    }
    if (r <= 0 || !(p.revents & POLLIN)) continue;
    /* 3. enqueue everything that arrived, stamped with its release time */
    while (tail - head < NSLOTS) {
      ssize_t n = read(fd, buf + (tail % NSLOTS) * mtu, mtu);
      if (n <= 0) break;
      q[tail % NSLOTS].due_ns = now_ns() + delay_ns;
      q[tail % NSLOTS].len = (uint32_t)n;
      tail++;
    }
  }
  fprintf(stderr, "delayline: forwarded %llu packets, %llu full-FIFO stalls, %llu write errors\n",
          (unsigned long long)forwarded, (unsigned long long)full_stalls,
          (unsigned long long)write_errors);
  return 0;
}
