"""The explorer's web server: a Starlette app on uvicorn, one JSON endpoint per action of the page.

Endpoints (``GET /api`` lists them). Images travel as base64 of 784 uint8 bytes, row-major, 255 = ink
(``genlab.serve.explorer.encode_image``); drawings go in the same way, S x S pixels with S from 28 to 112
(or as a flat list of S x S numbers in [0, 255]).

- ``GET  /api/models``: the loaded models, their energies' test percentiles and the request limits.
- ``POST /api/draw`` ``{"image": [...], "preprocess": true, "models": [...]}``: the MNIST-style 28 x 28 input
  and, for every model asked (default: all), its energy, percentile among the test digits, reconstruction and
  per-pixel error. ``preprocess: false`` takes a 28 x 28 image as it is.
- ``POST /api/descend`` ``{"model", "image", "steps", "step_size", "preprocess"}``: gradient steps downhill
  on the model's energy; every frame and its energy.
- ``POST /api/digit`` ``{"model", "index"}``: test digit ``index`` of a model's test set and its label (the
  page draws it on the pad: a way to every model's answer from the keyboard).
- ``POST /api/repair`` ``{"model", "index", "rate", "seed"}``: a test digit, the lecture's dropout corruption
  and the DAE, Telea and Navier-Stokes repairs with PSNR (``index`` omitted: a random one).
- ``GET  /api/latent/{model}``: a VAE's test means laid out by PCA, with labels.
- ``POST /api/latent/decode`` ``{"model", "x", "y"}``: the decoded mean of the test digit nearest (x, y).
- ``POST /api/latent/interpolate`` ``{"model", "a", "b", "steps"}``: decodes along the line between two codes.
- ``POST /api/sample`` ``{"model", "n", "seed", "label"?}``: samples from fixed noise with each one's energy;
  ``label`` (0-9) picks the digit of a conditional model (cvae, cdcgan).
- ``POST /api/walk`` ``{"model", "seed", "steps", "scale", "label"?}``: a straight walk in z with energies; for
  a conditional model the digit stays ``label`` while z, its style, moves.
- ``GET  /api/watch``: the watched runs' metrics, figures and samples of their latest checkpoint.
- ``GET  /api/watch/{run}/{figure}``: one PNG figure of a watched run, by the name ``/api/watch`` gave.

Safe by default: binds 127.0.0.1; answers only requests whose Host header names the address it serves (a DNS
rebinding page has another Host) and, when a browser sends an Origin, only its own origin; caps bodies at
``MAX_BODY`` bytes and each request's work (``explorer.LIMITS``); takes no paths from the client (models,
runs and figures are looked up by name among what the command line loaded). A bad request gets a 4xx and one
line of JSON, ``{"error": "..."}``; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import functools
import ipaddress
import json
import math
import random
import signal
import socket
import sys
import threading
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from genlab.errors import GenlabError, one_line
from genlab.evaluate import finite_or_null
from genlab.serve.explorer import LIMITS, Explorer, encode_image
from genlab.serve.preprocess import mnist_style

MAX_BODY = 64 * 1024  # bytes; a 112 x 112 drawing as JSON is under 50 KiB
MAX_HEAD = 64 * 1024  # bytes of a request's line and headers (browsers send under 2 KiB)
REQUEST_SECONDS = BODY_SECONDS = 10.0  # to send a whole request (the protocol), and its body (the app, a JSON 408)
MAX_SIDE = 112        # largest drawing side accepted
FAINTEST_INK = 16     # of 255 above the background: fainter ink shows nothing on a screen
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
# The page may talk to its own server only: no CDN, no other host, nothing inline but data: images.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; "
                                 b"img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; "
                                 b"form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class ApiError(Exception):
    """A bad request: its HTTP status and one line saying what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class JSON(JSONResponse):
    """Starlette's JSON response, except that a number that is not finite is null (a run whose energies came
    out NaN still answers; the page shows a gap) and text that is not valid Unicode (a file or key name read
    from the disk) is escaped: never a failure to encode, so never a 500."""

    def render(self, content) -> bytes:
        return json.dumps(finite_or_null(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def _error_body(message: str) -> bytes:
    return json.dumps({"error": " ".join(str(message).split())}).encode()


# -- the guard in front of every request ---------------------------------------------------------------------
def allowed_hosts(host: str, port: int, extra=()) -> set[str]:
    """The Host header values the server answers: the address it serves (and ``localhost`` / ``127.0.0.1``
    for each other when bound to loopback), plus any ``--allow-host`` names."""
    names = {host, *extra}
    if host in ("127.0.0.1", "localhost"):
        names |= {"127.0.0.1", "localhost"}
    out = set()
    for name in names:
        shown = f"[{name}]" if ":" in name else name
        out.add(f"{shown}:{port}".lower())
        if port == 80:
            out.add(shown.lower())
    return out


class Guard:
    """ASGI middleware: Host and Origin checks, a Content-Length cap and security headers on every answer."""

    def __init__(self, app, hosts: set[str], max_body: int = MAX_BODY):
        self.app, self.hosts, self.max_body = app, hosts, max_body
        self.origins = {f"http://{h}" for h in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers, named = {}, {"host": 0, "origin": 0}
        for k, v in scope["headers"]:
            name = k.decode("latin-1").lower()
            if name in named:
                named[name] += 1
            headers.setdefault(name, v.decode("latin-1"))
        for name, count in named.items():
            if count > 1:  # which one a proxy in front read is anyone's guess (RFC 9112, 3.2; RFC 6454, 7.3)
                return await self._refuse(send, 400, f"a request names at most one {name.title()} header, this "
                                                     f"one named {count}")
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            return await self._refuse(send, 421, f"Host header {host[:80]!r} is not the address this server "
                                                 f"serves; open {sorted(self.hosts)[0]}")
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            return await self._refuse(send, 403, f"requests from origin {origin[:80]!r} are refused; use the "
                                                 "page this server serves")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":  # a small compressed body could unpack past the body cap
            return await self._refuse(send, 415, f"Content-Encoding {encoding[:40]!r} is not accepted; send the "
                                                 "JSON body uncompressed")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await self._refuse(send, 400, "Content-Length must be a whole number")
            if int(length) > self.max_body:
                return await self._refuse(send, 413, f"request body of {length} bytes is over the limit of "
                                                     f"{self.max_body} bytes")

        async def send_secure(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            try:
                await send(message)
            except (RuntimeError, ConnectionError) as e:
                # The client has gone (a pipelined flood closed unread): its answer goes nowhere, and is no error
                # of the server's (it logged two tracebacks).
                if not isinstance(e, ConnectionError) and "closed" not in str(e):
                    raise

        await self.app(scope, receive, send_secure)

    @staticmethod
    async def _refuse(send, status: int, message: str) -> None:
        body = _error_body(message)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
                                *SECURITY_HEADERS]})
        await send({"type": "http.response.body", "body": body})


# -- reading and checking a request ----------------------------------------------------------------------------
def _reject_constant(name: str):
    raise ApiError(400, f"JSON constant {name} is not a number this server accepts")


async def read_json(request: Request, fields: set[str]) -> dict:
    """The body as a JSON object with only ``fields``; chunked bodies are capped as they arrive."""
    from starlette.requests import ClientDisconnect

    body = bytearray()

    async def read():
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > MAX_BODY:
                raise ApiError(413, f"request body is over the limit of {MAX_BODY} bytes")

    try:
        await asyncio.wait_for(read(), BODY_SECONDS)
    except ClientDisconnect:  # gone before its whole body came: an answer no one reads, and no traceback
        raise ApiError(400, "the client closed the connection before sending the whole body") from None
    except asyncio.TimeoutError:  # a body announced and never finished would hold its connection for ever
        raise ApiError(408, f"the body did not arrive within {BODY_SECONDS:.0f} s") from None
    try:
        data = json.loads(bytes(body), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the body is not valid JSON ({str(e)[:100]}); send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0][:40]!r}; this endpoint takes {', '.join(sorted(fields))}")
    return data


