"""Publisher against `wsfan dev`: the item goes to moto's table, the real stream-fanout pushes it."""

from __future__ import annotations

import json
import os
import subprocess
import time
import unittest
from typing import Any, Dict, List, Tuple

from wsfan import Publisher, PublishError
from wsfan._ids import new_ulid

from .stack import LOCAL_AWS, WSFAN, Stack, shared_stack
from .ws import WebSocketClient


def clients(stack: Stack) -> Tuple[Any, Any]:
    return stack.client("sqs"), stack.client("dynamodb")


def member(stack: Stack, user: str, channel: str) -> WebSocketClient:
    ws: WebSocketClient = stack.socket(user, {"action": "join", "channel": channel}, "joined")
    return ws


def chat(ws: WebSocketClient) -> List[Dict[str, Any]]:
    return [f for f in ws.frames if f.get("type") == "message"]


class PublishMessage(unittest.TestCase):
    """Through the publish queue: the real `publish` function numbers each message."""

    def test_messages_are_numbered_in_send_order_pushed_and_in_history_and_a_retry_is_stored_once(self) -> None:
        stack = shared_stack()
        sqs, _ = clients(stack)
        channel = f"workspace:pub-{new_ulid().lower()}"
        ws = member(stack, "reader", channel)
        publisher = Publisher(queue_url=stack.env["publish"], sqs=sqs)
        try:
            for i in range(1, 6):
                publisher.publish_message(channel, f"invoice {i}", sender="billing", client_msg_id=f"inv-{i}")
            publisher.publish_message(channel, "invoice 3", sender="billing", client_msg_id="inv-3")  # a retry
            ws.wait_for("five messages", lambda fs: len([f for f in fs if f.get("type") == "message"]) >= 5)
            ws.send_json({"action": "history", "channel": channel})
            ws.wait_for("history", lambda fs: any(f.get("type") == "history" for f in fs))
            time.sleep(1)  # a duplicate would be pushed by now
        finally:
            ws.close()
        pushed = chat(ws)
        self.assertEqual([(m["seq"], m["body"], m["senderId"]) for m in pushed],
                         [(i, f"invoice {i}", "billing") for i in range(1, 6)])
        history = next(f for f in ws.frames if f.get("type") == "history")["messages"]
        self.assertEqual([(m["seq"], m["messageId"]) for m in history], [(m["seq"], m["messageId"]) for m in pushed])

    def test_publish_to_user_through_the_queue_is_numbered(self) -> None:
        stack = shared_stack()
        sqs, _ = clients(stack)
        user = f"u{new_ulid().lower()[:12]}"
        ws = WebSocketClient(f"{stack.ws_url}?token={stack.token(user)}")
        try:
            Publisher(queue_url=stack.env["publish"], sqs=sqs).publish_to_user(user, "Your report is ready")
            ws.wait_for("the message", lambda fs: any(f.get("type") == "message" for f in fs))
        finally:
            ws.close()
        (frame,) = chat(ws)
        self.assertEqual((frame["channel"], frame["seq"], frame["senderId"]), (f"user:{user}", 1, "system"))

    def test_wsfan_publish_message_with_a_queue_url_is_numbered_too(self) -> None:
        stack = shared_stack()
        channel = f"workspace:cli-{new_ulid().lower()}"
        ws = member(stack, "clireader", channel)
        try:
            out = subprocess.run(
                [WSFAN, "publish", "message", "--endpoint-url", stack.env["moto"], "--queue-url", stack.env["publish"],
                 "--channel", channel, "--body", "from the CLI", "--sender", "ops"],
                env={**os.environ, **LOCAL_AWS, "AWS_REGION": "us-east-1"}, capture_output=True, text=True, check=True)
            self.assertTrue(json.loads(out.stdout)["queued"])
            ws.wait_for("the message", lambda fs: any(f.get("type") == "message" for f in fs))
        finally:
            ws.close()
        (frame,) = chat(ws)
        self.assertEqual((frame["seq"], frame["body"], frame["senderId"]), (1, "from the CLI", "ops"))

    def test_bad_input_is_refused_before_sending(self) -> None:
        stack = shared_stack()
        sqs, _ = clients(stack)
        publisher = Publisher(queue_url=stack.env["publish"], sqs=sqs)
        with self.assertRaisesRegex(ValueError, "channel"):
            publisher.publish_message("lobby", "hi")
        with self.assertRaisesRegex(ValueError, "client_msg_id"):
            publisher.publish_message("workspace:1", "hi", client_msg_id="a#b")
        with self.assertRaisesRegex(ValueError, "sender"):
            publisher.publish_message("workspace:1", "hi", sender="a b")
        with self.assertRaisesRegex(ValueError, "queue_url"):
            Publisher(table_name="t").publish_message("workspace:1", "hi")


class PublishToUser(unittest.TestCase):
    def test_every_connection_of_the_user_gets_the_message_and_nobody_else(self) -> None:
        stack = shared_stack()
        phone, laptop, other = (WebSocketClient(f"{stack.ws_url}?token={stack.token(u)}")
                                for u in ("alice", "alice", "bob"))
        dynamodb = stack.client("dynamodb")
        try:
            message_id = Publisher(table_name=stack.env["table"], dynamodb=dynamodb).publish_to_user(
                "alice", "Your report is ready", sender="billing")
            for ws in (phone, laptop):
                ws.wait_for("the message", lambda fs: any(f.get("messageId") == message_id for f in fs))
            # bob's socket is open through the same fanout: give a wrong push the time to arrive.
            other.send_json({"action": "ping"})
            other.wait_for("an answer", lambda fs: len(fs) > 0)
        finally:
            for ws in (phone, laptop, other):
                ws.close()
        frame = next(f for f in phone.frames if f.get("messageId") == message_id)
        self.assertEqual((frame["type"], frame["channel"], frame["senderId"], frame["body"]),
                         ("message", "user:alice", "billing", "Your report is ready"))
        self.assertFalse(any(f.get("messageId") == message_id for f in other.frames))

    def test_bad_input_is_refused_and_a_failed_write_raises_with_the_message(self) -> None:
        stack = shared_stack()
        dynamodb = stack.client("dynamodb")
        with self.assertRaisesRegex(ValueError, "user_id"):
            Publisher(table_name=stack.env["table"], dynamodb=dynamodb).publish_to_user("al ice", "hi")
        with self.assertRaisesRegex(ValueError, "limit"):
            Publisher(table_name=stack.env["table"], dynamodb=dynamodb).publish_to_user("alice", "x" * 70_000)
        with self.assertRaises(PublishError) as raised:
            Publisher(table_name="no-such-table", dynamodb=dynamodb).publish_to_user("alice", "lost?")
        self.assertEqual(raised.exception.events, [{"channel": "user:alice", "body": "lost?"}])


if __name__ == "__main__":
    unittest.main()
