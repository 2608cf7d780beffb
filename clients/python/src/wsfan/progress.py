"""Document progress to the progress queue, in the contract `progress-fanout` reads.

Each event is one SQS message whose body is the event's JSON (shared/src/domain/progress.rs):
`{"type": "processing_started"|"progress"|"processing_complete"|"error", "docId", "pagesProcessed",
"totalPages", "errorCode", "message", "recoverable"}`.

Events are sent in batches (SendMessageBatch, at most ten messages) and never held longer than
`linger` seconds, so a bar still moves while a slow page is processed. Batches go out one at a
time in the order the events were reported. On a FIFO queue (a URL ending in `.fifo`, the
template's `ProgressQueueFifo=true`) the document is the message group, so its events arrive in
order; on a standard queue they may arrive out of order, and `progress-fanout` drops any event
that is behind the document's stored snapshot, so a bar never moves backwards either way.
"""

from __future__ import annotations

import json
import threading
import time
from types import TracebackType
from typing import Any, Dict, List, Optional, Type

from ._ids import new_ulid, validate_id
from .errors import PublishError, WsfanError

# SQS: at most ten messages per SendMessageBatch. Ten progress events are far below its 256 KiB.
SQS_BATCH = 10
# progress.rs: MAX_MESSAGE_BYTES.
MAX_MESSAGE_BYTES = 4096
_MAX_COUNT = 2**32 - 1  # pagesProcessed and totalPages are u32


def _sqs_client() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("sqs", config=Config(retries={"mode": "standard", "max_attempts": 5}))