def _number(d: dict, key: str, lo: float, hi: float, default=None, integer: bool = False):
    value = d.get(key, default)
    kind = "a whole number" if integer else "a number"
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (integer and not isinstance(value, int)):
        raise ApiError(400, f"{key!r} must be {kind} from {lo} to {hi}")
    # Compared as it is, never made a float first: a JSON integer of 400 digits has no float.
    if (isinstance(value, float) and not math.isfinite(value)) or not lo <= value <= hi:
        raise ApiError(400, f"{key!r} must be {kind} from {lo} to {hi}, got {_shown(value)}")
    return value


def _shown(value) -> str:
    """A number as an error message quotes it: 40 characters at most (Python refuses to print an integer of
    over 4,300 digits, which a JSON body may hold)."""
    if isinstance(value, int) and abs(value) >= 10 ** 40:
        return "an integer of over 40 digits"
    return str(value)[:40]


def _bool(d: dict, key: str, default: bool) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"{key!r} must be true or false")
    return value


def _drawing(d: dict, preprocess: bool) -> np.ndarray:
    """``image`` as a [28 x 28] input on [0, 1]: S x S pixels, 0 = background, 255 = ink, row-major, given as a
    base64 string of S * S uint8 bytes (what the page sends: decoding it costs microseconds) or a flat list of
    numbers in [0, 255] (handy in scripts)."""
    values = d.get("image")
    if isinstance(values, str):
        try:
            a = np.frombuffer(base64.b64decode(values, validate=True), np.uint8)
        except ValueError:
            raise ApiError(400, "'image' is a string but not valid base64 (of S x S uint8 bytes)") from None
    elif isinstance(values, list):
        if not all(type(v) is float or (type(v) is int and -256 < v < 256) for v in values):
            raise ApiError(400, "'image' values must be finite numbers in [0, 255]")
        a = np.asarray(values, dtype=np.float64)
        if not np.isfinite(a).all() or (a.size and (a.min() < 0 or a.max() > 255)):
            raise ApiError(400, "'image' values must be finite numbers in [0, 255]")
    else:
        raise ApiError(400, "'image' must be base64 of S x S uint8 bytes or a flat list of S x S numbers in "
                            f"[0, 255] (S from 28 to {MAX_SIDE}, row-major, 0 = background)")
    side = math.isqrt(a.size)
    if side * side != a.size or not 28 <= side <= MAX_SIDE or (not preprocess and side != 28):
        want = "784 (28 x 28, with preprocess false)" if not preprocess else f"S x S with S from 28 to {MAX_SIDE}"
        raise ApiError(400, f"'image' has {a.size} pixels; expected {want}")
    # A drawing's background is its darkest level: ink that barely stands out of it (1/255, 1e-40; a canvas of one
    # grey) was scaled up into a solid block. A 28 x 28 image taken as it is needs only some ink.
    contrast = float(a.max() - a.min()) if a.size else 0.0
    if contrast < (FAINTEST_INK if preprocess else 0.5):
        raise ApiError(400, f"the drawing is blank (its ink stands {contrast:.3g} of 255 above its background): draw "
                            "a digit first")
    a = (a.astype(np.float32) / 255).reshape(side, side)
    try:
        a = mnist_style(a) if preprocess else a
    except GenlabError as e:
        raise ApiError(400, str(e)) from None
    # Scored as the 8-bit image the answer shows (and ``genlab energy`` would read from a PNG of it).
    return np.rint(np.clip(a, 0, 1) * 255).astype(np.float32) / 255


