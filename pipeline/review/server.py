"""The review page: a small HTTP server on this machine.

    GET  /                       the page: every case, its answer and its current review
    GET  /static/review.js|.css  the page's script and style (no inline script: the CSP forbids it)
    GET  /case/N/image           the logged image of case N
    GET  /case/N/gradcam.png     its Grad-CAM overlay (gradcam.py), or why there is none (404)
    POST /reviews                {"case": N, "record_id": ..., "label": ...} → the stored review

Security, as the page shows medical images and writes to a database:
- local only: bound to 127.0.0.1 by default, and while the bind address is a loopback
  one every request must come from a loopback peer and name a local Host (a web page
  elsewhere that rebinds its DNS name to 127.0.0.1 sends its own name as Host);
- everything shown is escaped (Jinja2 autoescape; the script sets text, never HTML):
  model names, reasons and sources come from logs and are treated as hostile;
- a POST needs the per-start token the page carries, a JSON body (a cross-site form
  cannot send one without a CORS preflight this server never grants) and, when the
  browser says where it comes from (Origin, Sec-Fetch-Site), this page's own origin;
- a Content-Security-Policy that allows this origin's script, style, images and fetches only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import secrets
import socket
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from btmri import spec
from pipeline.review.cases import CaseList
from pipeline.review.gradcam import GradcamUnavailable, Overlays
from pipeline.review.store import LABELS, UNUSABLE, Review, ReviewStore, utc_now

log = logging.getLogger("review")

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PAGE_TEMPLATE = "review.html.j2"
STATIC = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
TOKEN_HEADER = "X-Review-Token"
MAX_BODY_BYTES = 4096
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# Keys that record each label (the page's help line and its script read them from the buttons).
LABEL_KEYS: dict[str, tuple[str, ...]] = {
    **{name: (str(i + 1),) for i, name in enumerate(spec.CLASS_NAMES)},
    UNUSABLE: ("0", "u"),
}
LABEL_TEXT = {**{name: name for name in spec.CLASS_NAMES}, UNUSABLE: "not a usable slice"}
assert tuple(LABEL_KEYS) == LABELS
IMAGE_TYPES = {spec.FORMAT_PNG: "image/png", spec.FORMAT_JPEG: "image/jpeg"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_CASE_PATH = re.compile(r"/case/(\d{1,9})/(image|gradcam\.png)")


def is_loopback_address(address: str) -> bool:
    """Whether a peer address is this machine (IPv4-mapped IPv6 included)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def host_name(header: str | None) -> str | None:
    """The name of a Host header without its port ("[::1]:8502" → "::1")."""
    if not header:
        return None
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 else None
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_local_host(header: str | None) -> bool:
    name = host_name(header)
    return name is not None and (name in LOCAL_NAMES or is_loopback_address(name))


class ReviewApp:
    """What the handler serves: the cases, the store and the overlays of one start."""

    def __init__(
        self,
        cases: CaseList,
        store: ReviewStore,
        overlays: Overlays,
        reviewer: str,
        log_dir: str,
        local_only: bool = True,
    ):
        import jinja2

        self.cases = cases
        self.store = store
        self.overlays = overlays
        self.reviewer = reviewer
        self.log_dir = log_dir
        self.local_only = local_only
        self.token = secrets.token_urlsafe(32)
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True)
        self._template = env.get_template(PAGE_TEMPLATE)

    def page(self) -> str:
        reviews = self.store.current()
        return self._template.render(
            cases=self.cases,
            reviews=reviews,
            reviewed=sum(c.record_id in reviews for c in self.cases.cases),
            overlays=self.overlays,
            labels=[(label, LABEL_TEXT[label], LABEL_KEYS[label]) for label in LABELS],
            class_names=spec.CLASS_NAMES,
            reviewer=self.reviewer,
            log_dir=self.log_dir,
            store=self.store.where,
            token=self.token,
        )

    def save(self, index: int, record_id: str, label: str) -> Review:
        """Stores one review of case `index`; ValueError when the request does not fit the cases."""
        if not 0 <= index < len(self.cases.cases):
            raise ValueError(f"no case {index}")
        case = self.cases.cases[index]
        if case.record_id != record_id:
            raise ValueError("the case list has changed since the page was loaded: reload it")
        review = Review(
            record_id=case.record_id,
            label=label,
            reviewer=self.reviewer,
            reviewed_at=utc_now(),
            model_name=case.model_name,
            model_version=case.model_version,
            model_answer=case.top_class,
            abstain_reason=case.abstain_reason,
        )
        return self.store.add(review, image=case.image)


