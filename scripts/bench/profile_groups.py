#!/usr/bin/env python3
"""Groups the samples of `perf script` output by where tracing spends them, per request.

Usage: profile_groups.py PROFILE REQUESTS [PROFILE REQUESTS ...]

PROFILE is the output of `perf script -F comm,tid,ip,sym` for a recording of the server
(`perf record -e cpu-clock -F 1999 -g --call-graph dwarf,32768 -p PID -- sleep 6`), REQUESTS the
number of requests served while it recorded. Each sample goes to the first group below whose
test it passes (the export and log threads by name; the rest by a frame anywhere in its stack),
and each group is printed as CPU microseconds per request, one column per profile: compare an
untraced and a traced server on the same route (benches/history/issues-7-to-15.md, "Where the overhead goes").

With SPLIT=1 the "rest" (the application, actix and the kernel under them) is split further:
user space; in the kernel, waking another task (`try_to_wake_up`; with or without an IPI sent to
the other core), and otherwise by the system call the sample is in (the outermost
`__x64_sys_*` frame), or "no system call" (interrupts, softirqs, page faults, scheduling).
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
    # Each pattern matches both ways perf prints a generic method: `new_span<…>` (short
    # demangling) and `<… as tracing_core::subscriber::Subscriber>::new_span` (perf 6.1).
    ("span close: SDK span built, on_end, staging", any_frame(r"^try_close<|Subscriber>::try_close$")),
    ("span creation: new_span", any_frame(r"^new_span<|Subscriber>::new_span$")),
    ("span enter/exit on every poll", any_frame(r"^(enter|exit)<sidechain::telemetry::logging::TracingBridge|Subscriber>::(enter|exit)$")),
    ("span record / clone / context", any_frame(r"^(record|clone_span|with_subscriber)<|Subscriber>::(record|clone_span)$|::with_subscriber$")),
    # Not spawn_blocking_in_span: the whole blocking-pool call (a Diesel query) runs under it.
    ("propagation (extract, traceresponse)", any_frame(r"sidechain::telemetry::propagation::(?!spawn_blocking_in_span)")),
    ("slog on the request thread", any_frame(r"slog")),
    ("metrics", any_frame(r"prometheus_client|telemetry::metrics")),
]


SPLIT = os.environ.get("SPLIT") == "1"
# Frames of the kernel sending an inter-processor interrupt (to wake a task on the other core):
# in a VM each one is an exit to the hypervisor.
IPI = re.compile(r"send_IPI|send_call_func|smp_send_reschedule|__smp_call_single_queue")
SYSCALL = re.compile(r"^(?:__x64_sys|__do_sys|__se_sys)_(\w+)")


def kernel_frame(ip):
    return int(ip, 16) >= 0xFFFF800000000000


def rest_group(frames, ips):
    """The finer group of a sample of the rest, its frames listed leaf first."""
    if not ips or not kernel_frame(ips[0]):
        return "rest: user space (the application, actix, libraries)"
    # A socket's data made readable wakes its reader (wrk, Redis, Postgres) inside
    # `sock_def_readable`, with interrupts off: the sample lands where they are enabled again, so
    # that frame stands for the wake-up.
    if "try_to_wake_up" in frames or "sock_def_readable" in frames:
        if any(IPI.search(f) for f in frames):
            return "rest, kernel: waking another task, IPI sent"
        return "rest, kernel: waking another task, no IPI"
    calls = [m.group(1) for m in map(SYSCALL.search, frames) if m]
    if calls:
        return f"rest, kernel: system call {calls[-1]}"
    return "rest, kernel: no system call (interrupts, softirqs, faults, scheduling)"


def samples(path):
    """(comm, frames, ips) per sample, frames and ips leaf first."""
    comm, frames, ips = None, [], []
    with open(path, errors="replace") as lines:
        for line in lines:
            if not line.strip():
                if comm is not None:
                    yield comm, frames, ips
                comm, frames, ips = None, [], []
            elif not line[0].isspace():
                comm, frames, ips = line.split()[0], [], []
            else:
                parts = line.strip().split(" ", 1)
                if len(parts) == 2:
                    ips.append(parts[0])
                    frames.append(parts[1])
    if comm is not None:
        yield comm, frames, ips


def main(args):
    if len(args) < 2 or len(args) % 2:
        sys.exit(__doc__)
    columns = []
    for path, requests in zip(args[::2], args[1::2]):
        counts, total = {}, 0
        for comm, frames, ips in samples(path):
            total += 1
            group = next((name for name, test in GROUPS if test(comm, frames)), "rest")
            if group == "rest" and SPLIT:
                group = rest_group(frames, ips)
            counts[group] = counts.get(group, 0) + 1
        columns.append((path, counts, total, float(requests)))
    per_request = lambda n, requests: f"{n / HZ / requests * 1e6:.2f}"
    print("| CPU µs per request | " + " | ".join(c[0] for c in columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    rest = ["rest"]
    if SPLIT:
        seen = {name for c in columns for name in c[1]}
        rest = sorted(name for name in seen if name.startswith("rest"))
    for name in [g[0] for g in GROUPS] + rest:
        cells = [per_request(c[1].get(name, 0), c[3]) for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| total | " + " | ".join(per_request(c[2], c[3]) for c in columns) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
