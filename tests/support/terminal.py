"""The interactive pcloudsh on a pseudo-terminal, driven like a person at a keyboard."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


class Terminal:
    """pcloudsh on the slave side of a pty; ``expect`` reads until a text shows up."""

    def __init__(self, state: Path, broker_url: str, live: bool = False) -> None:
        env = dict(os.environ, PCLOUD_STATE_DIR=str(state), PCLOUD_BROKER_URL=broker_url,
                   TERM="dumb", INPUTRC="/dev/null")
        argv = [str(BIN / "pcloudsh")] + ([] if live else ["--no-live-events"])
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execve(argv[0], argv, env)
        self.buffer = ""

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{text!r} not seen within {timeout} s; got "
                                     f"{self.buffer[-2000:]!r}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    self.buffer += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:
                    break
        if text not in self.buffer:
            raise AssertionError(f"{text!r} not seen; got {self.buffer[-2000:]!r}")
        before, _, self.buffer = self.buffer.partition(text)
        return before

    def interrupt(self, timeout: float = 10.0) -> None:
        """Ctrl-C once the shell is back waiting for keys, as a person's pause would ensure.

        Python's readline only notices a signal that interrupts its wait for input: one that
        lands while it is still echoing the previous keys is seen at the next key.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                wchan = Path(f"/proc/{self.pid}/wchan").read_text()
            except OSError:
                break
            if "poll" in wchan or "select" in wchan:
                break
            time.sleep(0.01)
        self.send("\x03")

    def wait_exit(self, timeout: float = 20.0) -> int:
        """Drain the terminal until the shell exits; its exit status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = 0
                return os.waitstatus_to_exitcode(status)
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    self.buffer += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:
                    pass
        raise AssertionError(f"pcloudsh did not exit within {timeout} s")

    def close(self) -> int:
        if not self.pid:
            os.close(self.fd)
            return 0
        try:
            _, status = os.waitpid(self.pid, os.WNOHANG)
            if _ == 0:
                os.kill(self.pid, signal.SIGKILL)
                _, status = os.waitpid(self.pid, 0)
        finally:
            os.close(self.fd)
        return status
