"""ProgressReporter against `wsfan dev`: real SQS (moto), the real progress-fanout binary, and
real WebSocket subscribers."""

from __future__ import annotations

import json
import os
import time
import unittest
from typing import Any, Dict, List
from unittest import mock

from wsfan import ProgressReporter, PublishError, WsfanError
from wsfan._ids import new_ulid

from .stack import Stack, shared_stack
from .ws import WebSocketClient

PHASE = {"processing_started": 0, "progress": 1, "processing_complete": 2}


def rank(frame: Dict[str, Any]) -> int:
    return PHASE[frame["type"]] * 1000 + int(frame.get("pagesProcessed", 0))


def sqs(stack: Stack) -> Any:
    return stack.client("sqs")


def subscriber(stack: Stack, user: str, doc_id: str) -> WebSocketClient:
    ws: WebSocketClient = stack.socket(user, {"action": "subscribe", "docId": doc_id}, "subscribed")
    return ws


def progress_frames(ws: WebSocketClient) -> List[Dict[str, Any]]:
    return [f for f in ws.frames if f.get("type") in PHASE or f.get("type") == "error" and "docId" in f]


class ProgressAgainstTheStack(unittest.TestCase):
    stack: Stack

    @classmethod
    def setUpClass(cls) -> None:
        cls.stack = shared_stack()

    def doc(self) -> str:
        return f"doc-{new_ulid().lower()}"

    def test_three_subscribers_see_every_event_once_in_order_and_end_complete(self) -> None:
        doc_id = self.doc()
        subscribers = [subscriber(self.stack, f"watcher{i}", doc_id) for i in range(3)]
        client = sqs(self.stack)
        batches: List[int] = []
        client.meta.events.register(
            "provide-client-params.sqs.SendMessageBatch", lambda params, **_: batches.append(len(params["Entries"]))
        )
        pages = 100
        with ProgressReporter(self.stack.env["queue"], doc_id, sqs=client) as report:
            report.started(total=pages)
            for page in range(1, pages + 1):
                report.progress(page)
            report.complete()
        events = pages + 2
        self.assertEqual(sum(batches), events, "every event sent once")
        self.assertTrue(all(n <= 10 for n in batches), batches)
        self.assertLessEqual(len(batches), events // 10 + 2, f"batched: {batches}")

        try:
            for ws in subscribers:
                ws.wait_for("processing_complete", lambda fs: any(f.get("type") == "processing_complete" for f in fs))
            time.sleep(0.5)  # anything late or duplicated would land now
        finally:
            for ws in subscribers:
                ws.close()
        out_of_order = []
        for ws in subscribers:
            frames = progress_frames(ws)
            self.assertTrue(all(f["docId"] == doc_id for f in frames))
            # At most one frame per event: no event twice.
            seen = [(f["type"], f.get("pagesProcessed")) for f in frames]
            self.assertEqual(len(seen), len(set(seen)), f"an event came twice: {seen}")
            self.assertLessEqual(len(frames), events)
            # The bar, as @wsfan/client and @wsfan/react draw it: a frame that is not ahead of
            # what is shown is dropped. On a standard queue (the template's default) two fanout
            # invocations may push one document's events out of order; counted below.
            bar: List[Dict[str, Any]] = []
            for frame in frames:
                if bar and rank(frame) <= rank(bar[-1]):
                    out_of_order.append(frame.get("pagesProcessed"))
                    continue
                bar.append(frame)
            last = bar[-1]
            self.assertEqual((last["type"], last.get("pagesProcessed"), last.get("totalPages")),
                             ("processing_complete", pages, pages), "the bar ends complete")
            self.assertGreater(len(bar), 1)
        print(f"\n{events} events, 3 subscribers: {sum(len(progress_frames(ws)) for ws in subscribers)} frames, "
              f"{len(out_of_order)} behind the bar (dropped by the clients), {len(batches)} SendMessageBatch calls")

    def test_a_lone_event_goes_out_after_linger_without_a_flush(self) -> None:
        doc_id = self.doc()
        ws = subscriber(self.stack, "lingerer", doc_id)
        try:
            report = ProgressReporter(self.stack.env["queue"], doc_id, sqs=sqs(self.stack), linger=0.1)
            report.started(total=7)
            report.progress(3)
            ws.wait_for("progress 3", lambda fs: any(f.get("pagesProcessed") == 3 for f in fs))
            report.close()
        finally:
            ws.close()

    def test_an_exception_in_the_block_ends_the_document_with_an_error(self) -> None:
        doc_id = self.doc()
        ws = subscriber(self.stack, "crashwatch", doc_id)
        try:
            with self.assertRaises(KeyError):
                with ProgressReporter(self.stack.env["queue"], doc_id, sqs=sqs(self.stack)) as report:
                    report.started(total=4)
                    report.progress(2)
                    raise KeyError("page 3")
            ws.wait_for("the error", lambda fs: any(f.get("type") == "error" for f in fs))
        finally:
            ws.close()
        error = [f for f in ws.frames if f.get("type") == "error"][-1]
        self.assertEqual(error["errorCode"], "processing_failed")
        self.assertFalse(error["recoverable"])
        self.assertEqual(error.get("pagesProcessed"), 2, "the bar keeps its place")


class ProgressOnQueues(unittest.TestCase):
    """The messages themselves, read back from queues of moto's."""

    stack: Stack
    client: Any

    @classmethod
    def setUpClass(cls) -> None:
        cls.stack = shared_stack()
        cls.client = sqs(cls.stack)

    def receive_all(self, url: str, count: int) -> List[Dict[str, Any]]:
        got: List[Dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while len(got) < count and time.monotonic() < deadline:
            out = self.client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"],
                                              WaitTimeSeconds=1)
            for m in out.get("Messages", []):
                got.append(m)
                self.client.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return got

    def test_fifo_queue_one_group_per_document_in_order_each_with_its_own_deduplication_id(self) -> None:
        url = self.client.create_queue(QueueName=f"progress-{new_ulid().lower()}.fifo",
                                       Attributes={"FifoQueue": "true"})["QueueUrl"]
        with ProgressReporter(url, "report-9", sqs=self.client) as report:
            report.started(total=25)
            for page in range(1, 26):
                report.progress(page)
            report.error("ocr_slow", "OCR is slow today", recoverable=True)
            report.complete()
        messages = self.receive_all(url, 28)
        bodies = [json.loads(m["Body"]) for m in messages]
        self.assertEqual([b["type"] for b in bodies],
                         ["processing_started"] + ["progress"] * 25 + ["error", "processing_complete"])
        self.assertEqual([b.get("pagesProcessed") for b in bodies[1:26]], list(range(1, 26)))
        self.assertEqual(bodies[26], {"type": "error", "docId": "report-9", "errorCode": "ocr_slow",
                                      "message": "OCR is slow today", "recoverable": True,
                                      "pagesProcessed": 25, "totalPages": 25})
        self.assertEqual(bodies[27], {"type": "processing_complete", "docId": "report-9",
                                      "pagesProcessed": 25, "totalPages": 25})
        self.assertEqual({m["Attributes"]["MessageGroupId"] for m in messages}, {"report-9"})
        self.assertEqual(len({m["Attributes"]["MessageDeduplicationId"] for m in messages}), 28)

    def test_bad_input_is_refused_before_anything_is_sent(self) -> None:
        url = self.client.create_queue(QueueName=f"progress-{new_ulid().lower()}")["QueueUrl"]
        with self.assertRaises(ValueError):
            ProgressReporter(url, "no spaces allowed", sqs=self.client)
        report = ProgressReporter(url, "d1", sqs=self.client, linger=0)
        with self.assertRaisesRegex(ValueError, "needs a total"):
            report.progress(1)
        report.started(total=3)
        with self.assertRaisesRegex(ValueError, "more than total"):
            report.progress(4)
        with self.assertRaisesRegex(ValueError, "4096"):
            report.error("big", "x" * 5000)
        report.complete()
        with self.assertRaisesRegex(WsfanError, "already ended"):
            report.progress(1)
        self.assertEqual([json.loads(m["Body"])["type"] for m in self.receive_all(url, 2)],
                         ["processing_started", "processing_complete"])

    def test_a_queue_that_does_not_exist_raises_with_the_events_that_were_not_sent(self) -> None:
        url = f"{self.stack.env['moto']}/123456789012/no-such-queue"
        report = ProgressReporter(url, "d2", sqs=self.client)
        report.started(total=2)
        with self.assertRaises(PublishError) as raised:
            report.complete()
        self.assertEqual([e["type"] for e in raised.exception.events], ["processing_started", "processing_complete"])


class ReadmeExample(unittest.TestCase):
    def test_the_readme_first_example_runs_and_its_subscriber_sees_it_complete(self) -> None:
        stack = shared_stack()
        readme = (os.path.dirname(__file__) + "/../README.md")
        with open(readme) as f:
            text = f.read()
        code = text.split("```python\n", 1)[1].split("```", 1)[0]
        doc_id = "report-1"  # the example's
        ws = subscriber(stack, "readme", doc_id)
        env = {**stack.aws_env(), "PROGRESS_QUEUE_URL": stack.env["queue"]}
        try:
            with mock.patch.dict(os.environ, env):
                exec(compile(code, "README.md", "exec"), {})
            ws.wait_for("processing_complete", lambda fs: any(f.get("type") == "processing_complete" for f in fs))
        finally:
            ws.close()


if __name__ == "__main__":
    unittest.main()
