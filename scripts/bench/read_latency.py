#!/usr/bin/env python3
"""Latency of GET requests, one at a time on one keep-alive connection (so a latency is the
service time, not queueing), for scripts/bench/reads.sh.

    read_latency.py HOST:PORT COUNT WARMUP NAME PATH [TOKEN]

Prints one tab-separated line: NAME, requests, p50 ms, p99 ms, max ms, non-200 answers.
"""

import http.client
import sys
import time


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    count, warmup = int(sys.argv[2]), int(sys.argv[3])
    name, path = sys.argv[4], sys.argv[5]
    headers = {"Authorization": f"Bearer {sys.argv[6]}"} if len(sys.argv) > 6 else {}
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    times, bad = [], 0
    for n in range(warmup + count):
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        elapsed = (time.perf_counter() - start) * 1e3
        if response.status != 200:
            bad += 1
        if n >= warmup:
            times.append(elapsed)
    times.sort()

    def pct(p):
        return times[min(len(times) - 1, int(round(p / 100 * (len(times) - 1))))]

    print(f"{name}\t{len(times)}\t{pct(50):.2f}\t{pct(99):.2f}\t{times[-1]:.2f}\t{bad}")


if __name__ == "__main__":
    main()
