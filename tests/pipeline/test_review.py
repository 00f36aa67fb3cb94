"""`btmri review` without a browser or a model (pipeline/review/): the store
(transactions, supersede, history), the cases read from a request log the server's own
logger wrote, the HTTP server (local only, escaping, token), the overlays and the export.

`write_request_log` is also the browser test's log (test_review_browser.py)."""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from btmri import spec
from btmri.documents import ServerOptions
from data_prep.synth import render_phantom
from pipeline.cli import main as btmri
from pipeline.review.cases import CaseError, load_cases
from pipeline.review.export import CSV_COLUMNS, EXPORT_CSV, ExportError, export_reviews
from pipeline.review.gradcam import GradcamUnavailable, ModelSource, Overlays
from pipeline.review.server import (
    TOKEN_HEADER,
    ReviewApp,
    ReviewServer,
    host_name,
    is_local_host,
    is_loopback_address,
)
from pipeline.review.store import LABELS, UNUSABLE, Review, StoreError, open_store, utc_now
from serving.request_log import RequestLog

MODEL_VERSION = 3
# Log values a hostile client or a compromised server could plant: the page must show
# them as text. Each would run script or inject markup if it reached the page raw.
HOSTILE_MODEL = '<script>window.pwned = "model"</script>'
HOSTILE_REASON = '"><img src=x onerror="window.pwned = \'reason\'">'
HOSTILE_SOURCE = "</code><img src=x onerror=\"window.pwned='source'\">.png"
HOSTILE_FOLDER = "log <b>&'\"x</b>"


def phantom_png(class_name: str, seed: int, side: int = 64) -> bytes:
    """A tiny synthetic slice of `class_name` (data_prep/synth.py), PNG-encoded."""
    image, _ = render_phantom(class_name, np.random.default_rng(seed))
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".png", small)[1].tobytes()


def _outputs(top: list[int], reasons: list[str], heatmap: bool = False) -> dict[str, np.ndarray]:
    """A model's answer to len(top) images: class `top[i]` at 0.7, abstaining with `reasons[i]`."""
    n = len(top)
    probs = np.full((n, spec.NUM_CLASSES), 0.1, np.float32)
    probs[np.arange(n), top] = 0.7
    out = {
        spec.PROBABILITIES: probs,
        spec.CLASS_ID: np.array(top, np.int64),
        spec.CLASS_NAME: np.array([spec.CLASS_NAMES[k].encode() for k in top], object),
        spec.OOD_SCORE: np.array(
            [1.5 if r == spec.REASON_OUT_OF_DISTRIBUTION else 0.4 for r in reasons], np.float32
        ),
        spec.ABSTAIN: np.array([bool(r) for r in reasons]),
        spec.ABSTAIN_REASON: np.array([r.encode() for r in reasons], object),
    }
    if heatmap:
        yy, xx = np.mgrid[0:224, 0:224]
        blob = np.exp(-((yy - 80) ** 2 + (xx - 150) ** 2) / 800.0).astype(np.float32)
        out[spec.HEATMAP] = np.stack([blob] * n)
    return out


