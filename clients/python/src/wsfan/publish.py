"""Messages to channels from a backend, with nothing but boto3."""

from __future__ import annotations

import json
import re
import time
from typing import Any, Dict, Optional

from ._ids import new_ulid, validate_id
from .errors import PublishError

# protocol.rs: MAX_BODY_BYTES, the largest body a client may send; a backend gets the same.
MAX_BODY_BYTES = 64 * 1024
# config.rs: Retention's default message_secs (MESSAGE_TTL_SECONDS), 30 days.
DEFAULT_RETENTION_SECONDS = 30 * 24 * 3600


def _dynamodb_client() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 5}))


def _sqs_client() -> Any:
    from .progress import _sqs_client as client

    return client()


class Publisher:
    """Posts to wsfan channels from a backend.

    With `queue_url` (the stack's `PublishQueueUrl`; `sqs:SendMessage` on `PublishQueueArn`),
    `publish_message` sends to the publish queue, whose function numbers each message into its
    channel's sequence: it is pushed to the members, and in `history` and recovery like a
    client's message. The channel is the FIFO message group, so a channel's messages are
    numbered in the order they were sent.

    `publish_to_user` reaches one person on every device through their `user:<sub>` channel,
    which every connection of theirs joins at `$connect`: through the queue (numbered) when there
    is a `queue_url`, otherwise by writing one item to the table (`table_name`, the stack's
    `TableName`; `dynamodb:PutItem`), as README "Publishing from a backend" describes: pushed
    live, but outside the sequence, so not in `history` or recovery.
    """

    def __init__(
        self,
        *,
        queue_url: Optional[str] = None,
        table_name: Optional[str] = None,
        sqs: Any = None,
        dynamodb: Any = None,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        if not queue_url and not table_name:
            raise ValueError("give queue_url (numbered messages) or table_name (live-only items to users)")
        self.queue_url = queue_url
        self.table_name = table_name
        self._sqs = sqs
        self._dynamodb = dynamodb
        self._retention = retention_seconds

    def publish_message(
        self,
        channel: str,
        body: str,
        *,
        sender: str = "system",
        client_msg_id: Optional[str] = None,
    ) -> str:
        """Queues `body` for `channel` (e.g. `workspace:42`, `user:alice`); returns the SQS message id.

        `client_msg_id` makes a retry safe: the same sender and id again is stored once (and
        queued once within SQS's five-minute deduplication window).
        """
        if not self.queue_url:
            raise ValueError("publish_message needs queue_url (the stack's PublishQueueUrl)")
        _validate_channel(channel)
        validate_id(sender, "sender")
        _validate_body(body)
        if client_msg_id is not None:
            _validate_client_msg_id(client_msg_id)
        request: Dict[str, Any] = {"channel": channel, "body": body, "senderId": sender}
        if client_msg_id is not None:
            request["clientMsgId"] = client_msg_id
        if self._sqs is None:
            self._sqs = _sqs_client()
        try:
            out = self._sqs.send_message(
                QueueUrl=self.queue_url,
                MessageBody=json.dumps(request, separators=(",", ":")),
                MessageGroupId=channel,
                MessageDeduplicationId=client_msg_id or new_ulid(),
            )
        except Exception as e:
            raise PublishError(f"SendMessage failed: {e}", [request]) from e
        message_id: str = out["MessageId"]
        return message_id

    def publish_to_user(
        self,
        user_id: str,
        body: str,
        *,
        sender: str = "system",
        client_msg_id: Optional[str] = None,
    ) -> str:
        """Pushes `body` to every connection of `user_id` (a token's `sub`).

        Returns the SQS message id (through the queue) or the message's messageId (direct item).
        """
        validate_id(user_id, "user_id")
        if self.queue_url:
            return self.publish_message(f"user:{user_id}", body, sender=sender, client_msg_id=client_msg_id)
        if not sender:
            raise ValueError("sender is empty")
        _validate_body(body)
        message_id = new_ulid()
        now_ms = int(time.time() * 1000)
        item = {
            "pk": {"S": f"CHAN#user:{user_id}"},
            "sk": {"S": f"MSG#{message_id}"},
            "senderId": {"S": sender},
            "body": {"S": body},
            "sentAt": {"N": str(now_ms)},
            "expiresAt": {"N": str(now_ms // 1000 + self._retention)},
        }
        if client_msg_id:
            item["clientMsgId"] = {"S": client_msg_id}
        if self._dynamodb is None:
            self._dynamodb = _dynamodb_client()
        try:
            self._dynamodb.put_item(TableName=self.table_name, Item=item)
        except Exception as e:
            raise PublishError(f"PutItem failed: {e}", [{"channel": f"user:{user_id}", "body": body}]) from e
        return message_id


# channel.rs: `<kind>:<id>`; protocol.rs: clientMsgId.
_CHANNEL = re.compile(r"(workspace|session|booking|doc|user):[A-Za-z0-9_.@-]{1,128}")
_CLIENT_MSG_ID = re.compile(r"[!-\"$-~]{1,128}")


def _validate_channel(channel: str) -> None:
    if not isinstance(channel, str) or not _CHANNEL.fullmatch(channel):
        raise ValueError(f"channel must be <workspace|session|booking|doc|user>:<id>, not {channel!r}")


def _validate_body(body: str) -> None:
    if not body:
        raise ValueError("body is empty")
    size = len(body.encode())
    if size > MAX_BODY_BYTES:
        raise ValueError(f"body is {size} bytes; the limit is {MAX_BODY_BYTES}")


def _validate_client_msg_id(value: str) -> None:
    if not _CLIENT_MSG_ID.fullmatch(value):
        raise ValueError("client_msg_id must be 1-128 printable ASCII characters without '#'")
