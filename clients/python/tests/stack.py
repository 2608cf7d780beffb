"""`wsfan dev` for the Python tests: started on free ports in its own process group (moto and the
real Lambda binaries with it), stopped with everything it started. As tests/support/stack.mjs."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[3]
# WSFAN_BIN runs another build (e.g. main's, to see a test fail there).
WSFAN = os.environ.get("WSFAN_BIN") or str(REPO / "target" / "debug" / "wsfan")
READY = re.compile(r"^wsfan dev ready: (http://\S+?)/? (ws://\S+)\s*$", re.M)
ENV = re.compile(r"^wsfan dev env: (.*)$", re.M)
READY_TIMEOUT = 120.0

# moto takes any credentials; boto3 wants some, and a Region.
LOCAL_AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    base_url: str
    ws_url: str
    env: Dict[str, str]
    log_path: Path
    log_file: Any = None
    _stopped: bool = field(default=False)

    def token(self, sub: str) -> str:
        with urllib.request.urlopen(f"{self.base_url}/dev/token?sub={sub}") as res:
            token: str = json.load(res)["token"]
            return token

    def client(self, service: str) -> Any:
        """A boto3 client of this stack's moto."""
        import boto3

        return boto3.client(service, endpoint_url=self.env["moto"], region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    def socket(self, user: str, frame: Dict[str, Any], answer: str) -> Any:
        """A WebSocket of `user` that sent `frame` and got its `answer` frame."""
        from .ws import WebSocketClient

        ws = WebSocketClient(f"{self.ws_url}?token={self.token(user)}")
        ws.send_json(frame)
        ws.wait_for(answer, lambda fs: any(f.get("type") == answer for f in fs))
        return ws

    def aws_env(self) -> Dict[str, str]:
        """What a producer needs to reach this stack's moto: boto3 honours AWS_ENDPOINT_URL."""
        return {**LOCAL_AWS, "AWS_ENDPOINT_URL": self.env["moto"]}

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.log_file is not None:
            self.log_file.close()
        if self.process.stdout is not None:
            self.process.stdout.close()
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # anything of the group still left
        except ProcessLookupError:
            pass


def start_stack(args: Optional[List[str]] = None) -> Stack:
    if not Path(WSFAN).exists():
        raise RuntimeError(f"{WSFAN} is missing: run cargo build --workspace --bins first")
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"wsfan-python-test-{os.getpid()}-{time.time_ns()}.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [WSFAN, "dev", "--port", "0", "--moto-port", "0", "--repo", str(REPO), *(args or [])],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
        env={**os.environ, "WSFAN_LOG_FORMAT": "text"},
    )
    assert process.stdout is not None
    out = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
        text = out.decode(errors="replace")
        urls, env = READY.search(text), ENV.search(text)
        if urls and env:
            pairs = dict(w.split("=", 1) for w in env.group(1).split())
            return Stack(process, urls.group(1), urls.group(2), pairs, log_path, log)
        if process.poll() is not None:
            break
    stack = Stack(process, "", "", {}, log_path, log)
    stack.stop()
    raise RuntimeError(f"wsfan dev was not ready:\nstdout:\n{out.decode(errors='replace')}\nlog:\n{stack.log_tail()}")


_shared: Optional[Stack] = None


def shared_stack() -> Stack:
    """One stack for the whole test run (starting one takes seconds); stopped at exit."""
    global _shared
    if _shared is None:
        import atexit

        _shared = start_stack()
        atexit.register(_shared.stop)
    return _shared
