"""Messages to channels from a backend, with nothing but boto3."""

from __future__ import annotations

import time
from typing import Any, Optional

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


class Publisher:
    """Posts to wsfan channels from a backend (`table_name`: the stack's `TableName` output).

    `publish_to_user` reaches one person on every device through their `user:<sub>` channel,
    which every connection of theirs joins at `$connect`. It writes one item to the table, as
    README "Publishing from a backend" describes; the stream fanout pushes it live. Such an item
    is outside the channel's numbered sequence: it is not in `history` or recovery.
    """

    def __init__(
        self,
        table_name: str,
        *,
        dynamodb: Any = None,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        if not table_name:
            raise ValueError("table_name is empty")
        self.table_name = table_name
        self._dynamodb = dynamodb if dynamodb is not None else _dynamodb_client()
        self._retention = retention_seconds

    def publish_to_user(
        self,
        user_id: str,
        body: str,
        *,
        sender: str = "system",
        client_msg_id: Optional[str] = None,
    ) -> str:
        """Pushes `body` to every connection of `user_id` (a token's `sub`); returns the messageId."""
        validate_id(user_id, "user_id")
        if not sender:
            raise ValueError("sender is empty")
        if len(body.encode()) > MAX_BODY_BYTES:
            raise ValueError(f"body is {len(body.encode())} bytes; the limit is {MAX_BODY_BYTES}")
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
        try:
            self._dynamodb.put_item(TableName=self.table_name, Item=item)
        except Exception as e:
            raise PublishError(f"PutItem failed: {e}", [{"channel": f"user:{user_id}", "body": body}]) from e
        return message_id