class _Handler(BaseHTTPRequestHandler):
    server_version = "btmri-review"
    sys_version = ""

    @property
    def app(self) -> ReviewApp:
        return self.server.app

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    # -- responses --

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _text(self, status: int, message: str) -> None:
        self._send(status, message.encode(), "text/plain; charset=utf-8")

    def _json(self, status: int, document: dict) -> None:
        self._send(status, json.dumps(document).encode(), "application/json")

    # -- checks --

    def _refused(self) -> str | None:
        """Why this request is refused, or None: the local-only rule (module docstring)."""
        if not self.app.local_only:
            return None
        if not is_loopback_address(self.client_address[0]):
            return "this review page answers this machine only (start it with --host to widen that)"
        if not is_local_host(self.headers.get("Host")):
            return "the Host of this request is not this machine: refused (DNS rebinding)"
        return None

    def _cross_site(self) -> str | None:
        """Why a POST does not come from this page, or None."""
        token = self.headers.get(TOKEN_HEADER, "")
        if not secrets.compare_digest(token.encode(), self.app.token.encode()):
            return "missing or stale page token: reload the page"
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            return "cross-origin request refused"
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site != "same-origin":
            return "cross-site request refused"
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return "the body must be JSON"
        return None

    # -- methods --

    def do_GET(self):
        if refused := self._refused():
            return self._text(HTTPStatus.FORBIDDEN, refused)
        path = self.path.split("?", 1)[0]
        if path == "/":
            return self._send(HTTPStatus.OK, self.app.page().encode(), "text/html; charset=utf-8")
        if path == "/favicon.ico":  # browsers ask for one; none is the answer, not an error
            return self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        if path.startswith("/static/") and path[len("/static/") :] in STATIC:
            name = path[len("/static/") :]
            return self._send(HTTPStatus.OK, (TEMPLATES_DIR / name).read_bytes(), STATIC[name])
        match = _CASE_PATH.fullmatch(path)
        if match is None or int(match.group(1)) >= len(self.app.cases.cases):
            return self._text(HTTPStatus.NOT_FOUND, "not found")
        case = self.app.cases.cases[int(match.group(1))]
        if match.group(2) == "image":
            if case.image_format not in IMAGE_TYPES:
                return self._text(HTTPStatus.NOT_FOUND, "the image was not logged")
            return self._send(HTTPStatus.OK, case.image, IMAGE_TYPES[case.image_format])
        try:
            return self._send(HTTPStatus.OK, self.app.overlays.png(case), "image/png")
        except GradcamUnavailable as err:
            return self._text(HTTPStatus.NOT_FOUND, str(err))

    do_HEAD = do_GET

    def do_POST(self):
        if refused := self._refused():
            return self._text(HTTPStatus.FORBIDDEN, refused)
        if self.path != "/reviews":
            return self._text(HTTPStatus.NOT_FOUND, "not found")
        if refused := self._cross_site():
            return self._json(HTTPStatus.FORBIDDEN, {"error": refused})
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "a small JSON body is expected"})
        try:
            body = json.loads(self.rfile.read(length))
            index, record_id, label = int(body["case"]), str(body["record_id"]), str(body["label"])
        except (ValueError, KeyError, TypeError):
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "expected case, record_id and label"})
        try:
            review = self.app.save(index, record_id, label)
        except ValueError as err:
            return self._json(HTTPStatus.CONFLICT, {"error": str(err)})
        except Exception as err:  # the database failed: the page says so, the server stays up
            log.error("review not saved: %s: %s", type(err).__name__, err)
            return self._json(
                HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"not saved: {type(err).__name__}: {err}"}
            )
        return self._json(HTTPStatus.OK, asdict(review))

    def _not_allowed(self):
        self._text(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: ReviewApp, host: str, port: int):
        self.app = app
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def is_loopback_bind(host: str) -> bool:
    """Whether binding `host` keeps the page on this machine (then requests are checked too)."""
    return host in LOCAL_NAMES or is_loopback_address(host)
