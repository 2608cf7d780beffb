"""Runs a moto server on loopback for wsfan's tests and local stack.

Prints "READY <port>" once it listens (port 0 picks a free one), then serves until its standard
input closes, so a test process that dies never leaves a moto server behind.
"""

import argparse
import logging
import sys

from moto.moto_server.threaded_moto_server import ThreadedMotoServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--forever", action="store_true", help="ignore standard input; run until killed")
    args = parser.parse_args()
    # Request lines from werkzeug drown test output; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    print(f"READY {port}", flush=True)
    if args.forever:
        import threading

        threading.Event().wait()
    # Block until the parent closes our stdin (or exits).
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
