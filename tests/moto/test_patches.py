"""Checks of scripts/moto_server.py's patches to moto, in-process (`mock_aws`), so that they can
compare the patched paths with moto's own, item by item and byte by byte.

Run by scripts/test: `.venv/bin/python -m unittest discover -s tests/moto`.
"""

import base64
import json
import os
import random
import sys
import time
import tracemalloc
import unittest

import boto3
from moto import mock_aws

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import moto_server  # noqa: E402

moto_server.install_patches()

from moto.core.responses import ActionResult  # noqa: E402
from moto.dynamodb.models import dynamodb_backends  # noqa: E402
from moto.dynamodbstreams.models import dynamodbstreams_backends  # noqa: E402

ACCOUNT, REGION = "123456789012", "us-east-1"


def create_table(client, name="t"):
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    return dynamodb_backends[ACCOUNT][REGION].get_table(name)


def send(n, body="x" * 200):
    """The shape of wsfan's sendMessage: a membership check, a dedupe item and the message."""
    return [
        {
            "ConditionCheck": {
                "TableName": "t",
                "Key": {"pk": {"S": "CHAN#a"}, "sk": {"S": "CONN#c1"}},
                "ConditionExpression": "attribute_exists(pk)",
            }
        },
        {
            "Put": {
                "TableName": "t",
                "Item": {"pk": {"S": "CHAN#a"}, "sk": {"S": f"DEDUPE#u#{n}"}, "id": {"S": str(n)}},
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        },
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "CHAN#a"}, "sk": {"S": f"MSG#{n:08}"}, "body": {"S": body}}}},
    ]


class Case(unittest.TestCase):
    def setUp(self):
        self.mock = mock_aws()
        self.mock.start()
        self.client = boto3.client("dynamodb", region_name=REGION)
        self.table = create_table(self.client)
        self.client.put_item(TableName="t", Item={"pk": {"S": "CHAN#a"}, "sk": {"S": "CONN#c1"}})

    def tearDown(self):
        self.mock.stop()

    def keys(self):
        return sorted(i["sk"]["S"] for i in self.client.scan(TableName="t")["Items"])


