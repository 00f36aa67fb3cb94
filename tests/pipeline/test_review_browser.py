"""`btmri review` in headless Chromium, driven over the DevTools protocol with the
keyboard alone: three cases reviewed, the page reloaded, the reviews found in the DOM
and in the SQLite file. The server is the real command (`btmri review --port 0`) on a
synthetic request log written by the server's own logger; no model is given, so the
page must say there is no Grad-CAM except where the log kept one."""

from __future__ import annotations

import base64
import sqlite3

from pipeline.review.cases import load_cases
from pipeline.review.store import UNUSABLE
from tests.browser import (
    DevTools,
    case_labels,
    case_records,
    requires_chromium,
    start_review,
    stop_review,
    visible_case,
)
from tests.pipeline.test_review import MODEL_VERSION, write_request_log

pytestmark = requires_chromium


def test_three_cases_reviewed_with_the_keyboard_survive_a_reload(tmp_path):
    log_dir = write_request_log(tmp_path / "log")
    work = tmp_path / "work"
    server, url = start_review(log_dir, "--work-dir", str(work), "--reviewer", "tester")
    devtools = DevTools(tmp_path / "profile")
    try:
        devtools.call("Log.enable")
        devtools.open(url)
        assert (
            visible_case(devtools) == 0
            and devtools.evaluate("document.querySelector('#progress').textContent") == "0"
        )
        # Keyboard only: a label key, then Enter saves and moves on; j skips a case.
        for keys, case, label in ((["1", "Enter"], 0, "glioma"), (["u", "Enter"], 1, UNUSABLE)):
            for key in keys:
                devtools.press(key)
            devtools.wait_for(f"document.querySelector('#case-{case}').dataset.label === '{label}'")
        assert visible_case(devtools) == 2
        devtools.press("j")
        assert visible_case(devtools) == 3
        devtools.press("4")
        devtools.press("Enter")
        devtools.wait_for("document.querySelector('#case-3').dataset.label === 'pituitary'")
        assert visible_case(devtools) == 4
        devtools.press("ArrowUp")
        assert visible_case(devtools) == 3
        devtools.press("ArrowDown")
        assert visible_case(devtools) == 4

        records = case_records(devtools)
        devtools.call("Page.reload")
        devtools.wait_for(
            "document.readyState === 'complete' && !!document.querySelector('article:not([hidden])')"
        )
        assert case_labels(devtools) == ["glioma", UNUSABLE, "", "pituitary", "", "", ""]
        assert visible_case(devtools) == 2  # the first case nobody has reviewed
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
        assert visible_case(devtools) == overlay_case
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
        stop_review(server)

    model = {c.record_id: c.model_name for c in load_cases(log_dir, 200, 50).cases}
    rows = sqlite3.connect(work / "review" / "reviews.sqlite").execute(
        "SELECT record_id, label, reviewer, model_name, model_version FROM reviews ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        (records[0], "glioma", "tester", model[records[0]], MODEL_VERSION),
        (records[1], UNUSABLE, "tester", model[records[1]], MODEL_VERSION),
        (records[3], "pituitary", "tester", model[records[3]], MODEL_VERSION),
    ]
