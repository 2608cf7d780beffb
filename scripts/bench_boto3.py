"""The baseline wsfan is measured against: what the AWS samples and most tutorials deploy.

A Python Lambda that loops over the connections and calls boto3's post_to_connection one at a
time. Prints posts/s and CPU time per post as JSON.
"""

import argparse
import json
import time

import boto3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--recipients", type=int, default=10_000)
    args = parser.parse_args()

    client = boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=args.endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    payload = json.dumps({"type": "message", "channel": "workspace:bench", "body": "x" * 900}).encode()
    payload = payload.ljust(1024)
    ids = [f"Conn{i:08}AAA=" for i in range(args.recipients)]
    client.post_to_connection(ConnectionId="warm-up", Data=payload)

    cpu0, t0 = time.process_time(), time.perf_counter()
    for connection_id in ids:
        # The sample's loop: one call at a time; a GoneException would delete the connection.
        client.post_to_connection(ConnectionId=connection_id, Data=payload)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(json.dumps({"posts_per_s": len(ids) / wall, "cpu_us_per_post": cpu * 1e6 / len(ids), "wall_s": wall}))


if __name__ == "__main__":
    main()
