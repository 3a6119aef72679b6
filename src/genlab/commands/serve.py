"""``genlab serve``: the local explorer page (genlab.serve), where a person draws, corrupts and walks and every
model answers."""

from __future__ import annotations

from genlab.commands.flags import DEVICE_HELP, bounded_int
from genlab.errors import GenlabError


def add(subparsers) -> None:
    p = subparsers.add_parser("serve", help="a local explorer page: draw, corrupt, walk, and every model answers")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="*",
                   help="run directories, or a folder of them (what genlab reproduce wrote)")
    p.add_argument("--watch", metavar="RUN_DIR", action="append", default=[],
                   help="follow a run in progress: its metrics, figures and samples update live (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=bounded_int(0, 65535), default=8000, help="port (0: any free one; default: 8000)")
    p.add_argument("--allow-host", metavar="NAME", action="append", default=[],
                   help="another name clients may use in the Host header (with --host)")
    p.add_argument("--test-limit", type=bounded_int(10), default=1000,
                   help="test digits per model for the energy percentiles and the latent map (default: 1000)")
    p.add_argument("--threads", type=bounded_int(1, 1024), default=1, help="PyTorch threads (default: 1)")
    p.add_argument("--device", default="cpu",
                   help=f"{DEVICE_HELP} (default: cpu, where the page's one-drawing requests were measured)")
    p.set_defaults(func=command)


def command(args) -> int:
    try:
        from genlab.serve.app import serve
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if missing not in ("starlette", "uvicorn"):
            raise
        raise GenlabError(f"genlab serve needs {missing}, which is not installed: pip install 'genlab[serve]' "
                          "(Starlette and uvicorn)") from None
    return serve(args.run_dirs, args.watch, host=args.host, port=args.port, allow_hosts=args.allow_host,
                 test_limit=args.test_limit, threads=args.threads, device=args.device)
