"""Runs a moto server on loopback for wsfan's tests and local stack.

Prints "READY <port>" once it listens (port 0 picks a free one), then serves until its standard
input closes (or, with --forever, until it is killed), so a test process that dies never leaves a
moto server behind.

moto is an emulator written for correctness on small tables. wsfan's local stack runs it for hours
with thousands of clients, so `install_patches` replaces the DynamoDB and Streams paths whose cost
grows with the table or with time (docs/DESIGN-NOTES.md, "moto under load"). Each patch keeps the
behaviour the tests rely on: atomic transactions, no stream records for a cancelled one, per-item
stream order, and queries that page exactly as DynamoDB's do.
"""

import argparse
import base64
import bisect
import copy
import datetime
import decimal
import functools
import gc
import inspect
import io
import json
import logging
import os
import sys
import threading
import time

from moto.core.responses import ActionResult
from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
import moto.dynamodb.responses as dynamodb_responses
from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict
from moto.dynamodb.models.table import StreamShard, Table
from moto.dynamodbstreams.models import DynamoDBStreamsBackend, ShardIterator
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.sqs.models import SQSBackend

# DynamoDB Streams keeps a record for 24 hours; shard iterators expire after 15 minutes.
STREAM_RETENTION_SECONDS = float(os.environ.get("WSFAN_MOTO_STREAM_RETENTION_SECONDS", 24 * 3600))
SHARD_ITERATOR_TTL_SECONDS = 15 * 60


# --- Transactions -------------------------------------------------------------------------------


