#!/usr/bin/env python3
"""probe.py - measure what the emulated WAN really does (used by `wan.sh check`).

  probe.py serve PORT           serve one connection: echo pings, swallow bulk data, ack each block
  probe.py client HOST PORT MB  print the round trip of 1-byte pings (min and median, ms) and the
                                TCP throughput of an MB-megabyte transfer (Mbit/s), measured after
                                an equal warm-up transfer so that TCP slow start is over
"""
import socket
import statistics
import sys
import time


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def serve(port):
    sink = bytearray(1 << 20)
    with socket.create_server(("0.0.0.0", port)) as ls:
        c, _ = ls.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with c:
            try:
                while True:
                    op = recv_exact(c, 1)
                    if op == b"p":  # ping
                        c.sendall(b"p")
                    else:  # bulk: 8-byte length, then the data; ack with one byte
                        n = int.from_bytes(recv_exact(c, 8), "little")
                        while n:
                            got = c.recv_into(sink, min(n, len(sink)))
                            if not got:
                                raise EOFError
                            n -= got
                        c.sendall(b"k")
            except EOFError:
                pass


def client(host, port, mb):
    for _ in range(50):  # the server may still be starting
        try:
            s = socket.create_connection((host, port))
            break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit(f"probe: cannot connect to {host}:{port}")
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for _ in range(20):
        t = time.perf_counter()
        s.sendall(b"p")
        recv_exact(s, 1)
        rtts.append((time.perf_counter() - t) * 1e3)
    data = bytes(mb << 20)
    for _ in range(2):  # the first transfer only opens the congestion window
        t = time.perf_counter()
        s.sendall(b"b" + len(data).to_bytes(8, "little"))
        s.sendall(data)
        recv_exact(s, 1)
        dt = time.perf_counter() - t
    s.close()
    print(f"rtt_min_ms={min(rtts):.2f} rtt_median_ms={statistics.median(rtts):.2f} "
          f"tcp_mbit_s={len(data) * 8 / dt / 1e6:.0f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 3:
        serve(int(sys.argv[2]))
    elif sys.argv[1:2] == ["client"] and len(sys.argv) == 5:
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
