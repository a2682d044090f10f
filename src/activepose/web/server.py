"""The labelling page's HTTP server: FastAPI routes over `workflow.desk.LabellingDesk`.

The API is documented in docs/labelling-api.md. This module only translates HTTP to desk calls and errors to
status codes; the application logic (leases, revisions, validation, pre-annotations) lives in the desk and the
store. Security: images are served by id only (never by a client-given path), every request carries the
token when the server has one, request bodies are validated (types, sizes, keypoint counts, coordinates
inside the image) and limited to `MAX_BODY` bytes, and every asset is served from this package (the Content
Security Policy allows nothing else).

Every request's `Host` must name this server (loopback names, the `--host` given, `--allow-host` names): a
page of another site whose name was re-pointed at 127.0.0.1 (DNS rebinding) is refused. A request that
carries an `Origin` must come from the page's own origin (or an `--allow-host` name, for a proxy), a request
the browser marks as coming from another site (`Sec-Fetch-Site`) is refused (opening an image takes its
lease, so not even a cross-site GET may reach the API; only a navigation to the page itself may), and every
state change (POST, DELETE) must say `Content-Type: application/json`: a cross-site form or "simple" request
cannot without a CORS preflight, which this server never grants. These checks are ours, not FastAPI's, so
they hold whatever the installed version parses leniently.
"""

from __future__ import annotations

import ipaddress
import mimetypes
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI, Header, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from ..config import AnnotateOptions
from ..errors import ActiveposeError, ConfigError
from ..lock import project_lock
from ..pose.coco import MAX_PEOPLE_PER_IMAGE
from ..project.leases import LabelConflict, LeaseHeld
from ..project.schema import StoreError
from ..project.store import RoundNotOpen
from ..workflow.desk import InvalidLabels, LabellingDesk, Person, UnknownImage, check_annotator
from ..workflow.reporting import SILENT, Reporter

STATIC = Path(__file__).parent / "static"
MAX_BODY = 1 << 20  # bytes
COOKIE = "activepose_token"
# Off loopback; `python -c "import secrets; print(secrets.token_urlsafe(24))"` makes one.
MIN_TOKEN_LENGTH = 16
_TOKEN_FORM = re.compile(r"[A-Za-z0-9._~-]+")  # goes into a URL, a header and a cookie as it is
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
STATE_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


Annotator = Annotated[str | None, Header(alias="X-Annotator")]  # module level: routes resolve it by name
# Digits only: "+6505", " 6505" or "6505.0" are not image ids (a lenient int parse would take them).
ImageId = Annotated[str, PathParam(pattern=r"^[0-9]{1,15}$")]


class PersonIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    keypoints: list[tuple[float, float, int]] = Field(max_length=1000)
    seconds: float | None = Field(default=None, ge=0, le=86400)
    clicks: int | None = Field(default=None, ge=0, le=1_000_000)
    origin: Literal["predicted", "manual", "copied"] = "manual"


class SaveIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    revision: int = Field(ge=0)
    force: bool = False
    seconds: float | None = Field(default=None, ge=0, le=86400)
    people: list[PersonIn] = Field(max_length=MAX_PEOPLE_PER_IMAGE)


class SkipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: int = Field(ge=0)
    force: bool = False


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=SECURITY_HEADERS)


class _BodyLimit:
    """ASGI middleware: refuse request bodies over `MAX_BODY` bytes (413) whether or not they say their size."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return await _error(413, f"request body larger than {MAX_BODY} bytes")(scope, receive, send)
        # Read the whole (small) body first: an over-long one is answered here, before any route sees it.
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > MAX_BODY:
                return await _error(413, f"request body larger than {MAX_BODY} bytes")(scope, receive, send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


_HOST_HEADER = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _host_name(value: str | None) -> str | None:
    """The host name of a `Host` header ("127.0.0.1:8000", "[::1]:8000", "localhost"), lower case; None if malformed."""
    if not value or not _HOST_HEADER.fullmatch(value):  # no user info ("a@b"), paths or odd ports
        return None
    return urlsplit(f"//{value}").hostname


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names a request's `Host` may carry for a server listening on `host`.

    Always the loopback names (no other site can be served under them) and `host` itself; for a wildcard
    address (0.0.0.0, ::) also this machine's host names; plus `extra` (`--allow-host`, e.g. a proxy's name).
    """
    names = {*LOOPBACK_NAMES, host.strip("[]").lower(), *(h.strip("[]").lower() for h in extra)}
    if host in ("0.0.0.0", "::", ""):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(n for n in names if n)