def _key_of(table, op_type, op):
    if op_type == "Put":
        attrs = op["Item"]
        key = {table.hash_key_attr: attrs[table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = attrs[table.range_key_attr]
        return key
    return op["Key"]


def _dynamo_key(table, key):
    hash_value = DynamoType(key[table.hash_key_attr])
    range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
    return hash_value, range_value


def transact_write_items(self, transact_items):
    """TransactWriteItems as DynamoDB runs it: every condition against the state before the
    transaction, then every write, or nothing at all.

    moto's own version deep-copies each named table once per item to roll back, so every
    transaction costs as much as the whole table and its stream (the cost per write grew without
    bound, and so did memory). Here the conditions are checked first, so a cancelled transaction
    writes nothing and emits no stream record; the writes then run with an undo log of just the
    items they touch, for the rare write that fails validation half-way.
    """
    if len(transact_items) > 100:
        raise TooManyTransactionsException()

    ops = []
    seen = set()
    for item in transact_items:
        if len(item) > 1:
            raise TransactWriteSingleOpException
        op_type, op = next(iter(item.items()))
        if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
            raise ValueError("Unsupported transaction operation")
        table = self.get_table(op["TableName"])
        key = _key_of(table, op_type, op)
        unique = (str(op["TableName"]), str(dict(sorted(key.items()))))
        if unique in seen:
            raise MultipleTransactionsException()
        seen.add(unique)
        ops.append((op_type, op, table, key))

    # 1. Every condition, against the state before the transaction (keys are distinct, so no
    #    write of this transaction can change what another of its conditions reads).
    errors = []
    for op_type, op, table, key in ops:
        condition = op.get("ConditionExpression")
        if condition is None:
            errors.append((None, None, None))
            continue
        current = self.get_item(op["TableName"], key)
        condition_op = get_filter_expression(
            condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
        )
        if condition_op.expr(current):
            errors.append((None, None, None))
            continue
        old = None
        if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
            old = current.to_json()["Attributes"]
        errors.append(("ConditionalCheckFailed", str(ConditionalCheckFailed().message), old))
    if any(code is not None for code, _, _ in errors):
        raise TransactionCanceledException(errors)

    # 2. The writes, with an undo log: (table, key, the item before or None, stream length).
    undo = []
    try:
        for index, (op_type, op, table, key) in enumerate(ops):
            if op_type == "ConditionCheck":
                continue
            hash_value, range_value = _dynamo_key(table, key)
            before = table.get_item(hash_value, range_value)
            shard = table.stream_shard
            undo.append((table, hash_value, range_value, copy.deepcopy(before), len(shard.items) if shard else 0))
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            if op_type == "Put":
                self.put_item(op["TableName"], op["Item"], expression_attribute_names=names,
                              expression_attribute_values=values)
            elif op_type == "Delete":
                self.delete_item(op["TableName"], key, expression_attribute_names=names,
                                 expression_attribute_values=values)
            else:
                self.update_item(op["TableName"], key, update_expression=op["UpdateExpression"],
                                 expression_attribute_names=names, expression_attribute_values=values)
    except Exception as e:
        for table, hash_value, range_value, before, stream_length in reversed(undo):
            _restore(table, hash_value, range_value, before)
            if table.stream_shard is not None:
                _stream_truncate(table.stream_shard, stream_length)
        if isinstance(e, (MultipleTransactionsException, MockValidationException)):
            raise
        failed = [(None, None, None)] * len(ops)
        failed[index] = (type(e).__name__, str(e), None)
        raise TransactionCanceledException(failed)


def _restore(table, hash_value, range_value, before):
    """Puts one item back as it was, without a stream record."""
    if range_value is None:
        if before is None:
            table.items.pop(hash_value, None)
        else:
            table.items[hash_value] = before
        return
    partition = table.items.get(hash_value)
    if before is None:
        if partition is not None and partition.pop(range_value, None) is not None:
            _sorted_keys_forget(table, hash_value, range_value)
    else:
        if partition is None:
            partition = table.items[hash_value]
        if range_value not in partition:
            _sorted_keys_remember(table, hash_value, range_value)
        partition[range_value] = before


# --- Streams ------------------------------------------------------------------------------------


def stream_shard_add(self, old, new):
    """Appends a record, and trims what is past the retention period, as DynamoDB Streams does.

    moto keeps every record forever, so memory grew with every write. Trimming moves the shard's
    starting sequence number along, so sequence numbers, TRIM_HORIZON and LATEST stay right.
    """
    _original_stream_shard_add(self, old, new)
    stamps = self.__dict__.setdefault("_wsfan_stamps", [])
    now = time.monotonic()
    stamps.append(now)
    # The records list and the stamps list stay the same length unless moto cleared the records
    # (it does when a Lambda event source mapping consumed them): start the stamps over then.
    if len(stamps) != len(self.items):
        del stamps[: len(stamps) - len(self.items)]
    expired = bisect.bisect_left(stamps, now - STREAM_RETENTION_SECONDS)
    # Trim in chunks: deleting from the front of a list costs its length.
    if expired >= 1024 or (expired and expired == len(stamps)):
        del self.items[:expired]
        del stamps[:expired]
        self.starting_sequence_number += expired


def _stream_truncate(shard, length):
    """Drops the records from `length` on: those of a transaction that was rolled back."""
    del shard.items[length:]
    del shard.__dict__.setdefault("_wsfan_stamps", [])[length:]


def stream_shard_get(self, start, quantity):
    """Records from sequence number `start`; one behind the trim horizon reads from the horizon."""
    index = max(int(start) - self.starting_sequence_number, 0)
    return [record.to_json() for record in self.items[index : index + quantity]]


def _shard_iterator_init(self, *args, **kwargs):
    _original_shard_iterator_init(self, *args, **kwargs)
    self.wsfan_created = time.monotonic()


def get_records(self, iterator_arn, limit):
    """GetRecords, with iterators expiring after 15 minutes as on DynamoDB Streams.

    moto registers a new iterator for every call and never forgets one: a poller reading every
    100 ms leaked about 36,000 a hour.
    """
    result = _original_get_records(self, iterator_arn, limit)
    now = time.monotonic()
    if now - getattr(self, "_wsfan_last_sweep", 0) > 60:
        self._wsfan_last_sweep = now
        cutoff = now - SHARD_ITERATOR_TTL_SECONDS
        for arn in [a for a, it in self.shard_iterators.items() if getattr(it, "wsfan_created", now) < cutoff]:
            del self.shard_iterators[arn]
    return result


# --- Queries ------------------------------------------------------------------------------------
#
# moto answers every Query by sorting every item of the table, then walking the partition from its
# start to the page's ExclusiveStartKey, then deep-copying the page: a page cost as much as the
# table, and the 100,000 members of one channel took 34 s to read. A table query here reads the
# partition through a sorted list of its range keys, kept as items come and go, and seeks to the
# start key by bisection.


def _sort_value(key):
    # DynamoDB orders strings by their UTF-8 bytes, which is Python's code point order; numbers by
    # value; binary by bytes.
    if key.type == "N":
        return float(key.value)
    return key.value


def _sorted_keys(table, hash_value):
    """The partition's range keys in order, with their sort values (built on first use)."""
    index = table.__dict__.setdefault("_wsfan_sorted_keys", {})
    entry = index.get(hash_value)
    partition = table.items.get(hash_value) or {}
    if entry is None or len(entry[0]) != len(partition):
        keys = sorted(partition, key=_sort_value)
        entry = (keys, [_sort_value(k) for k in keys])
        index[hash_value] = entry
    return entry


def _sorted_keys_remember(table, hash_value, range_value):
    entry = table.__dict__.get("_wsfan_sorted_keys", {}).get(hash_value)
    if entry is not None:
        value = _sort_value(range_value)
        at = bisect.bisect_left(entry[1], value)
        entry[0].insert(at, range_value)
        entry[1].insert(at, value)


def _sorted_keys_forget(table, hash_value, range_value):
    index = table.__dict__.get("_wsfan_sorted_keys", {})
    entry = index.get(hash_value)
    if entry is not None:
        at = bisect.bisect_left(entry[1], _sort_value(range_value))
        if at < len(entry[0]) and entry[0][at] == range_value:
            del entry[0][at]
            del entry[1][at]
        else:
            index.pop(hash_value, None)


def table_put_item(self, item_attrs, *args, **kwargs):
    is_new = False
    if self.range_key_attr is not None and self.range_key_attr in item_attrs and self.hash_key_attr in item_attrs:
        hash_value = DynamoType(item_attrs[self.hash_key_attr])
        range_value = DynamoType(item_attrs[self.range_key_attr])
        partition = self.items.get(hash_value)
        is_new = partition is None or range_value not in partition
    item = _original_table_put_item(self, item_attrs, *args, **kwargs)
    if is_new:
        _sorted_keys_remember(self, hash_value, range_value)
    return item


def table_delete_item(self, hash_key, range_key):
    item = _original_table_delete_item(self, hash_key, range_key)
    if item is not None and range_key is not None:
        _sorted_keys_forget(self, hash_key, range_key)
        if not self.items.get(hash_key):
            self.items.pop(hash_key, None)
            self.__dict__.get("_wsfan_sorted_keys", {}).pop(hash_key, None)
    return item


def table_get_item(self, hash_key, range_key=None, projection_expression=None):
    # moto's items is a defaultdict: looking up a missing partition created an empty one, so every
    # read of an absent item (a dedupe check, a gone connection) grew the table for good.
    if range_key is not None and hash_key not in self.items:
        return None
    return _original_table_get_item(self, hash_key, range_key, projection_expression)


def _range_bounds(values, comparison, objs):
    """The slice of sorted `values` a range condition can match, and whether it is exact (for
    strings it is; numbers and binary are checked item by item, as their sort values are
    approximations here)."""
    if comparison is None:
        return 0, len(values), True
    exact = all(o.type == "S" for o in objs)
    bound = [_sort_value(o) for o in objs]
    if comparison == "BEGINS_WITH" and isinstance(bound[0], str):
        lo = bisect.bisect_left(values, bound[0])
        return lo, bisect.bisect_left(values, bound[0] + "\U0010ffff", lo), exact
    if comparison == "EQ":
        return bisect.bisect_left(values, bound[0]), bisect.bisect_right(values, bound[0]), exact
    if comparison == "BETWEEN":
        return bisect.bisect_left(values, bound[0]), bisect.bisect_right(values, bound[1]), exact
    if comparison == "GT":
        return bisect.bisect_right(values, bound[0]), len(values), exact
    if comparison == "GE":
        return bisect.bisect_left(values, bound[0]), len(values), exact
    if comparison == "LT":
        return 0, bisect.bisect_left(values, bound[0]), exact
    if comparison == "LE":
        return 0, bisect.bisect_right(values, bound[0]), exact
    return 0, len(values), False


def _item_size(item):
    """moto's Item.size(), with the common scalar attributes summed inline."""
    size = 0
    for name, value in item.attrs.items():
        size += len(name.encode("utf-8"))
        kind = value.type
        if kind == "S":
            size += len(value.value.encode("utf-8"))
        elif kind == "N":
            size += len(str(value.value))
        else:
            size += value.size()
    return size


def table_query(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key,
                scan_index_forward, projection_expressions, index_name=None, consistent_read=False,
                filter_expression=None, hash_key_conditions=None, range_key_conditions=None,
                **filter_kwargs):
    simple = (
        index_name is None
        and not filter_kwargs
        and self.range_key_attr is not None
        and hash_key is not None
        and (not range_key_conditions or len(range_key_conditions) == 1)
        and all(o.type in ("S", "N", "B") for o in (range_objs or []))
    )
    if not simple:
        return _original_table_query(
            self, hash_key, range_comparison, range_objs, limit, exclusive_start_key,
            scan_index_forward, projection_expressions, index_name=index_name,
            consistent_read=consistent_read, filter_expression=filter_expression,
            hash_key_conditions=hash_key_conditions, range_key_conditions=range_key_conditions,
        )
    partition = self.items.get(hash_key)
    if not partition:
        return [], 0, None
    keys, values = _sorted_keys(self, hash_key)
    lo, hi, exact = _range_bounds(values, range_comparison, range_objs or [])
    if exclusive_start_key is not None:
        start = _sort_value(DynamoType(exclusive_start_key[self.range_key_attr]))
        if scan_index_forward is False:
            hi = min(hi, bisect.bisect_left(values, start))
        else:
            lo = max(lo, bisect.bisect_right(values, start))
    order = range(hi - 1, lo - 1, -1) if scan_index_forward is False else range(lo, hi)

    from moto.dynamodb.models.table import RESULT_SIZE_LIMIT

    results, size, scanned, last_evaluated_key = [], 0, 0, None
    for at in order:
        item = partition[keys[at]]
        if not exact and not item.range_key.compare(range_comparison, range_objs):
            continue
        item_size = _item_size(item)
        if len(results) == limit or size + item_size > RESULT_SIZE_LIMIT:
            last_evaluated_key = self._get_last_evaluated_key(results[-1], None)
            break
        results.append(item)
        size += item_size
        scanned += 1
    # moto deep-copied the page here; nothing below changes an item (filters read, projections
    # build new items), so the page is returned as it is.
    if filter_expression is not None:
        results = [item for item in results if filter_expression.expr(item)]
    if projection_expressions:
        results = [_project(r, projection_expressions) for r in results]
    return results, scanned, last_evaluated_key


def _project(item, paths):
    """Item.project for top-level scalar attributes, without its round trip of the whole item
    through Python values (the fanout reads 100,000 members as `sk, userId`, deliver a group's
    members as `sk`).

    The projected item shares the stored item's attribute values: nothing downstream of a query
    changes them (the response only reads `attrs`), and building new ones, each through
    LimitedSizeDict's size check, was a quarter of a member page's time."""
    names = [path[0] for path in paths if len(path) == 1]
    attrs = item.attrs
    chosen = {name: attrs[name] for name in names if name in attrs}
    if len(names) != len(paths) or any(v.type not in _SCALAR_TYPES for v in chosen.values()):
        return item.project(paths)
    projected = Item.__new__(Item)
    projected.hash_key, projected.range_key, projected.attrs = item.hash_key, item.range_key, chosen
    return projected


# --- Responses ----------------------------------------------------------------------------------
#
# moto 5.2 serializes every response by walking botocore's shape model, value by value: of a
# 10,000-item Query page, 90% of the time went there. These results are already the wire format
# (attribute values are {"S": ...} maps), so they are written as JSON directly. The check in
# tests/moto/check_patches.py compares both serializers on every operation listed here.

FAST_RESPONSES = {
    ("dynamodb", "Query"),
    ("dynamodb", "Scan"),
    ("dynamodb", "GetItem"),
    ("dynamodb", "BatchGetItem"),
    ("dynamodbstreams", "GetRecords"),
}


def _json_default(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        # moto's serializer writes epoch seconds to the millisecond, truncated.
        return int(value.timestamp() * 1000) / 1000
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


_SCALAR_TYPES = {"S", "N", "BOOL", "NULL"}
_SET_TYPES = {"SS", "NS"}


def dynamo_to_dict(value):
    """moto's conversion of a result to plain values, without its per-value recursion for the
    scalar attributes that make up nearly every item (it ran ten calls per item)."""
    kind = type(value)
    if kind is DynamoType:
        if value.type in _SCALAR_TYPES:
            return {value.type: value.value}
        if value.type in _SET_TYPES:
            return {value.type: list(value.value)}
    elif kind is dict or kind is LimitedSizeDict:
        return {k: dynamo_to_dict(v) for k, v in value.items()}
    elif kind is list:
        return [dynamo_to_dict(v) for v in value]
    return _original_dynamo_to_dict(value)


def execute_result(self, context):
    operation = (context.service_model.service_name, context.operation_model.name)
    if operation in FAST_RESPONSES and not isinstance(self.result, Exception):
        body = json.dumps(self.result, default=_json_default, separators=(",", ":"))
        return 200, {"Content-Type": "application/x-amz-json-1.0"}, body
    return _original_execute_result(self, context)


# --- Routing -------------------------------------------------------------------------------------


def get_backend_for_host(self, host):
    """moto's choice of backend for a request's host, remembered per host.

    For every request whose host is not a bare service name (every SDK call: the host is inferred
    as `dynamodb.us-east-1.amazonaws.com` and the like) moto lists its own package directory, with
    an isdir for each of its ~150 services, then tries its URL patterns in turn: about 250 µs of
    each DynamoDB, Streams or SQS call, under the dispatcher's lock. The answer depends on the host
    alone, and the hosts are a handful (service by region)."""
    cache = self.__dict__.setdefault("_wsfan_backend_for_host", {})
    if host not in cache:
        cache[host] = _original_get_backend_for_host(self, host)
    return cache[host]


# --- Request units ------------------------------------------------------------------------------

# What the DynamoDB calls since the server started would have consumed on-demand, for `wsfan-bench
# hot`'s cost line (moto does not report consumed capacity). GET UNITS_PATH answers it as JSON.
UNITS_PATH = "/_wsfan/dynamodb-units"
_units_lock = threading.Lock()
_units = {"calls": {}, "wru": 0.0, "rru": 0.0, "sqsCalls": {}, "sqsRequests": 0}

# SQS bills a request per 64 KB of its payload (a batch of ten small messages is one request).
SQS_BILLING_CHUNK = 64 * 1024


def _size_units(value, unit_bytes):
    """The units of an item or a response of this JSON size: at least one, then per `unit_bytes`.
    The wire JSON (type tags, quoting) is larger than DynamoDB's item size, so this errs high."""
    size = len(json.dumps(value)) if not isinstance(value, int) else value
    return max(1, -(-size // unit_bytes))


def request_units(operation, request, response_bytes):
    """(write units, read units) one DynamoDB call consumes on-demand, from its request and the
    size of its answer: writes per 1 KB of item, transactional items twice, reads per 4 KB read
    (half for an eventually consistent one). Conditional writes that fail still consume units."""
    read_factor = 1.0 if request.get("ConsistentRead") else 0.5
    if operation == "PutItem":
        return _size_units(request.get("Item", {}), 1024), 0.0
    if operation in ("UpdateItem", "DeleteItem"):
        # The item's size is not in the request; wsfan's items are under 1 KB.
        return 1, 0.0
    if operation == "BatchWriteItem":
        wru = 0
        for requests in request.get("RequestItems", {}).values():
            for r in requests:
                wru += _size_units(r["PutRequest"]["Item"], 1024) if "PutRequest" in r else 1
        return wru, 0.0
    if operation == "TransactWriteItems":
        wru = 0
        for item in request.get("TransactItems", []):
            put = item.get("Put")
            wru += 2 * (_size_units(put["Item"], 1024) if put else 1)
        return wru, 0.0
    if operation == "TransactGetItems":
        return 0, 2.0 * max(1, len(request.get("TransactItems", [])))
    if operation in ("GetItem", "Query", "Scan", "BatchGetItem"):
        return 0, read_factor * _size_units(response_bytes, 4096)
    return 0, 0.0


def _count_units(operation, body, response_bytes):
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        request = {}
    wru, rru = request_units(operation, request, response_bytes)
    with _units_lock:
        _units["calls"][operation] = _units["calls"].get(operation, 0) + 1
        _units["wru"] += wru
        _units["rru"] += rru


def dispatch_counting_units(self, environ, start_response):
    """moto's dispatcher, counting each DynamoDB call's request units (Streams reads by a Lambda
    trigger are free, so only `DynamoDB_20120810.*` targets count) and each SQS call's billed
    requests, and answering UNITS_PATH."""
    if environ.get("PATH_INFO") == UNITS_PATH:
        with _units_lock:
            body = json.dumps(_units).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target.startswith("AmazonSQS."):
        operation = target.split(".", 1)[1]
        chunks = max(1, -(-int(environ.get("CONTENT_LENGTH") or 0) // SQS_BILLING_CHUNK))
        with _units_lock:
            _units["sqsCalls"][operation] = _units["sqsCalls"].get(operation, 0) + 1
            _units["sqsRequests"] += chunks
    if not target.startswith("DynamoDB_"):
        return _original_dispatch(self, environ, start_response)
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    answer = _original_dispatch(self, environ, start_response)
    try:
        chunks = list(answer)
    finally:
        if hasattr(answer, "close"):
            answer.close()
    _count_units(target.rsplit(".", 1)[-1], body, sum(len(c) for c in chunks))
    return chunks


# --- Concurrency --------------------------------------------------------------------------------


def _dynamodb_requests_run_one_at_a_time() -> None:
    """Makes each DynamoDB and Streams call atomic, as DynamoDB's own are.

    The server runs one thread per request, and a transaction checks its conditions and then
    writes. Two concurrent calls could otherwise both pass an attribute_not_exists check, or a
    query could read a transaction half-applied. One lock over both backends (re-entrant, as the
    transaction calls put_item and friends) rules both out. Every call under it now costs what
    its own items cost, not what the table costs, so the lock no longer queues callers behind
    table-sized work.
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


_original_execute_result = ActionResult.execute_result
_original_dynamo_to_dict = dynamodb_responses.dynamo_to_dict
_original_stream_shard_add = StreamShard.add
_original_shard_iterator_init = ShardIterator.__init__
_original_get_records = DynamoDBStreamsBackend.get_records
_original_table_put_item = Table.put_item
_original_table_delete_item = Table.delete_item
_original_table_get_item = Table.get_item
_original_table_query = Table.query
_original_get_backend_for_host = DomainDispatcherApplication.get_backend_for_host
_original_dispatch = DomainDispatcherApplication.__call__
# --- SQS FIFO groups -----------------------------------------------------------------------------

# moto reads a FIFO queue's in-flight message groups once, when a ReceiveMessage starts. A long
# poll that began while a group was idle then hands out that group's next message although
# another consumer took an earlier one meanwhile, and two batches of one group run at once: the
# local publish queue numbered a channel's messages out of order. SQS keeps a group to one
# consumer at a time. Here a long poll is a series of short ones, each reading the groups afresh.
_moto_receive_message = SQSBackend.receive_message


def sqs_receive_message(self, queue_name, count, wait_seconds_timeout, visibility_timeout,
                        message_attribute_names=None):
    queue = self.get_queue(queue_name)
    if not queue.fifo_queue or not wait_seconds_timeout:
        return _moto_receive_message(self, queue_name, count, wait_seconds_timeout, visibility_timeout,
                                     message_attribute_names)
    deadline = time.monotonic() + wait_seconds_timeout
    while True:
        got = _moto_receive_message(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
        left = deadline - time.monotonic()
        if got or left <= 0:
            return got
        if queue.messages:
            time.sleep(min(left, 0.02))  # visible but held by an in-flight group: look again soon
        else:
            queue.wait_for_messages(min(left, 1.0))


_installed = False


def install_patches() -> None:
    """Applies every patch above, once (the server, and the in-process checks of tests/moto)."""
    global _installed
    if _installed:
        return
    _installed = True
    DynamoDBBackend.transact_write_items = transact_write_items
    StreamShard.add = stream_shard_add
    StreamShard.get = stream_shard_get
    ShardIterator.__init__ = _shard_iterator_init
    DynamoDBStreamsBackend.get_records = get_records
    Table.put_item = table_put_item
    Table.delete_item = table_delete_item
    Table.get_item = table_get_item
    Table.query = table_query
    ActionResult.execute_result = execute_result
    dynamodb_responses.dynamo_to_dict = dynamo_to_dict
    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host
    DomainDispatcherApplication.__call__ = dispatch_counting_units
    SQSBackend.receive_message = sqs_receive_message
    _dynamodb_requests_run_one_at_a_time()
    gc.callbacks.append(_freeze_after_full_collection)


def _freeze_after_full_collection(phase, info):
    """Moves what survived a full collection out of the collector's sight (gc.freeze).

    A full collection walks every tracked object, and a table of 100,000 items is millions of
    them: in `wsfan-bench channel` each one stopped the server longer than the last, up to
    995 ms in the middle of a broadcast (where a small channel's p99 came from). After a freeze
    the next full collection walks only what was made since. The price: an object that lives
    past one full collection and later becomes garbage in a reference cycle is never freed;
    moto's items and stream records are freed by reference counting, without cycles.
    """
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()


def main() -> None:
    install_patches()
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--forever", action="store_true", help="ignore standard input; run until killed")
    args = parser.parse_args()
    # Request lines from werkzeug drown test output; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    print(f"READY {port}", flush=True)
    if args.forever:
        threading.Event().wait()
    # Block until the parent closes our stdin (or exits), then leave at once: a graceful stop
    # waits for request threads, and one stuck in a long call kept the server (and its memory)
    # alive after its parent had gone.
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    main()
