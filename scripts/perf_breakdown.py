"""Splits a perf profile of the broadcaster into the parts of a post, by what is on the stack.

    taskset -c 0 perf record -e cpu-clock -F 2000 --call-graph dwarf,32768 -o perf.data \
        target/profiling/wsfan-bench fanout --server-core 1 --baseline-recipients 10
    perf report -i perf.data --sort pid -g none     # the busiest wsfan thread is the client
    perf script -i perf.data --tid <tid> -F tid,ip,sym | python3 scripts/perf_breakdown.py

Each sample counts once, for the first part (in the order below) that any frame of its stack
belongs to; kernel time counts for the user-space code that made the system call.
"""

import collections
import sys

PARTS = [
    ("SigV4 signing", ["sign_request", "SigV4Signer", "CachedKeySigner", "aws_sigv4"]),
    ("user-agent header", ["UserAgentInterceptor", "user_agent"]),
    ("endpoint resolution", ["orchestrate_endpoint", "apply_endpoint", "resolve_endpoint"]),
    ("identity (credentials)", ["identity"]),
    ("request serialization", ["ser_post_to_connection", "serialization", "SerializeRequest"]),
    ("response deserialization", ["deserializ", "Deserialize"]),
    ("hyper connection task (and its socket I/O)", ["hyper::proto", "UpgradeableConnection", "hyper::client::conn"]),
    ("hyper-util pool and dispatch", ["hyper_util"]),
    ("smithy HTTP adapter", ["aws_smithy_http_client"]),
    ("wsfan's HTTP/1.1 client (and its socket I/O)", ["http1::", "tokio_rustls"]),
    ("rest of the SDK orchestrator", ["aws_smithy_runtime", "aws_runtime", "aws_smithy_types", "aws_sdk_apigatewaymanagement"]),
    ("wsfan broadcaster, and the runtime polling it", ["wsfan"]),
    ("tokio scheduler", ["tokio::"]),
]


def stacks(lines):
    stack = []
    for line in lines:
        line = line.rstrip("\n")
        if line[:1] in (" ", "\t"):
            parts = line.split(None, 1)
            stack.append(parts[1] if len(parts) > 1 else "")
        else:
            if stack:
                yield stack
            stack = []
    if stack:
        yield stack


def main():
    counts = collections.Counter()
    total = 0
    for stack in stacks(sys.stdin):
        total += 1
        frames = " | ".join(stack)
        part = next((name for name, marks in PARTS if any(m in frames for m in marks)), "other")
        counts[part] += 1
    for part, n in counts.most_common():
        print(f"{100 * n / total:5.1f}%  {part}")
    print(f"{total} samples")


if __name__ == "__main__":
    main()
