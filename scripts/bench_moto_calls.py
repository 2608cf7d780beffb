"""moto's CPU per DynamoDB call, with nothing else running: the floor under every figure of the
local stack (`scripts/bench moto`).

Starts scripts/moto_server.py (with wsfan's patches), creates a table like wsfan's, and makes N
calls of each kind a read receipt makes, as ws-message makes them: the membership read
(`GetItem`, consistent, projected), the cursor's conditional `PutItem`, and the limiter's
conditional `UpdateItem` returning `ALL_NEW`. Several client threads keep moto busy; its CPU is
its own user + system time from /proc, divided by N. moto answers on one thread at a time (one
Python process), so 1 / (CPU per call) is the most calls of that kind it can answer a second.
"""

import argparse
import os
import subprocess
import sys
import threading
import time

import boto3

parser = argparse.ArgumentParser()
parser.add_argument("--calls", type=int, default=1000, help="calls of each kind")
parser.add_argument("--threads", type=int, default=4)
args = parser.parse_args()

here = os.path.dirname(os.path.abspath(__file__))
moto = subprocess.Popen(
    [sys.executable, os.path.join(here, "moto_server.py"), "--port", "0"],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
)
port = int(moto.stdout.readline().split()[1])


def moto_cpu_seconds():
    fields = open(f"/proc/{moto.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client():
    return boto3.client(
        "dynamodb",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


TABLE = "bench"
client().create_table(
    TableName=TABLE,
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
    BillingMode="PAY_PER_REQUEST",
    StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
)

CALLS = {
    "GetItem (membership)": lambda c, i: c.get_item(
        TableName=TABLE,
        Key={"pk": {"S": "CHAN#c"}, "sk": {"S": f"CONN#{i}"}},
        ConsistentRead=True,
        ProjectionExpression="pk",
    ),
    "PutItem (cursor)": lambda c, i: c.put_item(
        TableName=TABLE,
        Item={"pk": {"S": "CHAN#c"}, "sk": {"S": f"READ#{i}"}, "seq": {"N": "2"}, "messageId": {"S": "m"}},
        ConditionExpression="attribute_not_exists(#seq) OR #seq < :seq",
        ExpressionAttributeNames={"#seq": "seq"},
        ExpressionAttributeValues={":seq": {"N": "2"}},
        ReturnValuesOnConditionCheckFailure="ALL_OLD",
    ),
    "UpdateItem (limiter)": lambda c, i: c.update_item(
        TableName=TABLE,
        Key={"pk": {"S": f"CONN#{i}"}, "sk": {"S": "RATE"}},
        UpdateExpression="SET #tat = :next, #ttl = :ttl",
        ConditionExpression="attribute_not_exists(#tat) OR #tat <= :now",
        ExpressionAttributeNames={"#tat": "tat", "#ttl": "expiresAt"},
        ExpressionAttributeValues={":next": {"N": "5"}, ":ttl": {"N": "9"}, ":now": {"N": "4"}},
        ReturnValues="ALL_NEW",
        ReturnValuesOnConditionCheckFailure="ALL_OLD",
    ),
}

total = 0.0
for name, call in CALLS.items():
    def work(first, call=call):
        c = client()
        for i in range(first, args.calls, args.threads):
            call(c, i)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(args.threads)]
    cpu, wall = moto_cpu_seconds(), time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu, wall = moto_cpu_seconds() - cpu, time.monotonic() - wall
    per_call = cpu / args.calls
    total += per_call
    print(f"{name:22} {args.calls} calls: moto CPU {per_call * 1000:.2f} ms per call "
          f"(at most {1 / per_call:.0f}/s), {args.calls / wall:.0f} calls/s answered")
print(f"a read receipt's three calls: {total * 1000:.2f} ms of moto CPU; 1,000 receipts: at least {total * 1000:.1f} s")
moto.stdin.close()
moto.wait()