class Transactions(Case):
    def test_a_cancelled_transaction_writes_nothing_and_emits_no_record(self):
        self.client.transact_write_items(TransactItems=send(1))
        records = len(self.table.stream_shard.items)
        with self.assertRaises(self.client.exceptions.TransactionCanceledException) as cancelled:
            # The dedupe item exists: the whole transaction is cancelled, the message not written.
            items = send(1)
            items[2]["Put"]["Item"]["sk"] = {"S": "MSG#other"}
            self.client.transact_write_items(TransactItems=items)
        reasons = [r["Code"] for r in cancelled.exception.response["CancellationReasons"]]
        self.assertEqual(reasons, ["None", "ConditionalCheckFailed", "None"])
        self.assertNotIn("MSG#other", self.keys())
        self.assertEqual(len(self.table.stream_shard.items), records)

    def test_conditions_see_the_state_before_the_transaction(self):
        # A condition on an item the same transaction deletes reads the item as it was.
        self.client.transact_write_items(
            TransactItems=[
                {"Delete": {"TableName": "t", "Key": {"pk": {"S": "CHAN#a"}, "sk": {"S": "CONN#c1"}}}},
                {
                    "Put": {
                        "TableName": "t",
                        "Item": {"pk": {"S": "CHAN#b"}, "sk": {"S": "X"}},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ]
        )
        self.assertEqual(self.keys(), ["X"])

    def test_a_write_that_fails_half_way_is_rolled_back_with_its_records(self):
        self.client.put_item(TableName="t", Item={"pk": {"S": "CHAN#a"}, "sk": {"S": "N"}, "n": {"N": "1"}})
        records = len(self.table.stream_shard.items)
        with self.assertRaises(Exception):
            self.client.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": "t", "Item": {"pk": {"S": "CHAN#a"}, "sk": {"S": "NEW"}}}},
                    {
                        "Update": {
                            "TableName": "t",
                            "Key": {"pk": {"S": "CHAN#a"}, "sk": {"S": "N"}},
                            "UpdateExpression": "SET n = n + :one",
                            "ExpressionAttributeValues": {":one": {"S": "not a number"}},
                        }
                    },
                ]
            )
        self.assertEqual(self.keys(), ["CONN#c1", "N"])
        item = self.client.get_item(TableName="t", Key={"pk": {"S": "CHAN#a"}, "sk": {"S": "N"}})["Item"]
        self.assertEqual(item["n"], {"N": "1"})
        self.assertEqual(len(self.table.stream_shard.items), records)
        # The sorted-key index forgot the rolled-back key too.
        found = self.client.query(
            TableName="t",
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "CHAN#a"}},
        )["Items"]
        self.assertEqual([i["sk"]["S"] for i in found], ["CONN#c1", "N"])

    def test_cost_and_memory_per_transaction_stay_flat(self):
        # moto's own transaction deep-copied the table per item: each block of 150 cost more than
        # the one before (the fourth already three times the first), and memory grew by
        # megabytes per transaction.
        def block(start, size=150):
            began = time.process_time()
            for n in range(start, start + size):
                self.client.transact_write_items(TransactItems=send(n))
            return time.process_time() - began

        first = block(0)
        for start in range(150, 3000, 150):
            cost = block(start)
            self.assertLess(cost, 3 * first, f"block 1: {first:.3f}s of CPU, block {start // 150 + 1}: {cost:.3f}s")
        # Memory is traced apart from the timing: tracing slows every allocation several times.
        tracemalloc.start()
        middle, _ = tracemalloc.get_traced_memory()
        block(3000, 300)
        end, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # The last 300 transactions hold their items and stream records: a few KB each.
        per_transaction = (end - middle) / 300
        self.assertLess(per_transaction, 20_000, f"{per_transaction:.0f} bytes per transaction")


class Streams(Case):
    def test_records_past_retention_are_trimmed_and_sequence_numbers_go_on(self):
        shard = self.table.stream_shard
        streams = dynamodbstreams_backends[ACCOUNT][REGION]
        arn = self.table.latest_stream_label and self.client.describe_table(TableName="t")["Table"]["LatestStreamArn"]
        before = moto_server.STREAM_RETENTION_SECONDS
        try:
            for n in range(1500):
                self.client.put_item(TableName="t", Item={"pk": {"S": "P"}, "sk": {"S": f"{n:05}"}})
            first = shard.starting_sequence_number
            seqs = [int(r.record["dynamodb"]["SequenceNumber"]) for r in shard.items]
            moto_server.STREAM_RETENTION_SECONDS = 0.0
            time.sleep(0.01)
            self.client.put_item(TableName="t", Item={"pk": {"S": "P"}, "sk": {"S": "last"}})
        finally:
            moto_server.STREAM_RETENTION_SECONDS = before
        # Only the record written at the moment of trimming is left, and numbering goes on.
        self.assertEqual(len(shard.items), 1)
        self.assertEqual(shard.starting_sequence_number, seqs[-1] + 1)
        self.assertGreater(shard.starting_sequence_number, first)
        # TRIM_HORIZON starts at the horizon, and an iterator from before the trim reads from it
        # instead of failing.
        horizon = streams.get_shard_iterator(arn, shard.id, "TRIM_HORIZON")
        old = streams.get_shard_iterator(arn, shard.id, "AT_SEQUENCE_NUMBER", first)
        self.client.put_item(TableName="t", Item={"pk": {"S": "P"}, "sk": {"S": "after"}})
        for iterator in (horizon, old):
            records = iterator.get(10)["Records"]
            self.assertEqual([r["dynamodb"]["Keys"]["sk"]["S"] for r in records], ["last", "after"])
            self.assertEqual(int(records[1]["dynamodb"]["SequenceNumber"]), seqs[-1] + 2)

    def test_shard_iterators_expire(self):
        streams = dynamodbstreams_backends[ACCOUNT][REGION]
        arn = self.client.describe_table(TableName="t")["Table"]["LatestStreamArn"]
        iterator = streams.get_shard_iterator(arn, self.table.stream_shard.id, "LATEST")
        for _ in range(50):
            iterator = streams.shard_iterators[streams.get_records(iterator.arn, 100)["NextShardIterator"]]
        self.assertGreaterEqual(len(streams.shard_iterators), 50)
        for it in streams.shard_iterators.values():
            it.wsfan_created -= moto_server.SHARD_ITERATOR_TTL_SECONDS + 1
        streams._wsfan_last_sweep = 0
        streams.get_records(iterator.arn, 100)
        self.assertLessEqual(len(streams.shard_iterators), 1)


