"""Headless Chromium driven over the DevTools protocol (websocket-client), and `btmri
review` started as a reader starts it: what the tests that use the review page with the
keyboard alone share (tests/pipeline/test_review_browser.py, test_feedback_loop.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
NO_CHROMIUM = (
    "Debian's chromium is not installed (.ci/run installs it with apt-get when it can): "
    "headless browser check skipped"
)
requires_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)

# DevTools key events of the keys that type no character: (key, code, Windows virtual key
# code, text typed or None). Letters and digits are made by key_event.
SPECIAL_KEYS = {
    "Enter": ("Enter", "Enter", 13, "\r"),
    "ArrowUp": ("ArrowUp", "ArrowUp", 38, None),
    "ArrowDown": ("ArrowDown", "ArrowDown", 40, None),
}


def key_event(name: str) -> tuple[str, str, int, str | None]:
    """(key, code, virtual key code, text) of a named key, a digit or a lower-case letter."""
    if name in SPECIAL_KEYS:
        return SPECIAL_KEYS[name]
    if len(name) == 1 and name.isdigit():
        return name, f"Digit{name}", ord(name), name
    if len(name) == 1 and "a" <= name <= "z":
        return name, f"Key{name.upper()}", ord(name.upper()), name
    raise ValueError(f"no key event for {name!r}")


class DevTools:
    """A page target of a headless Chromium, over its DevTools WebSocket."""

    def __init__(self, profile: Path):
        import websocket

        self.process = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",  # Chromium picks a free port and writes it down
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (port_file.is_file() and port_file.read_text().strip()):
                assert time.monotonic() < deadline and self.process.poll() is None, "Chromium did not start"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
                (page,) = [t for t in json.load(response) if t["type"] == "page"]
            self.ws = websocket.create_connection(
                page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
            )
        except BaseException:
            self.process.kill()  # no browser left behind by a failed start
            self.process.wait(timeout=30)
            raise
        self.next_id = 0
        self.events: list[dict] = []
        self.call("Runtime.enable")
        self.call("Page.enable")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)
        return value

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for(
            "document.readyState === 'complete' && !!document.querySelector('article:not([hidden])')"
        )

    def press(self, name: str) -> None:
        key, code, vk, text = key_event(name)
        down = {"type": "keyDown" if text else "rawKeyDown", "key": key, "code": code}
        down["windowsVirtualKeyCode"] = down["nativeVirtualKeyCode"] = vk
        if text:
            down["text"] = down["unmodifiedText"] = text
        self.call("Input.dispatchKeyEvent", **down)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=code, windowsVirtualKeyCode=vk)

    def problems(self) -> list[str]:
        """Console errors and uncaught exceptions (a CSP violation is a console error too)."""
        out = []
        for event in self.events:
            if event.get("method") == "Runtime.exceptionThrown":
                out.append(event["params"]["exceptionDetails"].get("text", "exception"))
            elif event.get("method") == "Runtime.consoleAPICalled" and event["params"]["type"] == "error":
                out.append(str(event["params"]["args"]))
            elif event.get("method") == "Log.entryAdded" and event["params"]["entry"]["level"] == "error":
                out.append(f"{event['params']['entry']['text']} {event['params']['entry'].get('url', '')}")
        return out

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            self.process.wait(timeout=30)


# ---- the review page --------------------------------------------------------------------


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_review(log_dir: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`btmri review --request-log log_dir --port 0 ARGS...` as a child process;
    (the process, the page's URL from its output). stop_review ends it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "review", "--request-log", str(log_dir), "--port", "0", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # faulthandler: a server that does not stop is made to print every thread's stack.
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"},
        # Ctrl-C as in a terminal: a test run started in the background (`cmd &` in a
        # script) hands its children SIGINT ignored, and Python then never raises
        # KeyboardInterrupt, so the page would never stop.
        preexec_fn=_default_sigint,
    )
    for line in process.stdout:
        if line.startswith("review page: "):
            return process, line.split()[2]
    raise AssertionError(
        f"btmri review did not start: {process.wait(timeout=30)} {process.stderr.read()[-2000:]}"
    )


def stop_review(process: subprocess.Popen, timeout: float = 60) -> None:
    """Ctrl-C, as a reader stops the page: it must exit 0. communicate(), not wait():
    the server's request log fills the stderr pipe, and a child blocked writing to a
    full pipe never sees the signal. Past the bound, SIGABRT makes the server print where
    each of its threads waits, and that is the failure's message."""
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        _, stderr = process.communicate(timeout=30)
        raise AssertionError(
            f"btmri review did not stop within {timeout:.0f} s of Ctrl-C:\n{stderr[-6000:]}"
        ) from None
    assert process.returncode == 0, stderr[-2000:]


def visible_case(devtools: DevTools) -> int:
    """The index of the case the page shows."""
    return devtools.evaluate("Number(document.querySelector('article.case:not([hidden])').dataset.case)")


def case_labels(devtools: DevTools) -> list[str]:
    """Each listed case's current review label as the page shows it ("" if none)."""
    return devtools.evaluate("Array.from(document.querySelectorAll('article.case'), a => a.dataset.label)")


def case_records(devtools: DevTools) -> list[str]:
    """Each listed case's record id (`<log file>#<record>/<row>`), in the page's order."""
    return devtools.evaluate("Array.from(document.querySelectorAll('article.case'), a => a.dataset.record)")
