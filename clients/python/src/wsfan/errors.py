"""What the producers raise."""

from __future__ import annotations

from typing import Any, Dict, List


class WsfanError(Exception):
    """Base of everything this package raises on purpose."""


class PublishError(WsfanError):
    """SQS or DynamoDB refused, or kept failing, after the retries.

    `events` are the message bodies that were not accepted, so nothing is lost silently: the
    caller can log them or send them again.
    """

    def __init__(self, message: str, events: List[Dict[str, Any]]):
        super().__init__(message)
        self.events = events