def _model(d: dict, explorer: Explorer, need: str | None = None) -> str:
    name = d.get("model")
    if not isinstance(name, str) or name not in explorer.models:
        shown = repr(name)[:60]
        raise ApiError(404, f"unknown model {shown}; loaded: {', '.join(explorer.models) or 'none'}")
    m = explorer.models[name]
    ok = {None: True, "dae": m.run.model_name == "dae", "latent": m.latent is not None,
          "sample": m.model.can_sample}[need]
    if not ok:
        what = {"dae": "a denoising autoencoder (dae) run", "latent": "a VAE",
                "sample": "a model that can sample (vae, ebgan, dcgan, cdcgan, cvae with --condition label)"}[need]
        raise ApiError(400, f"model {name!r} ({m.run.model_name}) cannot do this; it needs {what}")
    return name


# -- batching concurrent drawings ------------------------------------------------------------------------------
class DrawBatcher:
    """Drawings that arrive while the model thread is busy are scored together in the next batched pass: one
    forward per model serves many clients, which is what keeps the latency flat under concurrent load.

    A pass that would start with fewer drawings than the cap first lets the event loop run a few times
    (``GATHER_PASSES`` turns in which no new drawing arrived, at most ``GATHER_S`` seconds): clients answered
    by the previous pass send their next drawing within those turns, and a pass of five models costs about
    3 ms for one drawing and 6 ms for eight on one core, so a fuller pass costs less per drawing
    (measured in benchmarks/RESULTS.md, "Explorer latency")."""

    GATHER_PASSES = 3
    GATHER_S = 0.003

    def __init__(self, explorer: Explorer, executor: ThreadPoolExecutor):
        self.explorer, self.executor = explorer, executor
        self.pending: list = []
        self.running = False

    async def submit(self, image: np.ndarray, names: list[str]) -> dict:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((image, names, future))
        if not self.running:
            self.running = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                cap = LIMITS["draw_batch"]
                await self._gather(cap)
                batch, self.pending = self.pending[:cap], self.pending[cap:]
                try:
                    results = await loop.run_in_executor(self.executor, self.explorer.draw,
                                                         [b[0] for b in batch], [b[1] for b in batch])
                except Exception as e:  # handed to every waiting request; the batcher keeps going
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                for (*_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            self.running = False

    async def _gather(self, cap: int) -> None:
        """Yield to the event loop until ``GATHER_PASSES`` turns in a row bring no new drawing, the batch is
        full or ``GATHER_S`` has passed."""
        loop = asyncio.get_running_loop()
        deadline, calm = loop.time() + self.GATHER_S, 0
        while calm < self.GATHER_PASSES and len(self.pending) < cap and loop.time() < deadline:
            waiting = len(self.pending)
            await asyncio.sleep(0)
            calm = calm + 1 if len(self.pending) == waiting else 0


# -- the app ---------------------------------------------------------------------------------------------------
ENDPOINTS = ["GET /api", "GET /api/models", "POST /api/draw", "POST /api/descend", "POST /api/digit", "POST /api/repair",
             "GET /api/latent/{model}", "POST /api/latent/decode", "POST /api/latent/interpolate",
             "POST /api/sample", "POST /api/walk", "GET /api/watch", "GET /api/watch/{run}/{figure}"]


def build_app(explorer: Explorer, hosts: set[str]) -> Guard:
    """The ASGI app serving ``explorer`` to requests whose Host is one of ``hosts``."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="genlab-models")  # models run one request at a time
    batcher = DrawBatcher(explorer, executor)
    static = {name: resources.files("genlab.serve").joinpath("static", name).read_bytes() for name in STATIC}

    async def compute(fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))
        except GenlabError as e:
            raise ApiError(400, str(e)) from None

    async def page(request: Request):
        return Response(static["index.html"], media_type=STATIC["index.html"])

    async def static_file(request: Request):
        name = request.path_params["name"]
        if name not in static or name == "index.html":
            raise ApiError(404, f"no static file {name[:60]!r}")
        return Response(static[name], media_type=STATIC[name])

    async def api_index(request: Request):
        return JSON({"endpoints": ENDPOINTS, "limits": LIMITS, "max_body": MAX_BODY,
                     "image_format": "base64 of 784 uint8 bytes, row-major, 255 = ink"})

    async def models(request: Request):
        return JSON(explorer.describe())

    async def draw(request: Request):
        d = await read_json(request, {"image", "preprocess", "models"})
        image = _drawing(d, _bool(d, "preprocess", True))
        if not explorer.models:
            raise ApiError(400, "no models are loaded (this server only watches runs); start genlab serve with a RUN_DIR")
        names = d.get("models", list(explorer.models))
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ApiError(400, "'models' must be a non-empty list of model names")
        for n in names:
            _model({"model": n}, explorer)
        results = await batcher.submit(image, names)
        return JSON({"input": encode_image(image), "models": results})

    async def descend(request: Request):
        d = await read_json(request, {"model", "image", "steps", "step_size", "preprocess"})
        name = _model(d, explorer)
        image = _drawing(d, _bool(d, "preprocess", True))
        steps = _number(d, "steps", 1, LIMITS["descend_steps"], 8, integer=True)
        step_size = _number(d, "step_size", 1e-4, 1.0, 0.05)
        return JSON(await compute(explorer.descend, name, image, steps, step_size))

    async def digit(request: Request):
        d = await read_json(request, {"model", "index"})
        m = explorer.models[_model(d, explorer)]
        index = _number(d, "index", 0, len(m.images) - 1, 0, integer=True)
        return JSON({"index": index, "label": int(m.labels[index]), "image": encode_image(m.images[index] / 255)})

    async def repair(request: Request):
        d = await read_json(request, {"model", "index", "rate", "seed"})
        name = _model(d, explorer, "dae")
        n = len(explorer.models[name].images)
        index = _number(d, "index", 0, n - 1, random.randrange(n), integer=True)
        rate = _number(d, "rate", 0.05, 0.95, 0.5)
        seed = _number(d, "seed", 0, 2**31 - 1, 0, integer=True)
        return JSON(await compute(explorer.repair, name, index, rate, seed))

    async def latent(request: Request):
        if request.path_params["model"] in ("decode", "interpolate"):  # a GET where a POST belongs, not a model
            raise ApiError(405, f"GET is not allowed on {request.url.path!r}; GET /api lists the methods")
        name = _model({"model": request.path_params["model"]}, explorer, "latent")
        return JSON(explorer.latent_points(name))

    async def latent_decode(request: Request):
        d = await read_json(request, {"model", "x", "y"})
        name = _model(d, explorer, "latent")
        x, y = _number(d, "x", -1e6, 1e6), _number(d, "y", -1e6, 1e6)
        return JSON(await compute(explorer.latent_decode, name, x, y))

    async def interpolate(request: Request):
        d = await read_json(request, {"model", "a", "b", "steps"})
        name = _model(d, explorer, "latent")
        n = len(explorer.models[name].images)
        a, b = _number(d, "a", 0, n - 1, integer=True), _number(d, "b", 0, n - 1, integer=True)
        steps = _number(d, "steps", 2, LIMITS["walk_steps"], 8, integer=True)
        return JSON(await compute(explorer.interpolate, name, a, b, steps))

    def _label(d: dict, name: str) -> int | None:
        """The optional digit class of a conditional model's samples; a label for another model is a 400."""
        if d.get("label") is None:
            return None
        if not explorer.get(name).describe()["conditional"]:
            raise ApiError(400, f"model {name!r} is not conditional: it takes no 'label'")
        return _number(d, "label", 0, 9, integer=True)

    async def sample(request: Request):
        d = await read_json(request, {"model", "n", "seed", "label"})
        name = _model(d, explorer, "sample")
        n = _number(d, "n", 1, LIMITS["samples"], 16, integer=True)
        seed = _number(d, "seed", 0, 2**31 - 1, 0, integer=True)
        return JSON(await compute(explorer.sample, name, n, seed, _label(d, name)))

    async def walk(request: Request):
        d = await read_json(request, {"model", "seed", "steps", "scale", "label"})
        name = _model(d, explorer, "sample")
        seed = _number(d, "seed", 0, 2**31 - 2, 0, integer=True)  # the direction u is drawn from seed + 1
        steps = _number(d, "steps", 2, LIMITS["walk_steps"], 9, integer=True)
        scale = _number(d, "scale", 0.0, 10.0, 3.0)
        return JSON(await compute(explorer.walk, name, seed, steps, scale, _label(d, name)))

    async def watch(request: Request):
        return JSON(await compute(explorer.watch_state))

    async def watch_figure(request: Request):
        run, name = request.path_params["run"], request.path_params["figure"]
        if run not in explorer.watched:
            raise ApiError(404, f"no watched run {run[:60]!r}; watched: {', '.join(explorer.watched) or 'none'}")
        try:
            data = await compute(explorer.figure, run, name)
        except (KeyError, OSError):
            raise ApiError(404, f"run {run!r} has no figure {name[:60]!r}; /api/watch lists them") from None
        return Response(data, media_type="image/png")

    async def api_error(request: Request, exc: ApiError):
        # A body too big or too slow is not read to its end: the connection closes, no one trickles on it.
        close = {"connection": "close"} if exc.status in (408, 413) else None
        return Response(_error_body(str(exc)), status_code=exc.status, media_type="application/json", headers=close)

    async def http_error(request: Request, exc: HTTPException):
        why = {404: f"no such endpoint {request.url.path[:80]!r}; GET /api lists them",
               405: f"{request.method} is not allowed on {request.url.path[:80]!r}; GET /api lists the methods"}
        return Response(_error_body(why.get(exc.status_code, exc.detail)), status_code=exc.status_code,
                        media_type="application/json")

    async def server_error(request: Request, exc: Exception):
        traceback.print_exception(exc, file=sys.stderr)
        return Response(_error_body(f"internal error: {type(exc).__name__}: {str(exc)[:200]}"), status_code=500,
                        media_type="application/json")

    routes = [
        Route("/", page), Route("/static/{name}", static_file),
        Route("/api", api_index), Route("/api/models", models),
        Route("/api/draw", draw, methods=["POST"]), Route("/api/descend", descend, methods=["POST"]),
        Route("/api/digit", digit, methods=["POST"]), Route("/api/repair", repair, methods=["POST"]),
        Route("/api/latent/decode", latent_decode, methods=["POST"]),
        Route("/api/latent/interpolate", interpolate, methods=["POST"]),
        Route("/api/latent/{model}", latent),
        Route("/api/sample", sample, methods=["POST"]), Route("/api/walk", walk, methods=["POST"]),
        Route("/api/watch", watch), Route("/api/watch/{run}/{figure}", watch_figure),
    ]
    app = Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error,
                                                       Exception: server_error})
    return Guard(app, hosts)