def _count(value: int, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= _MAX_COUNT:
        raise ValueError(f"{what} must be a whole number from {minimum} to {_MAX_COUNT}, not {value!r}")
    return value


class ProgressReporter:
    """Reports one document's progress to the progress queue (the stack's `ProgressQueueUrl`).

    >>> with ProgressReporter(queue_url, "report-1") as report:
    ...     report.started(total=3)
    ...     for page in range(1, 4):
    ...         report.progress(page)  # the total from started()
    ...     report.complete()

    Thread-safe. `flush()` sends what is buffered now; `close()` (or leaving the `with` block)
    flushes and stops the timer. Leaving the block with an exception before `complete()` or
    `error()` reports an unrecoverable `processing_failed` error, so the subscribers' bars do not
    wait forever. A batch that fails in the background is raised by the next call.
    """

    def __init__(
        self,
        queue_url: str,
        doc_id: str,
        *,
        sqs: Any = None,
        linger: float = 0.2,
        max_attempts: int = 5,
    ) -> None:
        if not queue_url:
            raise ValueError("queue_url is empty")
        if linger < 0:
            raise ValueError("linger must be 0 or more seconds")
        self.queue_url = queue_url
        self.doc_id = validate_id(doc_id, "doc_id")
        self._sqs = sqs if sqs is not None else _sqs_client()
        self._fifo = queue_url.endswith(".fifo")
        self._linger = linger
        self._max_attempts = max(1, max_attempts)
        self._lock = threading.Lock()  # the buffer, the timer and the state below
        self._send_lock = threading.Lock()  # one batch in flight, so batches keep their order
        self._buffer: List[Dict[str, Any]] = []
        self._timer: Optional[threading.Timer] = None
        self._failure: Optional[PublishError] = None
        self._total: Optional[int] = None
        self._done = 0
        self._finished = False
        self._closed = False

    # ---------------------------------------------------------------- the four events

    def started(self, total: Optional[int] = None) -> None:
        """Processing began; `total` pages if known (later calls may leave the total out)."""
        event: Dict[str, Any] = {"type": "processing_started", "docId": self.doc_id}
        if total is not None:
            event["totalPages"] = _count(total, "total", 1)
        self._report(event, total=total)

    def progress(self, done: int, total: Optional[int] = None) -> None:
        """`done` of `total` pages are processed; `total` defaults to the last one given."""
        known = total if total is not None else self._total
        if known is None:
            raise ValueError("progress() needs a total: pass it here or to started()")
        known = _count(known, "total", 1)
        if _count(done, "done", 0) > known:
            raise ValueError(f"done ({done}) is more than total ({known})")
        event = {"type": "progress", "docId": self.doc_id, "pagesProcessed": done, "totalPages": known}
        self._report(event, total=known, done=done)

    def complete(self) -> None:
        """Processing finished: every page. Ends the document; nothing can be reported after it."""
        event: Dict[str, Any] = {"type": "processing_complete", "docId": self.doc_id}
        if self._total is not None:
            event["pagesProcessed"] = self._total
            event["totalPages"] = self._total
        self._report(event, terminal=True)

    def error(self, code: str, message: str, recoverable: bool = False) -> None:
        """Processing failed (`recoverable`: it carries on, and the bar stays where it is).

        An unrecoverable error ends the document, as `complete()` does.
        """
        if not code:
            raise ValueError("an error needs a code")
        if not message:
            raise ValueError("an error needs a message")
        if len(message.encode()) > MAX_MESSAGE_BYTES:
            raise ValueError(f"message is longer than {MAX_MESSAGE_BYTES} bytes")
        event: Dict[str, Any] = {
            "type": "error",
            "docId": self.doc_id,
            "errorCode": code,
            "message": message,
            "recoverable": bool(recoverable),
        }
        if self._done:
            # Where it failed: the subscribers' bar keeps its place.
            event["pagesProcessed"] = self._done
            if self._total is not None:
                event["totalPages"] = self._total
        self._report(event, terminal=not recoverable)

    # ---------------------------------------------------------------- sending

    def flush(self) -> None:
        """Sends every buffered event now, in order; raises PublishError if SQS refused some."""
        with self._send_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            for start in range(0, len(batch), SQS_BATCH):
                self._send(batch[start : start + SQS_BATCH])
        self._raise_failure()

    def close(self) -> None:
        """Flushes and stops; further reports raise."""
        with self._lock:
            self._closed = True
        self.flush()

    def __enter__(self) -> "ProgressReporter":
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        if kind is not None and not self._finished and self._failure is None:
            self.error("processing_failed", f"the processor stopped ({kind.__name__})", recoverable=False)
        self.close()

    def _report(
        self,
        event: Dict[str, Any],
        *,
        total: Optional[int] = None,
        done: Optional[int] = None,
        terminal: bool = False,
    ) -> None:
        self._raise_failure()
        with self._lock:
            if self._closed:
                raise WsfanError(f"the reporter of {self.doc_id} is closed")
            if self._finished:
                raise WsfanError(f"{self.doc_id} already ended (complete, or an unrecoverable error)")
            if total is not None:
                self._total = total
            if done is not None:
                self._done = done
            self._finished = terminal
            # A FIFO queue deduplicates on this id for five minutes: a retried entry is kept once.
            self._buffer.append({"event": event, "dedupe": new_ulid()})
            now = terminal or len(self._buffer) >= SQS_BATCH or self._linger == 0
            if not now and self._timer is None:
                self._timer = threading.Timer(self._linger, self._flush_in_background)
                self._timer.daemon = True
                self._timer.start()
        if now:
            self.flush()

    def _flush_in_background(self) -> None:
        try:
            self.flush()
        except PublishError:
            pass  # kept in self._failure; the next call raises it

    def _raise_failure(self) -> None:
        with self._lock:
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _send(self, batch: List[Dict[str, Any]]) -> None:
        """One SendMessageBatch; entries SQS failed on its side are sent again with backoff."""
        pending = {str(i): item for i, item in enumerate(batch)}
        refused: List[str] = []
        for attempt in range(self._max_attempts):
            entries = []
            for entry_id, item in pending.items():
                entry: Dict[str, Any] = {"Id": entry_id, "MessageBody": json.dumps(item["event"], separators=(",", ":"))}
                if self._fifo:
                    entry["MessageGroupId"] = self.doc_id
                    entry["MessageDeduplicationId"] = item["dedupe"]
                entries.append(entry)
            try:
                out = self._sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except Exception as e:  # the client's own retries are spent
                self._fail(f"SendMessageBatch failed: {e}", list(pending.values()))
                return
            retry: Dict[str, Dict[str, Any]] = {}
            for failed in out.get("Failed", []):
                if failed.get("SenderFault"):
                    refused.append(f"{failed.get('Code')}: {failed.get('Message', '')}")
                    self._fail(f"SQS refused an event: {'; '.join(refused)}", [pending[failed["Id"]]])
                else:
                    retry[failed["Id"]] = pending[failed["Id"]]
            if not retry:
                return
            pending = retry
            time.sleep(min(2.0, 0.05 * 2**attempt))
        self._fail(f"SQS kept failing {len(pending)} events after {self._max_attempts} attempts", list(pending.values()))

    def _fail(self, message: str, items: List[Dict[str, Any]]) -> None:
        events = [item["event"] for item in items]
        with self._lock:
            if self._failure is None:
                self._failure = PublishError(message, events)
            else:
                self._failure.events.extend(events)
