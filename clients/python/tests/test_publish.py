"""Publisher against `wsfan dev`: the item goes to moto's table, the real stream-fanout pushes it."""

from __future__ import annotations

import unittest

import boto3

from wsfan import Publisher, PublishError

from .stack import shared_stack
from .ws import WebSocketClient


class PublishToUser(unittest.TestCase):
    def test_every_connection_of_the_user_gets_the_message_and_nobody_else(self) -> None:
        stack = shared_stack()
        phone, laptop, other = (WebSocketClient(f"{stack.ws_url}?token={stack.token(u)}")
                                for u in ("alice", "alice", "bob"))
        dynamodb = boto3.client("dynamodb", endpoint_url=stack.env["moto"], region_name="us-east-1",
                                aws_access_key_id="test", aws_secret_access_key="test")
        try:
            message_id = Publisher(stack.env["table"], dynamodb=dynamodb).publish_to_user(
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
        dynamodb = boto3.client("dynamodb", endpoint_url=stack.env["moto"], region_name="us-east-1",
                                aws_access_key_id="test", aws_secret_access_key="test")
        with self.assertRaisesRegex(ValueError, "user_id"):
            Publisher(stack.env["table"], dynamodb=dynamodb).publish_to_user("al ice", "hi")
        with self.assertRaisesRegex(ValueError, "limit"):
            Publisher(stack.env["table"], dynamodb=dynamodb).publish_to_user("alice", "x" * 70_000)
        with self.assertRaises(PublishError) as raised:
            Publisher("no-such-table", dynamodb=dynamodb).publish_to_user("alice", "lost?")
        self.assertEqual(raised.exception.events, [{"channel": "user:alice", "body": "lost?"}])


if __name__ == "__main__":
    unittest.main()