def original_query(table, *args, **kwargs):
    return moto_server._original_table_query(table, *args, **kwargs)


class Queries(Case):
    def test_queries_page_exactly_as_moto_does(self):
        rng = random.Random(7)
        keys = sorted({rng.choice(["CONN#", "MSG#", "USER#", "EVT#", "CONN#x", ""]) + str(rng.randint(0, 500)) for _ in range(400)})
        for k in keys:
            self.client.put_item(TableName="t", Item={"pk": {"S": "Q"}, "sk": {"S": k}, "v": {"S": "y" * rng.randint(0, 50)}})
        for k in keys[::3]:
            self.client.delete_item(TableName="t", Key={"pk": {"S": "Q"}, "sk": {"S": k}})
        conditions = [
            ("pk = :p", {}),
            ("pk = :p AND begins_with(sk, :a)", {":a": "CONN#"}),
            ("pk = :p AND begins_with(sk, :a)", {":a": "ZZ"}),
            ("pk = :p AND sk = :a", {":a": keys[4]}),
            ("pk = :p AND sk BETWEEN :a AND :b", {":a": "EVT#", ":b": "MSG#3"}),
            ("pk = :p AND sk > :a", {":a": "MSG#2"}),
            ("pk = :p AND sk >= :a", {":a": keys[10]}),
            ("pk = :p AND sk < :a", {":a": "MSG#2"}),
            ("pk = :p AND sk <= :a", {":a": keys[10]}),
        ]

        def read_all(patched, expression, values, forward, limit):
            Table = type(self.table)
            Table.query = moto_server.table_query if patched else moto_server._original_table_query
            try:
                pages, start = [], None
                while True:
                    kwargs = {"ExclusiveStartKey": start} if start else {}
                    if limit:
                        kwargs["Limit"] = limit
                    values_ = {":p": {"S": "Q"}, **{k: {"S": v} for k, v in values.items()}}
                    out = self.client.query(
                        TableName="t",
                        KeyConditionExpression=expression,
                        ExpressionAttributeValues=values_,
                        ScanIndexForward=forward,
                        **kwargs,
                    )
                    pages.append(([i["sk"]["S"] for i in out["Items"]], out.get("LastEvaluatedKey")))
                    start = out.get("LastEvaluatedKey")
                    if not start:
                        return pages
            finally:
                Table.query = moto_server.table_query

        for expression, values in conditions:
            for forward in (True, False):
                for limit in (None, 1, 7):
                    with self.subTest(expression=expression, values=values, forward=forward, limit=limit):
                        patched = read_all(True, expression, values, forward, limit)
                        original = read_all(False, expression, values, forward, limit)
                        # The same items in the same order; pages within the limit, each
                        # LastEvaluatedKey the key of its page's last item. (moto also returns
                        # one when only keys outside the condition follow; both are DynamoDB's
                        # behaviour, which may end on an empty page.)
                        self.assertEqual(
                            [k for page, _ in patched for k in page], [k for page, _ in original for k in page]
                        )
                        for page, last in patched:
                            self.assertLessEqual(len(page), limit or len(page))
                            if last:
                                self.assertEqual(last["sk"]["S"], page[-1])

    def test_projections_equal_moto_projections(self):
        self.client.put_item(
            TableName="t",
            Item={
                "pk": {"S": "P"},
                "sk": {"S": "CONN#1"},
                "userId": {"S": "u"},
                "n": {"N": "12.50"},
                "m": {"M": {"a": {"S": "b"}}},
                "ss": {"SS": ["x", "y"]},
            },
        )
        self.client.put_item(TableName="t", Item={"pk": {"S": "P"}, "sk": {"S": "CONN#2"}})
        Table = type(self.table)
        for projection in ("sk, userId", "sk, n, absent", "m.a, sk", "ss", "#u", "m"):
            with self.subTest(projection=projection):
                kwargs = dict(
                    TableName="t",
                    KeyConditionExpression="pk = :p AND begins_with(sk, :c)",
                    ExpressionAttributeValues={":p": {"S": "P"}, ":c": {"S": "CONN#"}},
                    ProjectionExpression=projection,
                )
                if "#u" in projection:
                    kwargs["ExpressionAttributeNames"] = {"#u": "userId"}
                fast = self.client.query(**kwargs)["Items"]
                Table.query = moto_server._original_table_query
                try:
                    slow = self.client.query(**kwargs)["Items"]
                finally:
                    Table.query = moto_server.table_query
                self.assertEqual(fast, slow)

    def test_a_missing_partition_is_not_created_by_reading_it(self):
        for n in range(100):
            self.client.get_item(TableName="t", Key={"pk": {"S": f"GONE#{n}"}, "sk": {"S": "META"}})
        self.assertEqual(len(self.table.items), 1)