def _example(image: bytes, source: str) -> bytes:
    import tensorflow as tf

    feature = {
        spec.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        spec.SOURCE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[source.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_request_log(folder: Path, hostile: bool = True) -> Path:
    """A request log as `btmri serve --request-log DIR --log-payload images` writes it
    (serving.request_log.RequestLog itself), then one call logged with the default
    `features` payload. Abstentions: 2 (3 with `hostile`); answered: 4."""
    folder.mkdir(parents=True, exist_ok=True)
    G, M, N, P = range(spec.NUM_CLASSES)
    log = RequestLog(
        ServerOptions(
            model_base_path="unused", request_log_dir=str(folder), log_payload=spec.LOG_PAYLOAD_IMAGES
        )
    )
    name = spec.MODEL_NAME
    images = [phantom_png(spec.CLASS_NAMES[k], seed) for seed, k in enumerate((G, M, P, G, N))]

    def offer(signature, inputs, outputs, model=name):
        log.offer(model, signature, inputs, MODEL_VERSION, outputs)

    image_input = spec.IMAGE_BYTES_INPUT
    offer(
        spec.PREDICT_IMAGES,
        {image_input: np.array(images[:2], object)},
        _outputs([G, M], [spec.REASON_LOW_CONFIDENCE, ""]),
    )
    offer(spec.GRADCAM, {image_input: np.array([images[2]], object)}, _outputs([P], [""], heatmap=True))
    offer(
        spec.PREDICT_IMAGES,
        {image_input: np.array([images[3]], object)},
        _outputs([G], [spec.REASON_OUT_OF_DISTRIBUTION]),
    )
    source = HOSTILE_SOURCE if hostile else "site/scan_0004.png"
    offer(
        spec.SERVING_DEFAULT,
        {spec.EXAMPLES_INPUT: np.array([_example(images[4], source)], object)},
        _outputs([N], [""]),
    )
    if hostile:
        offer(
            spec.PREDICT_IMAGES,
            {image_input: np.array([images[0]], object)},
            _outputs([M], [HOSTILE_REASON]),
            model=HOSTILE_MODEL,
        )
    log.close()
    features = RequestLog(ServerOptions(model_base_path="unused", request_log_dir=str(folder)))
    features.offer(
        name,
        spec.PREDICT_IMAGES,
        {image_input: np.array([images[1]], object)},
        MODEL_VERSION,
        _outputs([M], [""]),
    )
    features.close()
    return folder


@pytest.fixture(scope="module")
def request_log(tmp_path_factory) -> Path:
    return write_request_log(tmp_path_factory.mktemp("review") / HOSTILE_FOLDER)


def _review(record_id: str, label: str, reviewer: str = "ana") -> Review:
    return Review(record_id, label, reviewer, utc_now(), spec.MODEL_NAME, MODEL_VERSION, "glioma", "")


# ── The store ───────────────────────────────────────────────────────────────────────


# PostgreSQL runs the same tests when a server is given (a database the test may
# create schemas in), e.g. BTMRI_TEST_POSTGRES_URL=postgresql://reviewer@127.0.0.1:5432/reviews
POSTGRES_URL = os.environ.get("BTMRI_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """Where a test's store lives: a SQLite file, or a fresh schema of the PostgreSQL
    database named by BTMRI_TEST_POSTGRES_URL (skipped without one or without psycopg)."""
    if request.param == "sqlite":
        yield str(tmp_path / "r.sqlite")
        return
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: set BTMRI_TEST_POSTGRES_URL to run the store tests on one")
    psycopg = pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    schema = f"btmri_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


def test_a_later_review_supersedes_and_the_history_is_kept(database):
    store = open_store(database)
    first = store.add(_review("a#0/0", "glioma"), image=b"\x89PNG first")
    other = store.add(_review("b#0/0", UNUSABLE))
    second = store.add(_review("a#0/0", "meningioma", reviewer="ben"), image=b"\x89PNG second")
    assert (first.supersedes, other.supersedes, second.supersedes) == (None, None, first.id)
    current = store.current()
    assert set(current) == {"a#0/0", "b#0/0"}
    assert (current["a#0/0"].label, current["a#0/0"].reviewer) == ("meningioma", "ben")
    assert [r.label for r in store.history("a#0/0")] == ["glioma", "meningioma"]
    assert store.image("a#0/0") == b"\x89PNG first"  # the first copy is kept
    assert store.image("b#0/0") is None
    store.close()
    # Another connection (a second reviewer, a restart) reads the same.
    again = open_store(database)
    assert again.current()["a#0/0"] == current["a#0/0"]
    again.close()
    if "://" not in database:
        assert sqlite3.connect(database).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_review_is_all_or_nothing(database):
    store = open_store(database)
    with pytest.raises(ValueError, match="unknown label"):
        store.add(_review("a#0/0", "tumour"))
    # The image write fails after the review row is inserted: the row goes too.
    with pytest.raises(TypeError):
        store.add(_review("a#0/0", "glioma"), image=object())
    assert store.current() == {} and store.history("a#0/0") == []
    store.add(_review("a#0/0", "glioma"))  # and the store still works
    assert list(store.current()) == ["a#0/0"]
    store.close()
    assert set(LABELS) == {*spec.CLASS_NAMES, UNUSABLE}


CRASH = """
import os, sys
from pipeline.review.store import Review, open_store, utc_now
store = open_store(sys.argv[1])
store.add(Review("kept#0/0", "glioma", "ana", utc_now(), "brain_tumor", 3))
with store._transaction() as cur:  # the review being typed when the process dies
    cur.execute("INSERT INTO reviews (record_id, label, reviewer, reviewed_at, model_name, "
                "model_answer, abstain_reason) VALUES ('lost#0/0', 'glioma', 'ana', 'now', 'm', '', '')")
    os._exit(9)
"""


def test_a_crash_loses_only_the_review_being_written(tmp_path):
    db = tmp_path / "r.sqlite"
    run = subprocess.run([sys.executable, "-c", CRASH, str(db)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 9, run.stderr
    assert list(open_store(str(db)).current()) == ["kept#0/0"]


def test_postgresql_without_a_driver_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(StoreError, match=r"pip install .*\[postgres\]"):
        open_store("postgresql://ana:secret@db.example/reviews")
    with pytest.raises(StoreError, match="unknown database URL scheme 'mysql'"):
        open_store("mysql://db.example/reviews")


# ── The cases ───────────────────────────────────────────────────────────────────────


def test_abstentions_come_first_with_their_images_and_answers(request_log):
    cases = load_cases(request_log, max_abstained=10, answered=10)
    assert (cases.abstained_total, cases.answered_total, cases.unreadable) == (3, 4, 0)
    assert [c.abstain for c in cases.cases] == [True] * 3 + [False] * 4
    by_reason = {c.abstain_reason: c for c in cases.cases if c.abstain}
    low = by_reason[spec.REASON_LOW_CONFIDENCE]
    assert low.image == phantom_png("glioma", 0) and low.top_class == "glioma"
    assert low.answer == "abstained: low confidence (p=0.700)"
    assert by_reason[HOSTILE_REASON].model_name == HOSTILE_MODEL
    answered = {c.signature: c for c in cases.cases if not c.abstain and c.payload == spec.LOG_PAYLOAD_IMAGES}
    assert answered[spec.GRADCAM].heatmap.shape == (224, 224)  # logged with the answer
    assert answered[spec.SERVING_DEFAULT].source == HOSTILE_SOURCE
    assert answered[spec.SERVING_DEFAULT].image == phantom_png("notumor", 4)
    (not_logged,) = [c for c in cases.cases if c.payload == spec.LOG_PAYLOAD_FEATURES]
    assert not_logged.image is None and not_logged.probabilities["meningioma"] == pytest.approx(0.7)
    assert all(c.model_version == MODEL_VERSION for c in cases.cases)
    assert len({c.record_id for c in cases.cases}) == 7


def test_the_sample_of_answered_requests_is_stable_for_a_seed(request_log):
    def sample(seed):
        return [c.record_id for c in load_cases(request_log, 0, 2, seed).cases]

    assert sample(0) == sample(0) and len(sample(0)) == 2
    assert len({tuple(sorted(sample(s))) for s in range(8)}) > 1
    assert [c.abstain for c in load_cases(request_log, 1, 1).cases] == [True, False]


def test_damaged_records_are_counted_and_an_empty_folder_is_an_error(tmp_path):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(tmp_path / "requests-20261206T120000.000000Z-1-000001.tfrecord")) as w:
        w.write(b"\xff\xff\xff not a PredictionLog")
    with pytest.raises(CaseError, match=r"no logged answers .*\(1 unreadable records\)"):
        load_cases(tmp_path, 10, 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaseError, match="no request logs in"):
        load_cases(tmp_path / "empty", 10, 10)
    with pytest.raises(CaseError, match="no request log folder"):
        load_cases(tmp_path / "missing", 10, 10)


# ── The server ──────────────────────────────────────────────────────────────────────


@pytest.fixture
def review_server(request_log, tmp_path):
    """A ReviewServer on a free loopback port, in a thread; yields (server, app)."""
    store = open_store(str(tmp_path / "reviews.sqlite"))
    app = ReviewApp(
        load_cases(request_log, 10, 10),
        store,
        Overlays(None, "no Grad-CAM: no model given"),
        "ana",
        str(request_log),
    )
    server = ReviewServer(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, app
    server.shutdown()
    server.server_close()
    store.close()


def _request(server, method="GET", path="/", body=None, headers=None):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def _post(server, app, document, **headers):
    host = f"127.0.0.1:{server.server_address[1]}"
    base = {
        "Host": host,
        "Content-Type": "application/json",
        TOKEN_HEADER: app.token,
        "Origin": f"http://{host}",
    }
    base.update(headers)
    return _request(server, "POST", "/reviews", json.dumps(document).encode(), base)


def test_the_page_escapes_everything_from_the_log(review_server):
    server, _ = review_server
    response, data = _request(server)
    page = data.decode()
    assert response.status == 200 and "script-src 'self'" in response.getheader("Content-Security-Policy")
    for hostile in (HOSTILE_MODEL, HOSTILE_REASON, HOSTILE_SOURCE, HOSTILE_FOLDER):
        assert hostile not in page
    assert "&lt;script&gt;window.pwned" in page and "onerror=" not in page.replace("onerror=&#34;", "")
    assert "log &lt;b&gt;&amp;&#39;&#34;x&lt;/b&gt;" in page
    assert "<script" not in page.replace('<script src="/static/review.js" defer></script>', "")
    assert "the image was not logged" in page and "--log-payload features" in page


def test_requests_naming_another_host_are_refused(review_server):
    server, app = review_server
    response, data = _request(server, headers={"Host": "evil.example:8502"})
    assert response.status == 403 and b"DNS rebinding" in data
    response, _ = _request(server, headers={"Host": f"localhost:{server.server_address[1]}"})
    assert response.status == 200
    # The peer check: loopback addresses only, IPv4-mapped IPv6 included.
    assert (
        is_loopback_address("127.0.0.1")
        and is_loopback_address("::1")
        and is_loopback_address("::ffff:127.0.0.2")
    )
    assert not is_loopback_address("10.0.0.5") and not is_loopback_address("::ffff:192.168.1.4")
    assert host_name("[::1]:8502") == "::1" and is_local_host("LOCALHOST") and not is_local_host(None)
    assert not is_local_host("127.0.0.1.evil.example:80")
    # Widened (--host 0.0.0.0): another Host is served.
    app.local_only = False
    response, _ = _request(server, headers={"Host": "review.example:8502"})
    assert response.status == 200


def test_a_review_needs_the_page_token_and_its_origin(review_server):
    server, app = review_server
    case = app.cases.cases[0]
    document = {"case": 0, "record_id": case.record_id, "label": "glioma"}
    response, data = _post(server, app, document, **{TOKEN_HEADER: "forged"})
    assert response.status == 403 and b"token" in data
    response, _ = _post(server, app, document, Origin="http://evil.example")
    assert response.status == 403
    response, _ = _post(server, app, document, **{"Content-Type": "text/plain"})
    assert response.status == 403
    assert app.store.current() == {}
    response, data = _post(server, app, document)
    assert response.status == 200, data
    saved = json.loads(data)
    assert (saved["label"], saved["reviewer"], saved["model_version"]) == ("glioma", "ana", MODEL_VERSION)
    assert app.store.current()[case.record_id].label == "glioma"
    assert app.store.image(case.record_id) == case.image
    response, data = _post(server, app, dict(document, label="<b>"))
    assert response.status == 409 and b"unknown label" in data
    response, data = _post(server, app, dict(document, record_id="other#0/0"))
    assert response.status == 409 and b"reload" in data
    # The reload shows it.
    assert "reviewed: <strong" in _request(server)[1].decode()


def test_images_and_overlays_are_served_per_case(review_server):
    server, app = review_server
    cases = app.cases.cases
    logged = next(i for i, c in enumerate(cases) if c.heatmap is not None)
    response, data = _request(server, path=f"/case/{logged}/gradcam.png")
    assert response.status == 200 and response.getheader("Content-Type") == "image/png"
    overlay = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape[:2] == (64, 64)
    response, data = _request(server, path="/case/0/image")
    assert response.status == 200 and data == cases[0].image
    without = next(i for i, c in enumerate(cases) if c.heatmap is None and c.image is not None)
    response, data = _request(server, path=f"/case/{without}/gradcam.png")
    assert response.status == 404 and data == b"no Grad-CAM: no model given"
    not_logged = next(i for i, c in enumerate(cases) if c.image is None)
    assert _request(server, path=f"/case/{not_logged}/image")[0].status == 404
    assert _request(server, path="/case/999/image")[0].status == 404
    assert _request(server, path="/static/review.js")[0].status == 200
    assert _request(server, path="/static/../store.py")[0].status == 404


def test_a_model_computes_overlays_lazily_once(request_log):
    cases = load_cases(request_log, 10, 10).cases
    calls = []

    class Model:
        def gradcam(self, images):
            calls.append(len(images))
            return np.full((len(images), 224, 224), 0.5, np.float32), None

    loads = []
    overlays = Overlays(ModelSource("test model", 7, lambda: loads.append(1) or Model()), "")
    assert loads == []  # nothing loads before a case is shown
    case = next(c for c in cases if c.heatmap is None and c.image is not None)
    first = overlays.png(case)
    assert overlays.png(case) == first and calls == [1] and loads == [1]
    assert "version 7); version 3 answered" in overlays.note(case)
    broken = Overlays(ModelSource("broken model", None, lambda: 1 / 0), "")
    with pytest.raises(GradcamUnavailable, match="did not load"):
        broken.png(case)


# ── The export ──────────────────────────────────────────────────────────────────────


def test_the_export_is_a_labelled_image_folder_with_provenance(request_log, tmp_path):
    import csv

    from data_prep.discover import find_images

    cases = [c for c in load_cases(request_log, 10, 10).cases]
    with_image = [c for c in cases if c.image is not None]
    store = open_store(str(tmp_path / "r.sqlite"))
    labels = ["glioma", "pituitary", UNUSABLE]
    for case, label in zip(with_image, labels):
        store.add(
            Review(case.record_id, label, "ana", utc_now(), case.model_name, case.model_version), case.image
        )
    store.add(_review(with_image[0].record_id, "meningioma", "ben"))  # supersedes the first
    not_logged = next(c for c in cases if c.image is None)
    store.add(_review(not_logged.record_id, "notumor"))

    out = tmp_path / "export"
    summary = export_reviews(store, out)
    assert summary.images == {"meningioma": 1, "pituitary": 1}
    assert (summary.unusable, summary.without_image, summary.rows) == (1, 1, 4)
    found, skipped = find_images(out)
    assert sorted(spec.CLASS_NAMES[c.label] for c in found) == ["meningioma", "pituitary"] and not skipped
    rows = list(csv.DictReader(open(out / EXPORT_CSV, encoding="utf-8")))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 4
    first = next(r for r in rows if r["record_id"] == with_image[0].record_id)
    assert (first["label"], first["reviewer"], first["model_version"]) == ("meningioma", "ben", "3")
    assert first["supersedes"] and (out / first["file"]).read_bytes() == with_image[0].image
    assert all(not r["file"] for r in rows if r["label"] in (UNUSABLE, "notumor"))
    # A second export replaces the first; a folder of other files is refused.
    assert export_reviews(store, out).rows == 4
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("")
    with pytest.raises(ExportError, match="no earlier export"):
        export_reviews(store, tmp_path / "other")


def test_the_command_line_exports_and_refuses_mistakes(request_log, tmp_path, capsys):
    work = str(tmp_path / "work")
    assert btmri(["review", "--work-dir", work]) == 2
    assert "give --request-log DIR" in capsys.readouterr().err
    assert btmri(["review", "--work-dir", work, "--export", str(tmp_path / "x")]) == 2
    assert "no reviews in" in capsys.readouterr().err
    argv = ["review", "--request-log", str(request_log), "--work-dir", work]
    assert btmri([*argv, "--model", "m", "--server", "localhost:8500"]) == 2
    assert btmri([*argv, "--model", str(tmp_path)]) == 2
    assert "no SavedModel in" in capsys.readouterr().err
    assert btmri([*argv, "--db", "mysql://x/y"]) == 2
    assert "unknown database URL scheme" in capsys.readouterr().err
    store = open_store(str(tmp_path / "work" / "review" / "reviews.sqlite"))  # the default database
    store.add(_review("requests-x.tfrecord#0/0", "glioma"), image=phantom_png("glioma", 0))
    store.close()
    assert btmri(["review", "--work-dir", work, "--export", str(tmp_path / "x"), "-q"]) == 0
    assert "exported 1 current reviews" in capsys.readouterr().out
    assert (tmp_path / "x" / "glioma" / "requests-x.tfrecord_0_0.png").is_file()
