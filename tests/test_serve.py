"""genlab serve: the MNIST-style preprocessing against hand examples, the one-pass energies against the models',
and a real server process (uvicorn on a free 127.0.0.1 port, five tiny runs and a watched one) driven by
hostile requests, by the JSON API and by Debian's headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.errors import GenlabError
from genlab.serve.explorer import decode_image
from genlab.serve.preprocess import mnist_style

pytestmark = pytest.mark.slow  # real server processes and a real browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MODELS = ("ae", "dae", "vae", "ebgan", "dcgan")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def _need_server_stack():
    for name in ("starlette", "uvicorn"):
        try:
            __import__(name)
        except ModuleNotFoundError:
            if os.environ.get("CI"):
                pytest.fail(f"CI installs .[test], which includes {name}")
            pytest.skip(f"{name} is not installed (pip install 'genlab[serve]')")


# -- preprocessing ----------------------------------------------------------------------------------------------
def test_mnist_style_scales_the_bounding_box_to_20_pixels_and_centres_it():
    # A 10 x 4 bar anywhere on a 100 x 100 canvas becomes a 20 x 8 bar; its centre of mass goes to (13.5, 13.5),
    # so it covers rows 4..23 and columns 10..17.
    canvas = np.zeros((100, 100), np.float32)
    canvas[70:80, 3:7] = 0.8
    expected = np.zeros((28, 28), np.float32)
    expected[4:24, 10:18] = 1.0
    np.testing.assert_allclose(mnist_style(canvas), expected, atol=1e-6)
    # Shrinking works the same way: a 200 x 80 block becomes 20 x 8.
    big = np.zeros((300, 300), np.float32)
    big[50:250, 100:180] = 1.0
    np.testing.assert_allclose(mnist_style(big), expected, atol=1e-6)


def test_mnist_style_centres_by_mass_not_by_box():
    # A "Γ": a 20 x 2 stem and a 2 x 8 bar to its right at the top; bounding box 20 x 10, so no scaling.
    # Mass: 40 stem pixels at (9.5, 0.5), 16 bar pixels at (0.5, 5.5): centre (6.93, 1.93), moved to
    # (13.5, 13.5) by whole pixels: down 7 (round 6.57), right 12 (round 11.57).
    canvas = np.zeros((60, 60), np.float32)
    canvas[30:50, 5:7] = 1.0
    canvas[30:32, 7:15] = 1.0
    out = mnist_style(canvas)
    expected = np.zeros((28, 28), np.float32)
    expected[7:27, 12:14] = 1.0
    expected[7:9, 14:22] = 1.0
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_mnist_style_refuses_a_blank_drawing_and_takes_a_grey_background_for_background():
    # A canvas all of one faint grey, or all ink, became a solid 20 x 20 block scored as a digit.
    for canvas in (np.zeros((56, 56)), np.full((56, 56), 1 / 255), np.ones((28, 28))):
        with pytest.raises(GenlabError, match="blank"):
            mnist_style(canvas)
    # A digit on a page of grey (a scan; "Draw it" of such a data set's test image) is centred as on black.
    digit = np.zeros((56, 56), np.float32)
    digit[10:40, 20:26] = 1.0
    np.testing.assert_allclose(mnist_style(digit * 0.8 + 0.1), mnist_style(digit), atol=1e-6)


def test_only_the_served_address_is_a_valid_host():
    _need_server_stack()
    from genlab.serve.app import _is_loopback, allowed_hosts

    assert allowed_hosts("127.0.0.1", 8000) == {"127.0.0.1:8000", "localhost:8000"}
    assert allowed_hosts("::1", 8000) == {"[::1]:8000"}
    assert allowed_hosts("0.0.0.0", 80, ["lab.example"]) == {"0.0.0.0:80", "0.0.0.0", "lab.example:80", "lab.example"}
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.5") and not _is_loopback("example.org")


def test_drawings_arriving_a_few_loop_turns_apart_share_one_pass():
    # Clients answered by one pass send their next drawings a few event-loop turns apart; the batcher lets
    # them join before the pass starts, and a drawing that comes after GATHER_S waits for the next pass.
    _need_server_stack()
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from genlab.serve.app import DrawBatcher

    class Recorder:
        def __init__(self):
            self.passes = []

        def draw(self, inputs, wanted):
            self.passes.append(len(inputs))
            return [{"n": float(x[0, 0])} for x in inputs]

    async def scenario(late_s):
        recorder = Recorder()
        batcher = DrawBatcher(recorder, ThreadPoolExecutor(1))

        async def client(i, turns):
            for _ in range(turns):
                await asyncio.sleep(0)
            return await batcher.submit(np.full((28, 28), float(i), np.float32), ["m"])

        async def late():
            await asyncio.sleep(late_s)
            return await batcher.submit(np.full((28, 28), 9.0, np.float32), ["m"])

        results = await asyncio.gather(*(client(i, i) for i in range(4)), late())
        return recorder.passes, [r["n"] for r in results]

    passes, answers = asyncio.run(scenario(late_s=0.05))
    assert answers == [0.0, 1.0, 2.0, 3.0, 9.0]  # each drawing gets its own answer
    assert passes == [4, 1]  # four drawings one to three turns apart in one pass; the late one alone


# -- one pass per model gives the models' own energies -------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS + ("cvae", "cdcgan"))
def test_one_pass_energy_and_reconstruction_equal_the_models_own(name):
    from genlab.data import load_dataset
    from genlab.data.batching import to_pixels
    from genlab.models import MODELS as REGISTRY, build

    torch.manual_seed(0)
    model = build(name, REGISTRY[name].Config()).eval()
    x = to_pixels(load_dataset("mnist-5k", "test").images[:6], model.pixel_range)
    with torch.inference_mode():
        energy, recon = model.energy_and_reconstruction(x)
        torch.testing.assert_close(energy, model.energy(x), rtol=1e-5, atol=1e-4)
        if not model.can_reconstruct:
            assert recon is None
        else:
            torch.testing.assert_close(recon, model.reconstruct(x), rtol=1e-5, atol=1e-5)


# -- a real server -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Five one-epoch runs on 256 digits of mnist-5k (seconds), and a copy of the EBGAN run to watch."""
    from genlab.config import TrainConfig
    from genlab.models import MODELS as REGISTRY
    from genlab.train import train

    root = tmp_path_factory.mktemp("serve")
    overrides = {"ae": {"latent_dim": 30}, "dae": {"latent_dim": 64}, "vae": {"tsne_epochs": ""},
                 "ebgan": {"ndf": 16, "ngf": 32}, "dcgan": {"ndf": 16, "ngf": 32}}
    torch.manual_seed(0)
    for name in MODELS:
        cfg = REGISTRY[name].Config(**overrides[name])
        train(name, cfg, TrainConfig(dataset="mnist-5k", epochs=1, limit=256, batch_size=64, eval_limit=100,
                                     figures=False, progress=False, out=str(root / "runs" / name), device="cpu"))
    watched = root / "watched"
    shutil.copytree(root / "runs" / "ebgan", watched)
    (root / "live").mkdir()  # a run that a test trains while the server watches
    return root / "runs", watched


