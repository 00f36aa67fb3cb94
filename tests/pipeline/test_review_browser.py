"""`btmri review` in headless Chromium, driven over the DevTools protocol with the
keyboard alone: three cases reviewed, the page reloaded, the reviews found in the DOM
and in the SQLite file. The server is the real command (`btmri review --port 0`) on a
synthetic request log written by the server's own logger; no model is given, so the
page must say there is no Grad-CAM except where the log kept one."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.review.cases import load_cases
from pipeline.review.store import UNUSABLE
from tests.pipeline.test_review import MODEL_VERSION, write_request_log

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
# DevTools key events: (key, code, Windows virtual key code, text typed or None).
KEYS = {
    "1": ("1", "Digit1", 49, "1"),
    "4": ("4", "Digit4", 52, "4"),
    "u": ("u", "KeyU", 85, "u"),
    "j": ("j", "KeyJ", 74, "j"),
    "Enter": ("Enter", "Enter", 13, "\r"),
    "ArrowUp": ("ArrowUp", "ArrowUp", 38, None),
    "ArrowDown": ("ArrowDown", "ArrowDown", 40, None),
}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (.ci/run installs it with apt-get when it can): "
    "headless browser check skipped",
)


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
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self.process.poll() is None, "Chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            (page,) = [t for t in json.load(response) if t["type"] == "page"]
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
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
        key, code, vk, text = KEYS[name]
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


def _start_review(log_dir: Path, work: Path) -> tuple[subprocess.Popen, str]:
    """`btmri review` on a free port; (process, the page's URL from its output)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "review",
            "--request-log",
            str(log_dir),
            "--work-dir",
            str(work),
            "--reviewer",
            "tester",
            "--port",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    for line in process.stdout:
        if line.startswith("review page: "):
            return process, line.split()[2]
    raise AssertionError(
        f"btmri review did not start: {process.wait(timeout=30)} {process.stderr.read()[-2000:]}"
    )


def _labels(devtools: DevTools) -> list[str]:
    return devtools.evaluate("Array.from(document.querySelectorAll('article.case'), a => a.dataset.label)")


def _visible(devtools: DevTools) -> int:
    return devtools.evaluate("Number(document.querySelector('article.case:not([hidden])').dataset.case)")


def test_three_cases_reviewed_with_the_keyboard_survive_a_reload(tmp_path):
    log_dir = write_request_log(tmp_path / "log")
    work = tmp_path / "work"
    server, url = _start_review(log_dir, work)
    devtools = DevTools(tmp_path / "profile")
    try:
        devtools.call("Log.enable")
        devtools.open(url)
        assert (
            _visible(devtools) == 0
            and devtools.evaluate("document.querySelector('#progress').textContent") == "0"
        )
        # Keyboard only: a label key, then Enter saves and moves on; j skips a case.
        for keys, case, label in ((["1", "Enter"], 0, "glioma"), (["u", "Enter"], 1, UNUSABLE)):
            for key in keys:
                devtools.press(key)
            devtools.wait_for(f"document.querySelector('#case-{case}').dataset.label === '{label}'")
        assert _visible(devtools) == 2
        devtools.press("j")
        assert _visible(devtools) == 3
        devtools.press("4")
        devtools.press("Enter")
        devtools.wait_for("document.querySelector('#case-3').dataset.label === 'pituitary'")
        assert _visible(devtools) == 4
        devtools.press("ArrowUp")
        assert _visible(devtools) == 3
        devtools.press("ArrowDown")
        assert _visible(devtools) == 4

        records = devtools.evaluate(
            "Array.from(document.querySelectorAll('article.case'), a => a.dataset.record)"
        )
        devtools.call("Page.reload")
        devtools.wait_for(
            "document.readyState === 'complete' && !!document.querySelector('article:not([hidden])')"
        )
        assert _labels(devtools) == ["glioma", UNUSABLE, "", "pituitary", "", "", ""]
        assert _visible(devtools) == 2  # the first case nobody has reviewed
        state = devtools.evaluate("document.querySelector('#case-0 .review-state').textContent")
        assert state.startswith("reviewed: glioma by tester at ")
        assert devtools.evaluate("document.querySelector('#progress').textContent") == "3"

        # What each case shows: the image, the Grad-CAM the log kept, or why there is none.
        cases = devtools.evaluate(
            """Array.from(document.querySelectorAll('article.case'), a => ({
                image: !!a.querySelector('figure:not(.gradcam) img'),
                gradcam: a.querySelector('figure.gradcam').textContent.trim(),
                hasOverlay: !!a.querySelector('figure.gradcam[data-src]'),
                missing: (a.querySelector('.missing') || {}).textContent || ''}))"""
        )
        assert sum(c["hasOverlay"] for c in cases) == 1
        assert sum("the image was not logged" in c["missing"] for c in cases) == 1
        assert sum("no Grad-CAM: no model given" in c["gradcam"] for c in cases) == 5
        overlay_case = next(i for i, c in enumerate(cases) if c["hasOverlay"])
        for _ in range(abs(overlay_case - 2)):
            devtools.press("j" if overlay_case > 2 else "ArrowUp")
        assert _visible(devtools) == overlay_case
        devtools.wait_for(
            f"(() => {{ const i = document.querySelector('#case-{overlay_case} figure.gradcam img');"
            " return i && i.complete && i.naturalWidth > 0; })()"
        )
        # The hostile log values stayed text: nothing ran, no element was injected.
        assert devtools.evaluate("typeof window.pwned") == "undefined"
        assert devtools.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert devtools.problems() == []
        shot = devtools.call("Page.captureScreenshot", format="png")
        (tmp_path / "review.png").write_bytes(base64.b64decode(shot["data"]))  # to look at by hand
    finally:
        devtools.close()
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0, server.stderr.read()[-2000:]

    model = {c.record_id: c.model_name for c in load_cases(log_dir, 200, 50).cases}
    rows = sqlite3.connect(work / "review" / "reviews.sqlite").execute(
        "SELECT record_id, label, reviewer, model_name, model_version FROM reviews ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        (records[0], "glioma", "tester", model[records[0]], MODEL_VERSION),
        (records[1], UNUSABLE, "tester", model[records[1]], MODEL_VERSION),
        (records[3], "pituitary", "tester", model[records[3]], MODEL_VERSION),
    ]
