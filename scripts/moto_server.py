"""Runs a moto server on loopback for wsfan's tests and local stack.

Prints "READY <port>" once it listens (port 0 picks a free one), then serves until its standard
input closes, so a test process that dies never leaves a moto server behind.
"""

import argparse
import functools
import inspect
import logging
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodbstreams.models import DynamoDBStreamsBackend
from moto.moto_server.threaded_moto_server import ThreadedMotoServer


def _transactions_emit_no_records_when_cancelled() -> None:
    """Makes a cancelled TransactWriteItems behave as on DynamoDB: no stream records.

    moto applies a transaction's writes one by one (each adding stream records) and, when one
    fails, restores a deep copy of the table taken beforehand. That copy has a stream shard of
    its own, so readers holding an iterator keep reading the old shard: they see records of
    writes that never happened, and never see anything written after. Keep the original shard
    object, trimmed back to what it held before the transaction.
    """
    original = DynamoDBBackend.transact_write_items

    def transact_write_items(self, transact_items):
        shards = {
            name: (table.stream_shard, len(table.stream_shard.items))
            for name, table in self.tables.items()
            if table.stream_shard is not None
        }
        try:
            return original(self, transact_items)
        except Exception:
            for name, (shard, length) in shards.items():
                table = self.tables.get(name)
                if table is not None:
                    del shard.items[length:]
                    shard.table = table
                    table.stream_shard = shard
            raise

    DynamoDBBackend.transact_write_items = transact_write_items


def _dynamodb_requests_run_one_at_a_time() -> None:
    """Makes each DynamoDB and Streams call atomic, as DynamoDB's own are.

    The server runs one thread per request, and moto's TransactWriteItems checks conditions and
    writes items in separate steps, then rolls a cancelled transaction back by restoring a copy of
    the whole table. Two concurrent calls can therefore both pass an attribute_not_exists check,
    or a rollback can erase what another request wrote meanwhile. One lock over both backends
    (re-entrant, as the transaction calls put_item and friends) rules both out.
    """
    lock = threading.RLock()

    def serialized(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            with lock:
                return method(*args, **kwargs)

        return wrapper

    for backend in (DynamoDBBackend, DynamoDBStreamsBackend):
        for name, value in list(vars(backend).items()):
            if inspect.isfunction(value) and not name.startswith("_"):
                setattr(backend, name, serialized(value))


def main() -> None:
    _transactions_emit_no_records_when_cancelled()
    _dynamodb_requests_run_one_at_a_time()
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
        threading.Event().wait()
    # Block until the parent closes our stdin (or exits).
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