class Responses(Case):
    def test_fast_responses_equal_moto_serializer(self):
        item = {
            "pk": {"S": "R"},
            "sk": {"S": "1"},
            "s": {"S": "héllo ✓"},
            "n": {"N": "12.50"},
            "b": {"B": b"\x00\xffbinary"},
            "ss": {"SS": ["a", "b"]},
            "ns": {"NS": ["1", "2"]},
            "bs": {"BS": [b"\x01", b"\x02"]},
            "m": {"M": {"x": {"S": "y"}, "l": {"L": [{"N": "1"}, {"BOOL": True}, {"NULL": True}]}}},
            "bool": {"BOOL": False},
        }
        self.client.put_item(TableName="t", Item=item)
        arn = self.client.describe_table(TableName="t")["Table"]["LatestStreamArn"]
        streams = boto3.client("dynamodbstreams", region_name=REGION)
        shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
            "ShardIterator"
        ]
        calls = [
            lambda: self.client.query(
                TableName="t", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "R"}}
            ),
            lambda: self.client.scan(TableName="t"),
            lambda: self.client.get_item(TableName="t", Key={"pk": {"S": "R"}, "sk": {"S": "1"}}),
            lambda: self.client.batch_get_item(
                RequestItems={"t": {"Keys": [{"pk": {"S": "R"}, "sk": {"S": "1"}}]}}
            ),
            lambda: streams.get_records(ShardIterator=iterator),
        ]
        for call in calls:
            fast = call()
            ActionResult.execute_result = moto_server._original_execute_result
            try:
                slow = call()
            finally:
                ActionResult.execute_result = moto_server.execute_result
            for response in (fast, slow):
                response.pop("ResponseMetadata")
                response.pop("NextShardIterator", None)
                for record in response.get("Records", []):
                    record.pop("eventID")
            self.assertEqual(fast, slow)
        self.assertEqual(calls[2]()["Item"]["b"], {"B": b"\x00\xffbinary"})
        self.assertEqual(base64.b64decode(base64.b64encode(b"x")), b"x")