# -- the connection --------------------------------------------------------------------------------------------
def guarded_protocol():
    """uvicorn's HTTP protocol (on the httptools parser) with the limits on a request that it lacks: its line and
    headers at most ``MAX_HEAD`` bytes (else 431), and the whole request, from its first byte (or from the
    connection, for the first one), within ``REQUEST_SECONDS`` (else 408 and the connection closes). Without
    them one client sending a header without end held the server's memory and stalled every other request,
    and clients that sent nothing, or never finished, held their connections (and file descriptors) for ever.
    uvicorn's own choice of protocol where httptools is missing."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class GuardedProtocol(HttpToolsProtocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._in_head, self._head_bytes, self._head_tail, self._deadline = True, 0, b"", None
            self._arm()  # a connection that never sends a byte is closed too

        def data_received(self, data: bytes) -> None:
            # Measured before the parser sees the bytes: a whole oversized head arriving in one piece was parsed
            # and answered before a count taken after it could refuse it.
            if self._in_head:
                seen = self._head_tail + data
                end = seen.find(b"\r\n\r\n")  # the head ends in this piece (or across the last one and it)
                self._head_bytes += len(data) if end < 0 else end + 4 - len(self._head_tail)
                self._head_tail = seen[-3:]
                if self._head_bytes > MAX_HEAD:
                    self._refuse(431, "Request Header Fields Too Large",
                                 f"the request's line and headers are over the limit of {MAX_HEAD} bytes")
                    return
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:  # bytes that are not HTTP: answered in JSON as the rest
            self._refuse(400, "Bad Request", "the request is not valid HTTP/1.1 (its line or headers could not be "
                         "parsed)")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes, self._head_tail = True, 0, b""  # the next request on this connection
            self._disarm()  # between requests, uvicorn's keep-alive limit holds

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _unsupported_upgrade_warning(self) -> None:
            pass  # no WebSocket here: such a request is answered as a plain one, without advice to install one

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(REQUEST_SECONDS, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.cycle is not None and not self.cycle.response_complete or self.pipeline:
                self._arm()  # still answering an earlier request here, and reading nothing meanwhile: wait
                return
            self._refuse(408, "Request Timeout", f"the request did not arrive within {REQUEST_SECONDS:.0f} s")

        def _refuse(self, status: int, reason: str, message: str) -> None:
            self._disarm()
            if self.transport.is_closing():
                return
            body = _error_body(message)
            self.transport.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                                 f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
            self.transport.close()

    return GuardedProtocol


# -- the command ------------------------------------------------------------------------------------------------
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run_dirs=(), watch=(), host: str = "127.0.0.1", port: int = 8000, allow_hosts=(),
          test_limit: int = 1000, threads: int = 1, device: str = "cpu") -> int:
    """Load the runs, listen on ``host:port`` (0: a free port), print the address and serve until Ctrl-C."""
    import torch
    import uvicorn

    if threads < 1:
        raise GenlabError(f"--threads must be at least 1, got {threads}")
    if not host.strip():
        raise GenlabError("--host must be an address to listen on (127.0.0.1: this machine only; 0.0.0.0: every "
                          "interface), got an empty one")
    if not 0 <= port <= 65535:
        raise GenlabError(f"--port must be from 0 to 65535 (0: any free one), got {port}")
    torch.set_num_threads(threads)  # small requests: more threads add overhead, not speed
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections queue from the moment the address is printed
    except OSError as e:
        sock.close()
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            raise GenlabError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port (0: any free "
                              "one)") from None
        raise GenlabError(f"cannot listen on {host}:{port} ({e.strerror}); --host must be an address of this machine "
                          "(127.0.0.1: this machine only; 0.0.0.0: every interface), without brackets or port") from None
    port = sock.getsockname()[1]
    try:  # the port is held while the runs load, so a bad --port fails before the wait
        explorer = Explorer(run_dirs, watch, test_limit=test_limit, device=device,
                            say=lambda note: print(f"genlab serve: {one_line(note)}", file=sys.stderr))
    except BaseException:
        sock.close()
        raise
    if not _is_loopback(host):
        print(f"genlab serve: warning: listening on {host}, reachable from other machines; the explorer has no "
              "login. Requests must name the address in their Host header (add names with --allow-host)",
              file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    # uvicorn's warnings are of the clients' requests (each answered 400 already): a client sending garbage
    # filled the server's output with "WARNING:  Invalid HTTP request received.", a line a request.
    config = uvicorn.Config(build_app(explorer, allowed_hosts(host, port, allow_hosts)), log_level="error",
                            access_log=False, lifespan="off", timeout_keep_alive=30, http=guarded_protocol(),
                            ws="none")
    names = ", ".join([*explorer.models, *(f"{w} (watched)" for w in explorer.watched)])
    print(f"genlab serve: http://{shown}:{port}/  ({names}; Ctrl-C stops)", flush=True)
    # SIGTERM in the instant before uvicorn takes its signals over stops the start-up (genlab.cli's handler)
    # and leaves uvicorn's coroutine unstarted: no warning about it, the one line of the stop is enough.
    warnings.filterwarnings("ignore", message="coroutine 'Server.serve' was never awaited")
    _hangs_up_too(uvicorn.Server)(config).run(sockets=[sock])
    return 0


def _hangs_up_too(server_class):
    """``server_class`` (uvicorn's Server) stopping on SIGHUP (a closed terminal) as it stops on SIGTERM: shut
    down, then the signal raised again for genlab's own line and status. uvicorn captures SIGINT and SIGTERM
    only, and genlab's handler, raising inside the event loop, was caught there: the explorer printed a
    traceback and went on serving, holding its port."""

    class Server(server_class):
        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():  # which raises the captured signals again as it ends
                hang_up = threading.current_thread() is threading.main_thread() and \
                    signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN
                old = signal.signal(signal.SIGHUP, self.handle_exit) if hang_up else None
                try:
                    yield
                finally:
                    if hang_up:
                        signal.signal(signal.SIGHUP, old)

    return Server if hasattr(server_class, "capture_signals") else server_class