def _cross_site(request: Request, proxies: frozenset[str]) -> str | None:
    """Why a request comes from another site, None when it does not.

    Its `Origin` (sent with every cross-origin fetch and every POST) must be the page's own `host:port`, or an
    `--allow-host` name (`proxies`: a proxy may rewrite Host); the browser's `Sec-Fetch-Site` must be
    same-origin or none (typed by hand), except for a navigation to the page itself (a link to it).
    """
    origin = request.headers.get("origin")
    if origin is not None:
        # host[:port] only: behind a TLS proxy the page's scheme (https) is not the one the server sees (http)
        parts = urlsplit(origin.lower()) if origin != "null" else None
        own = request.headers.get("host", "").lower()
        if parts is None or not (parts.netloc == own or parts.hostname in proxies):
            return f"Origin {origin[:100]!r} is not this server's ({own[:100]})"
    site = request.headers.get("sec-fetch-site")
    navigation = request.method == "GET" and request.url.path == "/"
    if site not in (None, "same-origin", "none") and not navigation:
        return f"the browser marks it {site[:40]!r} (Sec-Fetch-Site)"
    return None


def create_app(
    desk: LabellingDesk,
    token: str | None = None,
    hosts: Iterable[str] = LOOPBACK_NAMES,
    proxies: Iterable[str] = (),
) -> FastAPI:
    """Return the FastAPI app serving `desk`'s round; with `token`, every request must carry it.

    `hosts`: the names a request's `Host` header may carry (`allowed_hosts`); anything else is refused (400).
    `proxies`: names (`--allow-host`) a page's `Origin` may carry although the `Host` the server sees differs.
    """
    app = FastAPI(title="activepose labelling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.desk = desk
    hosts = frozenset(h.lower() for h in hosts)
    proxies = frozenset(h.strip("[]").lower() for h in proxies)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        name = _host_name(request.headers.get("host"))
        if name not in hosts:
            shown = (request.headers.get("host") or "")[:100]
            return _error(400, f"Host {shown!r} is not this server: open it as http://127.0.0.1 or a name "
                               "given with --allow-host")  # fmt: skip
        cross = _cross_site(request, proxies)
        if cross is not None:
            return _error(403, f"cross-origin request refused: {cross}")
        if request.method in STATE_CHANGES:
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return _error(
                    415, f"a change must be sent as Content-Type: application/json (got {kind[:60]!r})"
                )
        if token is not None:
            given = request.query_params.get("token") if request.url.path == "/" else None
            auth = request.headers.get("authorization", "")
            candidates = [
                given,
                auth[7:] if auth.lower().startswith("bearer ") else None,
                request.headers.get("x-activepose-token"),
                request.cookies.get(COOKIE),
            ]
            if not any(
                c is not None and secrets.compare_digest(c.encode(), token.encode()) for c in candidates
            ):
                return _error(401, "missing or wrong token: open the link printed by `activepose annotate`")
            if given is not None:  # the link with ?token=: keep it in a cookie, out of the address bar
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return response
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error(422, _validation_detail(exc))

    def annotator_of(x_annotator: str | None) -> str:
        return check_annotator(x_annotator)

    def call(fn, *args, **kwargs) -> Any:
        """Run a desk call and turn its errors into HTTP answers."""
        try:
            return fn(*args, **kwargs)
        except UnknownImage as exc:
            return _error(404, str(exc))
        except LabelConflict as exc:
            image_id = args[0] if args else None
            return _error(409, str(exc), conflict=desk.conflict(image_id))
        except LeaseHeld as exc:
            lease = exc.lease
            return _error(423, str(exc), lease={"annotator": lease.annotator,
                                                "expires_in": round(lease.expires_at - time.time(), 1)})  # fmt: skip
        except RoundNotOpen as exc:
            return _error(409, str(exc))
        except (InvalidLabels, ConfigError) as exc:
            return _error(422, str(exc))
        except StoreError as exc:
            return _error(422, str(exc) + "".join(f"; {p}" for p in exc.problems[:5]))
        except ActiveposeError as exc:
            return _error(400, str(exc))

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/round")
    def round_info(x_annotator: Annotator = None):
        return call(lambda: desk.round_view(annotator_of(x_annotator)))

    @app.get("/api/images/{image_id}")
    def image(image_id: ImageId, x_annotator: Annotator = None):
        return call(lambda i: desk.image_view(i, annotator_of(x_annotator)), int(image_id))

    @app.get("/api/images/{image_id}/file")
    def image_file(image_id: ImageId):
        path = call(desk.image_file, int(image_id))
        if isinstance(path, Response):
            return path
        if not path.is_file():
            return _error(404, f"image id {image_id}: its file {path.name} is missing")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media)

    @app.post("/api/images/{image_id}/labels")
    def save(image_id: ImageId, body: SaveIn, x_annotator: Annotator = None):
        people = [Person(list(p.keypoints), p.seconds, p.clicks, p.origin) for p in body.people]
        return call(lambda i: desk.save(i, annotator_of(x_annotator), people, body.revision,
                                        force=body.force, seconds=body.seconds), int(image_id))  # fmt: skip

    @app.post("/api/images/{image_id}/skip")
    def skip(image_id: ImageId, body: SkipIn, x_annotator: Annotator = None):
        return call(
            lambda i: desk.skip(i, annotator_of(x_annotator), body.revision, body.force), int(image_id)
        )

    @app.post("/api/images/{image_id}/lease")
    def renew(image_id: ImageId, x_annotator: Annotator = None):
        out = call(lambda i: desk.renew(i, annotator_of(x_annotator)), int(image_id))
        return out if isinstance(out, Response) else {"lease": out}

    @app.delete("/api/images/{image_id}/lease")
    def release(image_id: ImageId, x_annotator: Annotator = None):
        out = call(lambda i: desk.release(i, annotator_of(x_annotator)), int(image_id))
        return out if isinstance(out, Response) else {"lease": None}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(_BodyLimit)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, token: str | None, port: int = 8000) -> None:
    """Refuse what the server cannot safely or possibly listen with, before any work starts (ConfigError).

    Off loopback a token is required (anyone who can reach the port could otherwise label or read images)
    and must be at least `MIN_TOKEN_LENGTH` characters; a token is URL-safe characters only (it travels in
    a link, a header and a cookie); the port is 1-65535.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is a whole number from 1 to 65535")
    if token is not None and not _TOKEN_FORM.fullmatch(token):
        raise ConfigError("--token: use letters, digits and . _ ~ - only (it goes into a link as it is)")
    if is_loopback(host):
        return
    if not token:
        raise ConfigError(
            f"--host {host} is reachable from other machines: pass --token TOKEN (every request must carry it)"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"--host {host} is reachable from other machines: the token must have at least {MIN_TOKEN_LENGTH} "
            f'characters (it has {len(token)}); e.g. python -c "import secrets; print(secrets.token_urlsafe(24))"'
        )


def serve(
    folder: str | Path,
    opts: AnnotateOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    allow_hosts: Iterable[str] = (),
    until_complete: bool = False,
    reporter: Reporter = SILENT,
    on_ready=None,
) -> LabellingDesk:
    """Serve the labelling page for a round until Ctrl-C (or, with `until_complete`, until it is labelled).

    Holds the project's lock while it serves (`lock.project_lock`, re-entrant for `run --oracle web`): a
    second server, a `run`, `train` or `select` on the same project is refused naming this one, while
    reading commands and label imports go on. Off loopback a token is required: anyone who can reach the
    port could otherwise label (or read images). `on_ready(url)` is called once the server listens (the URL
    carries the token).
    """

    check_host(host, token, port)
    with project_lock(folder, "annotate"):
        return _serve(folder, opts, host, port, token, tuple(allow_hosts), until_complete, reporter, on_ready)


def _serve(folder, opts, host, port, token, allow_hosts, until_complete, reporter, on_ready) -> LabellingDesk:
    import uvicorn

    desk = LabellingDesk(folder, opts, reporter)
    app = create_app(desk, token, allowed_hosts(host, allow_hosts), allow_hosts)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.25):
            if server.started and on_ready is not None:
                on_ready(url)
                break
        done_at = None
        while not stop.wait(1.0):
            if until_complete and done_at is None and desk.is_complete():
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at > 3.0:  # let the page show the banner
                server.should_exit = True
                break

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when the port is taken
        raise ConfigError(f"cannot serve on {host}:{port} (is the port in use?)") from exc
    finally:
        stop.set()
        desk.close()
    return desk