class RequestUnits(Case):
    """The request units the server counts for `wsfan-bench hot`, through moto's own dispatcher."""

    def call(self, client, operation, body, service="dynamodb"):
        """A JSON-protocol call of `service` (dynamodb or sqs) through the dispatcher `client`."""
        prefix = {"dynamodb": "DynamoDB_20120810", "sqs": "AmazonSQS"}[service]
        return client.post(
            "/",
            data=json.dumps(body),
            headers={
                "X-Amz-Target": f"{prefix}.{operation}",
                "Content-Type": "application/x-amz-json-1.0",
                "Host": "127.0.0.1:4566",
                "Authorization": f"AWS4-HMAC-SHA256 Credential=AKID/20261124/us-east-1/{service}/aws4_request, "
                "SignedHeaders=host, Signature=0",
            },
        )

    def test_dynamodb_calls_are_counted_in_request_units(self):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.test import Client

        client = Client(DomainDispatcherApplication(create_backend_app))
        before = json.loads(client.get(moto_server.UNITS_PATH).data)
        key = {"pk": {"S": "CHAN#a"}, "sk": {"S": "MSG#big"}}
        # An item over 1 KB: two write units.
        answer = self.call(client, "PutItem", {"TableName": "t", "Item": {**key, "body": {"S": "x" * 1500}}})
        self.assertEqual(answer.status_code, 200, answer.data)
        # A strongly consistent read of it: one read unit (under 4 KB); eventually consistent: half.
        answer = self.call(client, "GetItem", {"TableName": "t", "Key": key, "ConsistentRead": True})
        self.assertIn(b"xxxx", answer.data)
        self.call(client, "GetItem", {"TableName": "t", "Key": key})
        # sendMessage's transaction: three items under 1 KB, two units each.
        answer = self.call(client, "TransactWriteItems", {"TransactItems": send(1)})
        self.assertEqual(answer.status_code, 200, answer.data)
        after = json.loads(client.get(moto_server.UNITS_PATH).data)
        self.assertEqual(after["wru"] - before["wru"], 2 + 6)
        self.assertEqual(after["rru"] - before["rru"], 1.5)
        calls = {op: n - before["calls"].get(op, 0) for op, n in after["calls"].items()}
        self.assertEqual({op: n for op, n in calls.items() if n}, {"PutItem": 1, "GetItem": 2, "TransactWriteItems": 1})
        self.assertEqual(self.keys(), ["CONN#c1", "DEDUPE#u#1", "MSG#00000001", "MSG#big"])

    def test_sqs_calls_are_counted_per_64_kb(self):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.test import Client

        client = Client(DomainDispatcherApplication(create_backend_app))
        before = json.loads(client.get(moto_server.UNITS_PATH).data)

        def sqs(operation, body):
            return self.call(client, operation, body, service="sqs")

        url = json.loads(sqs("CreateQueue", {"QueueName": "q"}).data)["QueueUrl"]
        self.assertEqual(sqs("SendMessage", {"QueueUrl": url, "MessageBody": "x"}).status_code, 200)
        # A message over 64 KB is two requests.
        self.assertEqual(sqs("SendMessage", {"QueueUrl": url, "MessageBody": "x" * 70_000}).status_code, 200)
        after = json.loads(client.get(moto_server.UNITS_PATH).data)
        self.assertEqual(after["sqsRequests"] - before["sqsRequests"], 1 + 1 + 2)
        self.assertEqual(after["sqsCalls"]["SendMessage"] - before["sqsCalls"].get("SendMessage", 0), 2)
        self.assertEqual(after["wru"], before["wru"])

    def test_units_follow_dynamodb_pricing_rules(self):
        units = moto_server.request_units
        self.assertEqual(units("UpdateItem", {}, 100), (1, 0.0))
        self.assertEqual(units("Query", {}, 9000), (0, 1.5))
        self.assertEqual(units("Query", {"ConsistentRead": True}, 10), (0, 1.0))
        self.assertEqual(units("TransactGetItems", {"TransactItems": [{}, {}]}, 10), (0, 4.0))
        writes = {"t": [{"PutRequest": {"Item": {"a": {"S": "x" * 3000}}}}, {"DeleteRequest": {"Key": {}}}]}
        self.assertEqual(units("BatchWriteItem", {"RequestItems": writes}, 10), (3 + 1, 0.0))
        self.assertEqual(units("DescribeTable", {}, 10), (0, 0.0))


