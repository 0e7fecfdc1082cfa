#!/usr/bin/env python3
"""Groups the samples of `perf script` output by where tracing spends them, per request.

Usage: profile_groups.py PROFILE REQUESTS [PROFILE REQUESTS ...]

PROFILE is the output of `perf script -F comm,tid,ip,sym` for a recording of the server
(`perf record -e cpu-clock -F 1999 -g --call-graph dwarf,32768 -p PID -- sleep 6`), REQUESTS the
number of requests served while it recorded. Each sample goes to the first group below whose
test it passes (the export and log threads by name; the rest by a frame anywhere in its stack),
and each group is printed as CPU microseconds per request, one column per profile: compare an
untraced and a traced server on the same route (BENCHMARKS.md, "Where the overhead goes").
"""

import os
import re
import sys

# The recording's frequency (`perf record -F`); HZ=999 for a recording at -F 999.
HZ = int(os.environ.get("HZ", "1999"))


def any_frame(pattern):
    regex = re.compile(pattern)
    return lambda comm, frames: any(regex.search(frame) for frame in frames)


GROUPS = [
    ("export thread (otel-export)", lambda comm, frames: comm.startswith("otel-export")),
    # The peer build's: the SDK's batch processor thread and reqwest's blocking-client runtime.
    (
        "export threads of the peer (BatchProcessor, reqwest)",
        lambda comm, frames: comm.startswith(("OpenTelemetry.", "reqwest-intern")),
    ),
    ("log thread (log-writer)", lambda comm, frames: comm.startswith("log-writer")),
    ("span close: SDK span built, on_end, staging", any_frame(r"^try_close<")),
    ("span creation: new_span", any_frame(r"^new_span<")),
    ("span enter/exit on every poll", any_frame(r"^(enter|exit)<sidechain::telemetry::logging::TracingBridge")),
    ("span record / clone / context", any_frame(r"^(record|clone_span|with_subscriber)<")),
    # Not spawn_blocking_in_span: the whole blocking-pool call (a Diesel query) runs under it.
    ("propagation (extract, traceresponse)", any_frame(r"sidechain::telemetry::propagation::(?!spawn_blocking_in_span)")),
    ("slog on the request thread", any_frame(r"slog")),
    ("metrics", any_frame(r"prometheus_client|telemetry::metrics")),
]


def samples(path):
    comm, frames = None, []
    with open(path, errors="replace") as lines:
        for line in lines:
            if not line.strip():
                if comm is not None:
                    yield comm, frames
                comm, frames = None, []
            elif not line[0].isspace():
                comm, frames = line.split()[0], []
            else:
                parts = line.strip().split(" ", 1)
                if len(parts) == 2:
                    frames.append(parts[1])
    if comm is not None:
        yield comm, frames


def main(args):
    if len(args) < 2 or len(args) % 2:
        sys.exit(__doc__)
    columns = []
    for path, requests in zip(args[::2], args[1::2]):
        counts, total = {}, 0
        for comm, frames in samples(path):
            total += 1
            group = next((name for name, test in GROUPS if test(comm, frames)), "rest")
            counts[group] = counts.get(group, 0) + 1
        columns.append((path, counts, total, float(requests)))
    per_request = lambda n, requests: f"{n / HZ / requests * 1e6:.2f}"
    print("| CPU µs per request | " + " | ".join(c[0] for c in columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for name in [g[0] for g in GROUPS] + ["rest"]:
        cells = [per_request(c[1].get(name, 0), c[3]) for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| total | " + " | ".join(per_request(c[2], c[3]) for c in columns) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