@contextmanager
def running_server(args: list[str], log: Path):
    """``genlab serve ARGS --port 0`` in a subprocess: yields (port, env) once it prints its address."""
    _need_server_stack()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "GENLAB_OFFLINE": "1"}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "genlab.cli", "serve", *args, "--port", "0"],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    lines = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=120)
    if not lines or not lines[0].startswith("genlab serve: http://127.0.0.1:"):
        proc.kill()
        pytest.fail(f"the server did not start: {lines} {log.read_text()[-2000:]}")
    try:
        yield int(lines[0].split()[2].rstrip("/").rsplit(":", 1)[1]), env
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(runs):
    run_root, watched = runs
    log = run_root.parent / "server.log"
    with running_server([str(run_root), "--watch", str(watched), "--watch", str(run_root.parent / "live"),
                         "--test-limit", "200"], log) as (port, env):
        yield {"port": port, "base": f"http://127.0.0.1:{port}", "log": log, "watched": watched, "runs": run_root,
               "live": run_root.parent / "live", "env": env}


def raw(port: int, request: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """Send bytes as they are; return (status, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed before reading it all
            pass
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = [int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
                          if k.strip().lower() == b"content-length"]
                if length and len(body) >= length[0]:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def http(port: int, method: str, path: str, body: bytes | dict | None = None, host: str | None = None,
         headers: dict | None = None) -> tuple[int, bytes]:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))


def digit(i: int = 0, side: int = 56) -> np.ndarray:
    """A test digit, off-centre on a side x side canvas, uint8 (a stand-in for a drawing)."""
    from genlab.data import load_dataset

    img = load_dataset("mnist-5k", "test").images[i].numpy()
    if side == 28:
        return img
    canvas = np.zeros((side, side), np.uint8)
    canvas[3:31, side - 30:side - 2] = img
    return canvas


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.uint8).tobytes()).decode()


def good_draw(port: int) -> dict:
    status, body = http(port, "POST", "/api/draw", {"image": b64(digit())})
    assert status == 200, body
    answer = json.loads(body)
    assert set(answer["models"]) == set(MODELS)
    return answer


def hostile_requests(server) -> list[tuple[str, bytes]]:
    port = server["port"]
    host = f"127.0.0.1:{port}"
    image = b64(digit())
    watched = server["watched"].name
    def post_bytes(path: str, data: bytes) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data

    def post(path: str, text: str) -> bytes:
        return post_bytes(path, text.encode())

    def get(path: str, h: str = host) -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n".encode()

    nested = "[" * 20000 + "]" * 20000
    chunk = b"x" * 4096
    chunked = (f"POST /api/draw HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               .encode() + b"".join(b"1000\r\n" + chunk + b"\r\n" for _ in range(40)) + b"0\r\n\r\n")
    return [
        ("wrong Host (DNS rebinding)", get("/api/models", f"evil.example:{port}")),
        ("right name, wrong port in Host", get("/api/models", "127.0.0.1:1")),
        ("no Host header", b"GET /api/models HTTP/1.0\r\n\r\n"),
        ("two Host headers", f"GET /api/models HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n\r\n".encode()),
        ("a gzip body", (f"POST /api/draw HTTP/1.1\r\nHost: {host}\r\nContent-Encoding: gzip\r\n"
                         "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}").encode()),
        ("another site's Origin", (f"POST /api/draw HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\n"
                                   "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n"
                                   "\r\n{}").encode()),
        ("two Origin headers, the first its own", (f"POST /api/draw HTTP/1.1\r\nHost: {host}\r\n"
                                                   f"Origin: http://{host}\r\nOrigin: http://evil.example\r\n"
                                                   "Content-Type: application/json\r\nContent-Length: 2\r\n"
                                                   "Connection: close\r\n\r\n{}").encode()),
        ("a 10 MB body announced", (f"POST /api/draw HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10000000\r\n"
                                    "Connection: close\r\n\r\n").encode() + b"x" * 1000),
        ("a 160 KiB chunked body", chunked),
        ("a test digit past the end", post("/api/digit", '{"model": "ae", "index": 100000}')),
        ("a test digit of no model", post("/api/digit", '{"model": "nope", "index": 1}')),
        ("not JSON", post("/api/draw", "hello")),
        ("invalid UTF-8", post_bytes("/api/draw", b'{"image": "\xff\xfe"}')),
        ("a JSON array", post("/api/draw", "[1, 2, 3]")),
        ("20,000 nested brackets", post("/api/draw", nested)),
        ("NaN pixels", post("/api/draw", '{"image": [' + ",".join(["NaN"] * 784) + "]}")),
        ("infinite pixels", post("/api/draw", '{"image": [' + ",".join(["1e999"] * 784) + "]}")),
        ("784 string pixels", post("/api/draw", json.dumps({"image": ["0"] * 784}))),
        ("pixels above 255", post("/api/draw", json.dumps({"image": [300] * 784}))),
        ("100 pixels (not square)", post("/api/draw", json.dumps({"image": [1] * 100}))),
        ("a 120 x 120 drawing", post("/api/draw", json.dumps({"image": b64(np.ones((120, 120)))}))),
        ("a 20 x 20 drawing", post("/api/draw", json.dumps({"image": b64(np.ones((20, 20)))}))),
        ("invalid base64", post("/api/draw", json.dumps({"image": "!!!not base64!!!"}))),
        ("a blank drawing", post("/api/draw", json.dumps({"image": b64(np.zeros((56, 56)))}))),
        ("ink of 1e-40 (was scaled up into a solid block)", post("/api/draw", json.dumps({"image": [1e-40] * 784}))),
        ("one pixel of 15 of 255, nothing to see", post("/api/draw", json.dumps({"image": [15] + [0] * 783}))),
        ("all ink (a solid block)", post("/api/draw", json.dumps({"image": [255] * 784}))),
        ("56 x 56 without preprocessing", post("/api/draw", json.dumps({"image": image, "preprocess": False}))),
        ("preprocess not a bool", post("/api/draw", json.dumps({"image": image, "preprocess": "yes"}))),
        ("unknown model", post("/api/draw", json.dumps({"image": image, "models": ["gpt"]}))),
        ("models not a list", post("/api/draw", json.dumps({"image": image, "models": "ae"}))),
        ("unknown field", post("/api/draw", json.dumps({"image": image, "path": "/etc/passwd"}))),
        ("a path as model", post("/api/descend", json.dumps({"model": "../../etc/passwd", "image": image}))),
        ("too many steps", post("/api/descend", json.dumps({"model": "ae", "image": image, "steps": 10000}))),
        ("zero steps", post("/api/descend", json.dumps({"model": "ae", "image": image, "steps": 0}))),
        ("steps as a bool", post("/api/descend", json.dumps({"model": "ae", "image": image, "steps": True}))),
        ("fractional steps", post("/api/descend", json.dumps({"model": "ae", "image": image, "steps": 2.5}))),
        ("negative step size", post("/api/descend", json.dumps({"model": "ae", "image": image, "step_size": -1}))),
        ("Infinity step size", post("/api/descend", '{"model": "ae", "image": "%s", "step_size": Infinity}' % image)),
        ("repair with an AE", post("/api/repair", json.dumps({"model": "ae", "index": 0}))),
        ("test digit out of range", post("/api/repair", json.dumps({"model": "dae", "index": 10 ** 9}))),
        ("drop rate 1", post("/api/repair", json.dumps({"model": "dae", "rate": 1.0}))),
        ("negative seed", post("/api/repair", json.dumps({"model": "dae", "seed": -5}))),
        ("100,000 samples", post("/api/sample", json.dumps({"model": "dcgan", "n": 100000}))),
        ("samples of an AE", post("/api/sample", json.dumps({"model": "ae", "n": 4}))),
        ("a 1,000-step walk", post("/api/walk", json.dumps({"model": "ebgan", "steps": 1000}))),
        ("interpolation of 1 step", post("/api/latent/interpolate", json.dumps({"model": "vae", "a": 0, "b": 1,
                                                                                 "steps": 1}))),
        ("latent decode at a string", post("/api/latent/decode", json.dumps({"model": "vae", "x": "a", "y": 0}))),
        ("latent map of an AE", get("/api/latent/ae")),
        ("latent map of a path", get("/api/latent/..%2F..%2Fetc%2Fpasswd")),
        ("a watched figure by path", get(f"/api/watch/{watched}/..%2Fconfig.json")),
        ("a watched figure by absolute path", get(f"/api/watch/{watched}/%2Fetc%2Fpasswd")),
        ("an unwatched run", get("/api/watch/secret/x.png")),
        ("a static file by path", get("/static/..%2Fapp.py")),
        ("an unknown endpoint", get("/api/nope")),
        ("GET on a POST endpoint", get("/api/draw")),
        ("no body", post("/api/draw", "")),
        # Integers of hundreds of digits: JSON has them, floats do not (they were a 500 of OverflowError).
        ("a 401-digit sample count", post("/api/sample", '{"model": "dcgan", "n": 1%s}' % ("0" * 400))),
        ("a 401-digit step size", post("/api/descend", '{"model": "ae", "image": "%s", "step_size": 1%s}'
                                       % (image, "0" * 400))),
        ("a 401-digit latent x", post("/api/latent/decode", '{"model": "vae", "x": -1%s, "y": 0}' % ("0" * 400))),
        ("a 401-digit pixel", post("/api/draw", '{"image": [1%s%s]}' % ("0" * 400, ", 0" * 783))),
        ("a 5,000-digit seed", post("/api/walk", '{"model": "ebgan", "seed": 1%s}' % ("0" * 5000))),
        # Not HTTP: each wrote uvicorn's own "WARNING:  Invalid HTTP request received." into the server's log.
        ("two lengths", f"POST /api/draw HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
                        "Connection: close\r\n\r\n{}".encode()),
        ("a negative length", f"POST /api/draw HTTP/1.1\r\nHost: {host}\r\nContent-Length: -1\r\n\r\n".encode()),
    ]


def test_hostile_requests_get_a_4xx_and_one_line_of_json_and_the_server_keeps_serving(server):
    port = server["port"]
    cases = hostile_requests(server)
    assert len(cases) >= 30
    failures = []
    for what, request in cases:
        status, body = raw(port, request)
        line = body.decode("utf-8", "replace")
        try:
            error = json.loads(line)["error"]
        except (ValueError, KeyError, TypeError):
            error = None
        if not (400 <= status < 500 and isinstance(error, str) and error and "\n" not in line.strip()):
            failures.append(f"{what}: {status} {line[:200]!r}")
        good_draw(port)  # the next good request still succeeds
    assert failures == []
    log = server["log"].read_text()
    assert "Traceback" not in log and "Invalid HTTP request" not in log, log[-2000:]


def test_a_get_where_a_post_belongs_is_405_not_an_unknown_model(server):
    # GET /api/latent/decode matched /api/latent/{model}: "unknown model 'decode'".
    for path in ("/api/latent/decode", "/api/latent/interpolate", "/api/draw"):
        status, body = http(server["port"], "GET", path)
        assert status == 405 and json.loads(body)["error"].startswith("GET is not allowed on"), (path, status, body)


def test_draw_answers_with_the_models_own_energies(server, runs):
    from genlab.checkpoint import load_run
    from genlab.data.batching import to_pixels, to_uint8

    status, body = http(server["port"], "POST", "/api/draw", {"image": b64(digit(3, 28)), "preprocess": False})
    assert status == 200
    answer = json.loads(body)
    assert np.array_equal(decode_image(answer["input"]), digit(3, 28).astype(np.float32) / 255)
    x_u8 = torch.from_numpy(digit(3, 28))[None]
    for name in MODELS:
        run = load_run(runs[0] / name)
        x = to_pixels(x_u8, run.model.pixel_range)
        with torch.inference_mode():
            expected = float(run.model.energy(x)[0])
            got = answer["models"][name]
            assert got["energy"] == pytest.approx(expected, rel=1e-4, abs=1e-4), name
            assert 0.0 <= got["percentile"] <= 100.0
            if name != "dcgan":
                recon = to_uint8(run.model.reconstruct(x), run.model.pixel_range)[0].numpy()
                sent = np.frombuffer(base64.b64decode(got["reconstruction"]), np.uint8).reshape(28, 28)
                assert np.abs(sent.astype(int) - recon.astype(int)).max() <= 1, name
            else:
                assert "reconstruction" not in got
    # Pixels that are not whole numbers are scored as the 8-bit input the answer shows (the page's energies
    # once differed from genlab energy's for a PNG of that input).
    soft = (digit(3, 28).astype(np.float64) * 0.6 + 0.3).reshape(-1).tolist()
    status, body = http(server["port"], "POST", "/api/draw", {"image": soft, "preprocess": False})
    answer = json.loads(body)
    shown = torch.from_numpy(np.frombuffer(base64.b64decode(answer["input"]), np.uint8).reshape(1, 28, 28).copy())
    for name in MODELS:
        run = load_run(runs[0] / name)
        with torch.inference_mode():
            expected = float(run.model.energy(to_pixels(shown, run.model.pixel_range))[0])
        assert answer["models"][name]["energy"] == pytest.approx(expected, rel=1e-5, abs=1e-5), name


def test_repair_matches_the_inpainting_benchmark(server, runs):
    from genlab.checkpoint import load_run
    from genlab.data import load_dataset
    from genlab.metrics.inpainting import inpaint_all, psnr

    status, body = http(server["port"], "POST", "/api/repair", {"model": "dae", "index": 7, "rate": 0.5, "seed": 3})
    assert status == 200, body
    answer = json.loads(body)
    images = load_dataset("mnist-5k", "test").images[7:8]
    _, outs = inpaint_all(load_run(runs[0] / "dae").model, images, 0.5, seed=3)
    clean = images.numpy() / 255
    assert set(answer["repairs"]) == {"dae", "telea", "ns"}
    for method, out in outs.items():
        assert answer["repairs"][method]["psnr"] == pytest.approx(float(psnr(out, clean)[0]), abs=1e-9)


def test_descend_lowers_the_energy_and_samples_and_walks_are_bounded(server):
    port = server["port"]
    status, body = http(port, "POST", "/api/descend", {"model": "dae", "image": b64(digit(1)), "steps": 6,
                                                      "step_size": 0.02})
    assert status == 200, body
    answer = json.loads(body)
    energies = answer["energies"]
    assert 2 <= len(answer["frames"]) == len(energies) <= 7 and energies[-1] < energies[0]
    assert all(b <= a for a, b in zip(energies, energies[1:]))  # every frame downhill
    for name in ("vae", "ebgan", "dcgan"):
        status, body = http(port, "POST", "/api/sample", {"model": name, "n": 64, "seed": 5})
        assert status == 200 and len(json.loads(body)["images"]) == 64
        status, body = http(port, "POST", "/api/walk", {"model": name, "steps": 16})
        assert status == 200 and len(json.loads(body)["energies"]) == 16
    # fixed noise: the same seed gives the same samples
    assert http(port, "POST", "/api/sample", {"model": "dcgan", "n": 4, "seed": 9}) == \
        http(port, "POST", "/api/sample", {"model": "dcgan", "n": 4, "seed": 9})


def test_conditional_models_take_a_digit_and_keep_it_along_the_style_walk(tmp_path):
    # cvae and cdcgan in the generator panel: a digit picker (``label``) and a walk in z with the digit kept.
    from genlab.config import TrainConfig
    from genlab.models import MODELS as REGISTRY
    from genlab.train import train

    for name, cfg, classes in (("cvae", {}, ""), ("cdcgan", {"ndf": 8, "ngf": 8}, "1,3,7")):  # cdcgan: 3 classes
        train(name, REGISTRY[name].Config(**cfg), TrainConfig(dataset="mnist-5k", epochs=1, limit=128, batch_size=64,
              eval_limit=64, figures=False, progress=False, out=str(tmp_path / "runs" / name), device="cpu",
              classes=classes))
    with running_server([str(tmp_path / "runs"), "--test-limit", "50"], tmp_path / "server.log") as (port, _):
        models = {m["name"]: m for m in json.loads(http(port, "GET", "/api/models")[1])["models"]}
        assert all(models[n]["conditional"] and "nz" in models[n] for n in ("cvae", "cdcgan"))
        for name in ("cvae", "cdcgan"):
            one = json.loads(http(port, "POST", "/api/sample", {"model": name, "n": 4, "seed": 5, "label": 1})[1])
            seven = json.loads(http(port, "POST", "/api/sample", {"model": name, "n": 4, "seed": 5, "label": 7})[1])
            assert len(one["images"]) == 4 and one["images"] != seven["images"]  # same noise, another digit
            status, body = http(port, "POST", "/api/walk", {"model": name, "seed": 5, "steps": 5, "label": 3})
            assert status == 200 and len(json.loads(body)["images"]) == 5
            for bad in ({"label": 12}, {"label": "7"}, {"label": 2.5}):
                status, body = http(port, "POST", "/api/sample", {"model": name, "n": 4, **bad})
                assert status == 400 and "label" in json.loads(body)["error"]
        assert models["cdcgan"]["classes"] == [1, 3, 7] and models["cvae"]["classes"] == list(range(10))
        status, body = http(port, "POST", "/api/sample", {"model": "cdcgan", "n": 4, "label": 5})  # a slot never trained
        assert status == 400 and "learned the classes 1, 3 and 7 only" in json.loads(body)["error"]
        if CHROMIUM is not None:  # (test_page_in_chromium says when it is missing)
            # In a browser: no VAE and no DAE here, so those panels show their note and none of their controls
            # (a .row's display once overrode the hidden attribute).
            sync_api = pytest.importorskip("playwright.sync_api")
            with sync_api.sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
                try:
                    page = browser.new_page()
                    errors = []
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.goto(f"http://127.0.0.1:{port}/")
                    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                    page.wait_for_function("() => document.querySelectorAll('.gen-card .grid figure').length === 32")
                    shown = {sel: page.is_visible(sel) for sel in ("#latent-none", "#latent-box", "#repair-none",
                                                                    "#repair-controls", "#draw-box")}
                    assert shown == {"#latent-none": True, "#latent-box": False, "#repair-none": True,
                                     "#repair-controls": False, "#draw-box": True}
                    picker = ".gen-card[data-model='{}'] select.digit option"
                    assert page.eval_on_selector_all(picker.format("cdcgan"), "os => os.map(o => o.value)") == \
                        ["", "1", "3", "7"]  # the digit picker offers the classes the run learned
                    assert len(page.eval_on_selector_all(picker.format("cvae"), "os => os")) == 11
                finally:
                    browser.close()
            assert errors == []


def test_watch_follows_a_real_training_run(server):
    # genlab train writes into the watched folder while the server runs: its metrics lines and the samples of its
    # latest checkpoint show up in /api/watch.
    port, live = server["port"], server["live"]
    status, body = http(port, "GET", "/api/watch")
    before = next(r for r in json.loads(body)["runs"] if r["name"] == "live")
    assert before["metrics"] == [] and before["samples"] == []
    train = subprocess.run([sys.executable, "-m", "genlab.cli", "train", "dcgan", "--dataset", "mnist-5k",
                            "--epochs", "2", "--limit", "128", "--batch-size", "64", "--eval-limit", "64", "--ndf", "8",
                            "--ngf", "16", "--no-progress", "--out", str(live)],
                           env=server["env"], capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    status, body = http(port, "GET", "/api/watch")
    after = next(r for r in json.loads(body)["runs"] if r["name"] == "live")
    assert [m["epoch"] for m in after["metrics"]] == [1, 2]
    assert after["sample_epoch"] == 2 and len(after["samples"]) == 16
    assert after["figures"]  # the per-epoch energy histograms
    figure = after["figures"][0]["name"]
    status, png = http(port, "GET", f"/api/watch/live/{figure}")
    assert status == 200 and png.startswith(b"\x89PNG")


def test_hostile_files_in_a_watched_run_are_skipped_not_a_500(server):
    # A 100,000-deep line in metrics.jsonl (RecursionError), a key and a figure name that are not valid UTF-8,
    # and a figure caught mid-write (NAME.tmp.png) each made every poll of /api/watch a 500.
    port, watched = server["port"], server["watched"]
    metrics = watched / "metrics.jsonl"
    kept = metrics.read_bytes()
    odd_figures = [watched / "figures" / "half.tmp.png", watched / "figures" / os.fsdecode(b"bad\xff.png"),
                   watched / "figures" / "huge.png"]
    try:
        with open(metrics, "ab") as f:
            f.write(b"[" * 100_000 + b"\n" + b'{"epoch": 9, "\\ud800": 1.0}\n' + b'{"test/loss": 1.0}\n')
        odd_figures[0].parent.mkdir(exist_ok=True)
        for path in odd_figures:
            path.write_bytes(b"\x89PNG")
        os.truncate(odd_figures[2], 2 << 30)  # 2 GB (sparse): it was read whole into the server's memory
        status, body = http(port, "GET", "/api/watch")
        assert status == 200, body
        run = next(r for r in json.loads(body)["runs"] if r["name"] == watched.name)
        assert [m["epoch"] for m in run["metrics"]][-1] == 9  # the line without an epoch is no epoch's
        names = [f["name"] for f in run["figures"]]
        assert "half.tmp.png" not in names and "huge.png" not in names and "bad\ufffd.png" in names
        status, body = http(port, "GET", f"/api/watch/{watched.name}/bad%EF%BF%BD.png")  # as listed, fetched
        assert status == 200 and body == b"\x89PNG"
        status, body = http(port, "GET", f"/api/watch/{watched.name}/huge.png")
        assert status == 404 and "has no figure" in json.loads(body)["error"]
    finally:
        metrics.write_bytes(kept)
        for path in odd_figures:
            path.unlink(missing_ok=True)
    assert "Traceback" not in server["log"].read_text()


def test_a_head_without_end_and_a_request_never_finished_are_refused(server):
    # One client sending a header without end held the server's memory and stalled every other request;
    # clients that never finished their headers or body held their connections for ever (slowloris).
    port = server["port"]
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    endless = socket.create_connection(("127.0.0.1", port), timeout=30)
    endless.sendall(b"GET /api/models HTTP/1.1\r\n" + host + b"X-Big: ")
    with contextlib.suppress(OSError):  # the server closes the connection once it has answered
        for _ in range(4):
            endless.sendall(b"x" * (1 << 20))
    assert endless.recv(100).startswith(b"HTTP/1.1 431 ")
    began = time.monotonic()
    half_head = socket.create_connection(("127.0.0.1", port), timeout=30)
    half_head.sendall(b"GET /api/models HTTP/1.1\r\n" + host + b"X-a: ")
    half_body = socket.create_connection(("127.0.0.1", port), timeout=30)
    half_body.sendall(b"POST /api/draw HTTP/1.1\r\n" + host + b"Content-Length: 6\r\n\r\n{")
    unread_body = socket.create_connection(("127.0.0.1", port), timeout=30)  # a body nobody reads, never finished
    unread_body.sendall(b"GET /api/models HTTP/1.1\r\n" + host + b"Content-Length: 100\r\n\r\n{")
    silent = socket.create_connection(("127.0.0.1", port), timeout=30)  # connects, sends nothing
    assert http(port, "GET", "/api/models")[0] == 200  # the others are served meanwhile
    # Each answered, then closed by the server (until_closed fails on the socket's 30-s timeout otherwise).
    answers = [until_closed(c) for c in (half_head, half_body, unread_body, silent)]
    assert [a[:13] for a in answers] == [b"HTTP/1.1 408 ", b"HTTP/1.1 408 ", b"HTTP/1.1 200 ", b"HTTP/1.1 408 "]
    assert b"did not arrive within 10 s" in answers[0] and 9 < time.monotonic() - began < 25
    assert b"connection: close" in answers[1]  # the app's 408 closes too: no trickling on
    for connection in (endless, half_head, half_body, unread_body, silent):
        connection.close()
    assert http(port, "GET", "/api/models")[0] == 200


def test_an_oversized_head_in_one_piece_and_bytes_that_are_not_http_get_json_refusals(server):
    # A 100 KiB head sent at once was parsed whole before its size was counted, and answered 200; a request line
    # of 100,000 characters and bytes that are not HTTP got uvicorn's plain-text 400.
    port = server["port"]
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    heads = [b"GET /api/models HTTP/1.1\r\n" + host + b"X-Big: " + b"x" * (100 << 10) + b"\r\n\r\n",
             b"GET /api/models?" + b"q" * 100_000 + b" HTTP/1.1\r\n" + host + b"\r\n",
             b"\x16\x03\x01 hello, this is not HTTP\r\n\r\n"]
    answers = []
    for head in heads:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(head)
            answers.append(until_closed(connection))
    assert [a[:13] for a in answers] == [b"HTTP/1.1 431 ", b"HTTP/1.1 431 ", b"HTTP/1.1 400 "]
    for answer in answers:
        head, body = answer.split(b"\r\n\r\n", 1)
        assert b"content-type: application/json" in head and json.loads(body)["error"]
    assert b"not valid HTTP" in answers[2]
    assert http(port, "GET", "/api/models")[0] == 200


def until_closed(connection) -> bytes:
    """Everything a socket receives until the other side closes it."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    return data


def test_numbers_that_are_not_finite_are_null_in_every_answer():
    from genlab.serve.app import JSON

    body = JSON({"energies": [1.5, float("nan"), float("-inf")], "p": {"99": float("inf")}, "n": 3}).body
    assert json.loads(body) == {"energies": [1.5, None, None], "p": {"99": None}, "n": 3}
    assert json.loads(JSON({"\ud800": "a\udcff"}).body) == {"\ud800": "a\udcff"}  # escaped, not a 500


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch, capsys, runs):
    from genlab.cli import main

    monkeypatch.delitem(sys.modules, "genlab.serve.app", raising=False)
    for name in [m for m in sys.modules if m == "starlette" or m.startswith("starlette.")] or ["starlette"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing any of it fails
    assert main(["serve", str(runs[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'genlab[serve]'" in err


@pytest.mark.parametrize("argv, message", [
    ([], "nothing to serve"),
    (["/no/such/run"], "does not exist"),
    (["--port", "70000", "/no/such/run"], "--port"),
    (["--device", "tpu9", "/no/such/run"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--threads", "0", "/no/such/run"], "--threads"),
    (["--watch", str(Path(__file__).parent)], "holds files but no genlab run"),
    # Once misnamed: a file "did not exist", '' served the current folder, a bad --host asked for another --port.
    ([__file__], "is a file, not a run directory"),
    (["--watch", __file__], "is a file, not a folder"),
    ([""], "RUN_DIR is empty"),
    (["--watch", ""], "--watch is empty"),
    (["--host", "no.such.host.invalid", "--port", "0", "/no/such/run"], "--host must be an address of this machine"),
])
def test_serve_bad_arguments_end_with_one_line(argv, message, capsys):
    _need_server_stack()
    from genlab.cli import main

    try:
        status = main(["serve", *argv])
    except SystemExit as e:  # argparse's errors (a flag's range)
        status = e.code
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and message in err, err


# -- the page in a real browser ------------------------------------------------------------------------------------
def _stroke(page, points):
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
    page.mouse.up()


def _card_state(page) -> dict:
    return page.evaluate("""() => Object.fromEntries(Array.from(document.querySelectorAll('.card')).map(c =>
        [c.dataset.model, {energy: c.dataset.energy ?? null, text: c.querySelector('.energy').textContent,
                           recon: c.querySelector('canvas.recon')?.dataset.image ?? null,
                           error: c.querySelector('canvas.err')?.dataset.image ?? null}]))""")


def test_page_in_chromium(server, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's chromium for the explorer test (.ci/run installs it)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    base = server["base"]
    errors, requests = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(base + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)

            # 1. Draw: a vertical stroke, then a different shape; every model answers, and every answer changes.
            _stroke(page, [(140, 40), (140, 240)])
            page.wait_for_function("() => Array.from(document.querySelectorAll('.card')).every(c => c.dataset.energy)"
                                   " && document.querySelector('#input28').dataset.image", timeout=30_000)
            page.wait_for_timeout(300)  # the last throttled draw lands
            first = _card_state(page)
            assert set(first) == set(MODELS)
            page.click("#clear")
            _stroke(page, [(60, 60), (220, 60), (110, 250)])  # a 7
            page.wait_for_function("(old) => Array.from(document.querySelectorAll('.card')).every(c => "
                                   "c.dataset.energy && c.dataset.energy !== old[c.dataset.model].energy)",
                                   arg=first, timeout=30_000)
            page.wait_for_timeout(300)
            second = _card_state(page)
            for name in MODELS:
                assert second[name]["energy"] != first[name]["energy"], name
                assert second[name]["text"] not in ("", "-"), name
                if name != "dcgan":  # DCGAN's energy is its discriminator's: no reconstruction
                    assert first[name]["recon"] and second[name]["recon"] != first[name]["recon"], name
                    assert second[name]["error"], name
            # From the keyboard: a test digit typed in and drawn on the pad gets every model's answer.
            page.click("#clear")
            page.fill("#digit-index", "3")
            page.focus("#digit-draw")
            page.keyboard.press("Enter")
            page.wait_for_function("() => Array.from(document.querySelectorAll('.card')).every(c => c.dataset.energy)"
                                   " && document.querySelector('#input28').dataset.image", timeout=30_000)
            # A request the server refuses is one line in the status (no unhandled rejection); the next good
            # one clears it.
            page.fill("#descend-steps", "0")
            page.click("#descend")
            page.wait_for_function("() => document.querySelector('#status').classList.contains('error')")
            assert "'steps' must be a whole number" in page.text_content("#status")
            page.wait_for_timeout(2000)  # the watched run's polls (every 1.5 s) leave the user's error in place
            assert "'steps' must be a whole number" in page.text_content("#status")
            page.fill("#descend-steps", "8")
            page.select_option("#descend-model", "dae")
            page.click("#descend")
            page.wait_for_function("() => document.querySelectorAll('#descend-frames figure').length >= 2")
            assert not page.eval_on_selector("#status", "s => s.classList.contains('error')")
            # Clear empties every card, gauge and the input.
            page.click("#clear")
            cleared = page.evaluate("""() => Array.from(document.querySelectorAll('.card')).map(c => [
                c.querySelector('.energy').textContent, c.querySelector('.marker').style.left,
                c.querySelector('.gauge-label').textContent.startsWith('test median'), c.dataset.energy ?? null])""")
            assert cleared == [["-", "0px", True, None]] * len(MODELS)
            assert page.eval_on_selector("#input28", "c => c.dataset.image ?? null") is None
            _stroke(page, [(60, 60), (220, 60), (110, 250)])
            page.wait_for_function("() => Array.from(document.querySelectorAll('.card')).every(c => c.dataset.energy)")

            # 2. Corrupt and repair: three repairs, each with its PSNR.
            page.wait_for_function("() => document.querySelectorAll('.repair-item').length === 3")
            psnrs = page.eval_on_selector_all(".repair-item", "els => els.map(e => [e.dataset.method, e.dataset.psnr])")
            assert sorted(m for m, _ in psnrs) == ["dae", "ns", "telea"]
            assert all(5 < float(v) < 60 for _, v in psnrs), psnrs
            captions = page.eval_on_selector_all(".repair-item figcaption", "els => els.map(e => e.textContent)")
            assert all("dB" in t for t in captions)

            # 3. Latent map: hovering decodes; two clicks give an interpolation strip.
            lmap = page.locator("#latent-map")
            lmap.scroll_into_view_if_needed()
            box = lmap.bounding_box()
            seen = set()
            for fx, fy in ((0.2, 0.2), (0.8, 0.8), (0.2, 0.8), (0.8, 0.2), (0.5, 0.5)):
                page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=3)
                page.wait_for_function("() => document.querySelector('#latent-hover').dataset.image", timeout=10_000)
                page.wait_for_timeout(250)
                seen.add(page.eval_on_selector("#latent-hover", "c => c.dataset.image"))
            assert len(seen) >= 2  # the decoded image follows the cursor
            page.mouse.click(box["x"] + 0.2 * box["width"], box["y"] + 0.5 * box["height"])
            page.mouse.click(box["x"] + 0.8 * box["width"], box["y"] + 0.5 * box["height"])
            page.wait_for_function("() => document.querySelectorAll('#latent-strip figure').length === 10")
            page.click("#latent-sample")
            page.wait_for_function("() => document.querySelectorAll('#latent-samples figure').length === 10")

            # 4. Generators: a grid of 16 samples with energies and a walk of 9, for both GANs.
            page.wait_for_function("() => document.querySelectorAll('.gen-card').length === 2 && Array.from("
                                   "document.querySelectorAll('.gen-card .grid')).every(g => g.children.length === 16)")
            seed = page.locator(".gen-card[data-model='dcgan'] input[type=number]")
            seed.fill("2147483647")  # one past the largest seed: said in the status, nothing sent
            seed.dispatch_event("change")
            page.wait_for_function("() => document.querySelector('#status').textContent.includes("
                                   "'the seed must be a whole number from 0 to 2147483646')")

            # 5. Watch training: a new metrics line shows without reloading.
            run_view = ".watch-run[data-run='watched']"
            page.wait_for_function(f"() => document.querySelector(\"{run_view} .epoch\")?.dataset.epochs === '1'",
                                   timeout=15_000)
            with open(server["watched"] / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"epoch": 2, "step": 8, "train/loss": 1.5, "test/loss": 1.25}) + "\n")
            page.wait_for_function(f"() => document.querySelector(\"{run_view} .epoch\").textContent === 'epoch 2'",
                                   timeout=15_000)
            assert page.eval_on_selector_all(f"{run_view} .grid figure", "els => els.length") == 16  # its samples
            page.wait_for_timeout(500)
            page.evaluate("() => window.scrollTo(0, 0)")  # the sticky header back on top for the screenshot
            page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
        finally:
            browser.close()
    refused = "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    assert errors == [refused]  # the browser's log of the deliberately refused descent, and nothing else
    strangers = [u for u in requests if not (u.startswith(base + "/") or u.startswith("data:"))]
    assert strangers == []
    assert (tmp_path / "explorer.png").stat().st_size > 50_000
    shot_dir = os.environ.get("GENLAB_SCREENSHOT_DIR")
    if shot_dir:  # keep the screenshot for a person to look at
        shutil.copy(tmp_path / "explorer.png", Path(shot_dir) / "explorer.png")


def test_watch_skips_metric_values_the_page_cannot_plot(tmp_path):
    # A hand-edited metrics.jsonl can hold an integer of hundreds of digits: /api/watch answered 500 on every
    # poll (blanking every watched run); the value is now left out, the rest of the line kept.
    from genlab.serve.explorer import Explorer

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train/loss": 1%s, "test/loss": 0.5, "flag": true}\n'
                                            % ("0" * 400))
    state = Explorer(watch_dirs=[tmp_path]).watch_state()
    assert state["runs"][0]["metrics"] == [{"epoch": 1, "test/loss": 0.5}]
    json.dumps(state)


def test_watch_says_what_it_cannot_read_instead_of_answering_500(tmp_path, monkeypatch):
    # A watched run whose metrics.jsonl or figures/ this process may not read (its permissions taken away while
    # the server runs) made every poll of /api/watch a 500 with a traceback. The operating system's refusal is
    # stood in for here, since the tests may run as root, whom no permission stops.
    from genlab.serve.explorer import Explorer

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "test/loss": 0.5}\n')
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "losses.png").write_bytes(b"\x89PNG")
    explorer = Explorer(watch_dirs=[tmp_path])
    assert [f["name"] for f in explorer.watch_state()["runs"][0]["figures"]] == ["losses.png"]

    real_open, real_iterdir = open, Path.iterdir

    def refused_open(file, *args, **kwargs):
        if Path(file).name == "metrics.jsonl":
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    def refused_iterdir(self):
        if self.name == "figures":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr("builtins.open", refused_open)
    monkeypatch.setattr(Path, "iterdir", refused_iterdir)
    run = explorer.watch_state()["runs"][0]
    assert run["metrics"] == [] and run["figures"] == []
    assert "cannot read metrics.jsonl (Permission denied)" in run["note"]
    assert "cannot list figures/ (Permission denied)" in run["note"]
    json.dumps(run)


def test_watch_sees_an_edited_config_of_a_watched_run(tmp_path):
    # The watch reloaded a run only when its checkpoint changed: a config.json broken, removed or swapped went
    # unseen, its samples shown as those of a healthy run.
    from genlab.config import TrainConfig
    from genlab.models import MODELS as REGISTRY
    from genlab.serve.explorer import Explorer
    from genlab.train import train

    run = train("ae", REGISTRY["ae"].Config(latent_dim=8), TrainConfig(
        dataset="mnist-5k", epochs=1, limit=128, batch_size=64, eval_limit=64, figures=False, progress=False,
        out=str(tmp_path / "run"), device="cpu"))
    said = []
    (tmp_path / "not-a-run").mkdir()
    Explorer(run_dirs=[tmp_path], test_limit=10, say=said.append)  # the runs of a folder; its other folders named
    assert said == [f"note: in {tmp_path}, not-a-run is not a run and left out (a folder of runs inside it is named "
                    "on its own)"]
    explorer = Explorer(watch_dirs=[run])
    assert explorer.watch_state()["runs"][0]["note"] == ""
    config = run / "config.json"
    kept = config.read_text()
    config.write_text("{")
    os.utime(config, (time.time() + 5, time.time() + 5))  # a later time, whatever the file system's resolution
    assert "config.json" in explorer.watch_state()["runs"][0]["note"]
    config.unlink()
    config.symlink_to("nowhere.json")  # a link to nothing: the note blamed the checkpoint
    note = explorer.watch_state()["runs"][0]["note"]
    assert "config.json" in note and "checkpoint" not in note, note
    config.unlink()
    config.write_text(kept)
    os.utime(config, (time.time() + 10, time.time() + 10))
    assert explorer.watch_state()["runs"][0]["note"] == ""


def test_a_client_that_leaves_mid_body_leaves_no_traceback(server):
    # The body promised 100 bytes and the client closed after 10: the server logged a ClientDisconnect traceback.
    port = server["port"]
    request = (f"POST /api/draw HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               "Content-Length: 100\r\n\r\n").encode() + b'{"image": '
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    good_draw(port)
    log = server["log"].read_text()
    assert "Traceback" not in log and "ClientDisconnect" not in log


def test_a_pipelined_flood_closed_unread_leaves_no_traceback(server):
    # 3,000 drawings sent on one connection, none of the answers read, then the connection closed: writing the
    # answers to the closed connection logged two tracebacks.
    port = server["port"]
    body = json.dumps({"image": b64(np.pad(np.ones((20, 4)), ((18, 18), (26, 26))))}).encode()
    one = (f"POST /api/draw HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    def flood():
        with contextlib.suppress(OSError):  # the connection closed under it
            s.sendall(one * 3000)

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    time.sleep(3)
    s.close()
    time.sleep(2)
    good_draw(port)
    log = server["log"].read_text()
    assert "Traceback" not in log and "handler is closed" not in log