class FifoGroups(unittest.TestCase):
    def test_a_long_poll_never_takes_a_group_that_another_consumer_holds(self):
        with mock_aws():
            sqs = boto3.client("sqs", region_name=REGION)
            url = sqs.create_queue(QueueName="q.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
            got = {}

            def poll(name):
                got[name] = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2,
                                                VisibilityTimeout=30).get("Messages", [])

            import threading

            pollers = [threading.Thread(target=poll, args=(n,)) for n in "ab"]
            for t in pollers:
                t.start()
            time.sleep(0.3)  # both are waiting on the empty queue
            sqs.send_message(QueueUrl=url, MessageBody="1", MessageGroupId="g", MessageDeduplicationId="1")
            time.sleep(0.3)  # one of them took it, and holds the group
            sqs.send_message(QueueUrl=url, MessageBody="2", MessageGroupId="g", MessageDeduplicationId="2")
            for t in pollers:
                t.join()
            bodies = sorted([m["Body"] for m in got[n]] for n in "ab")
            self.assertEqual(bodies, [[], ["1"]], "2 waits until 1 is done")


class Routing(unittest.TestCase):
    def environ(self, service, target=None):
        environ = {
            "PATH_INFO": "/",
            "REQUEST_METHOD": "POST",
            "HTTP_HOST": "127.0.0.1:4566",
            "HTTP_AUTHORIZATION": f"AWS4-HMAC-SHA256 Credential=AKID/20261124/us-east-1/{service}/aws4_request, "
            "SignedHeaders=host, Signature=0",
        }
        if target:
            environ["HTTP_X_AMZ_TARGET"] = target
        return environ

    def test_each_host_is_routed_once_and_to_the_backend_moto_chooses(self):
        from moto import backends
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        environs = [
            self.environ("dynamodb", "DynamoDB_20120810.Query"),
            self.environ("dynamodb", "DynamoDB_20120810.TransactWriteItems"),
            self.environ("dynamodb", "DynamoDBStreams_20120810.GetRecords"),
            self.environ("sqs", "AmazonSQS.ReceiveMessage"),
            {"PATH_INFO": "/moto-api/reset", "REQUEST_METHOD": "POST", "HTTP_HOST": "127.0.0.1:4566"},
        ]

        # What install_patches put in place, as the server runs it.
        installed = DomainDispatcherApplication.get_backend_for_host

        def route(get_backend_for_host):
            """The backend of 20 rounds of those requests, and how often moto listed its package."""
            listed = []
            original_list = backends.list_of_moto_modules
            backends.list_of_moto_modules = lambda: listed.append(1) or original_list()
            DomainDispatcherApplication.get_backend_for_host = get_backend_for_host
            try:
                dispatcher = DomainDispatcherApplication(create_backend_app)
                apps = [dispatcher.get_application(e) for _ in range(20) for e in environs]
            finally:
                backends.list_of_moto_modules = original_list
                DomainDispatcherApplication.get_backend_for_host = installed
            backend_of = {id(app): backend for backend, app in dispatcher.app_instances.items()}
            return [backend_of[id(app)] for app in apps], len(listed)

        chosen, listed = route(installed)
        expected, listed_by_moto = route(moto_server._original_get_backend_for_host)
        self.assertEqual(chosen, expected)
        self.assertEqual(set(chosen), {"dynamodb", "dynamodbstreams", "sqs", "moto_api"})
        # moto lists its package for every request with an inferred host; here once per host.
        self.assertEqual(listed_by_moto, 80)
        self.assertEqual(listed, 3)

if __name__ == "__main__":
    unittest.main()
