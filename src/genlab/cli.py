"""The ``genlab`` command: thin wiring of library calls. Bad input ends with one line on stderr and status 2."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path

from genlab import __version__
from genlab import config as cfgmod
from genlab.errors import GenlabError, one_line_errors

# Subcommands defined beside the library code they drive: "module" whose add_cli(subparsers) adds them.
PLUGIN_COMMANDS = (
    "genlab.metrics.inpainting",   # genlab inpaint
    "genlab.metrics.anomaly",      # genlab energy
    "genlab.viz.report",           # genlab report, genlab reproduce
    "genlab.scoring",              # genlab denoise (and genlab energy --images)
)


MAX_SAMPLES = 10_000  # one grid of 100 x 100 digits; more is a typo, not a figure


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (what was wrong, where to look) and exit status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _train(args) -> int:
    from genlab.models import MODELS
    from genlab.train import Interrupted, default_train_config, train

    if args.resume:
        train_cfg = None
        if getattr(args, "epochs", None) is not None:
            train_cfg = cfgmod.from_namespace(cfgmod.TrainConfig, args)
        try:
            run_dir = train(None, None, train_cfg, resume=args.resume, device=getattr(args, "device", None))
        except Interrupted as e:
            print(f"genlab: {e}", file=sys.stderr)
            return 128 + e.signum
    else:
        cls = MODELS[args.model]
        model_cfg = cfgmod.from_namespace(cls.Config, args)
        train_cfg = cfgmod.from_namespace(cfgmod.TrainConfig, args, base=default_train_config(args.model))
        try:
            run_dir = train(args.model, model_cfg, train_cfg)
        except Interrupted as e:
            print(f"genlab: {e}", file=sys.stderr)
            return 128 + e.signum
    print(run_dir)
    return 0


def _datasets(args) -> int:
    from genlab.data import describe_datasets, load_dataset

    for name in args.download or ():
        for split in ("train", "test"):  # fetches whatever files are missing, checked by MD5
            load_dataset(name, split, args.data_dir or None, download=True)
    rows = describe_datasets(args.data_dir or None)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = "found" if row.get("available") else "missing"
        where = row.get("path") or row.get("why") or ""
        sizes = row.get("sizes")
        extra = f"  ({', '.join(f'{k} {v}' for k, v in sizes.items())})" if sizes else ""
        print(f"{row['name']:<14} {state:<8} {where}{extra}")
    return 0


def _evaluate(args) -> int:
    from genlab.checkpoint import load_run
    from genlab.evaluate import evaluate_run

    run = load_run(args.run_dir, device=args.device)
    options = {"iwae_k": tuple(args.iwae_k)} if args.iwae_k else {}
    results = evaluate_run(run, split=args.split, limit=args.limit, quality=args.quality, **options)
    if args.json:
        print(json.dumps(finite_or_null(results), allow_nan=False))
    else:
        for key, value in results.items():
            print(f"{key:<24} {value:.6g}" if isinstance(value, float) else f"{key:<24} {value}")
    return 0


def finite_or_null(results: dict) -> dict:
    """NaN and infinities are not JSON: ``evaluate --json`` prints them as null (a diverged model's metrics)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in results.items()}


def _sample(args) -> int:
    import torch

    from genlab.checkpoint import load_run
    from genlab.data.batching import to_unit
    from genlab.rng import seeded
    from genlab.viz.figures import save_grid

    if Path(args.out).is_dir():
        raise GenlabError(f"--out {args.out} is a directory; give the file name of a PNG")
    run = load_run(args.run_dir, device=args.device)
    model = run.model
    if not model.can_sample:
        hint = ("; it completes digits from observed quadrants (see figures/completions.png of the run)"
                if getattr(model, "quadrants", False) else "")
        raise GenlabError(f"a {run.model_name} model cannot sample{hint}; models that can: vae, ebgan, dcgan, "
                          "cdcgan, cvae --condition label")
    if args.label is not None and not model.conditional:
        raise GenlabError(f"--label needs a conditional model (cvae, cdcgan); {run.model_name} is not one")
    ncol = max(1, round(args.n ** 0.5))
    title = f"{run.model_name} samples"
    with torch.no_grad(), seeded(args.seed):
        if not model.conditional:
            images = model.sample(args.n)
        elif args.label is not None:
            images = model.sample(args.n, args.label)
            title += f" of class {args.label}"
        else:  # one row per class, 0 at the top
            ncol = max(1, -(-args.n // 10))
            images = model.sample(10 * ncol, torch.arange(10, device=model.device).repeat_interleave(ncol))
            title += ", one row per class 0-9"
        images = to_unit(images, model.pixel_range)
    out = Path(args.out)
    save_grid(out, images, ncol=ncol, title=title)
    print(out)
    return 0


def _serve(args) -> int:
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


def build_parser() -> Parser:
    from genlab.models import MODELS
    from genlab.train import default_train_config

    parser = Parser(prog="genlab", description="Train, evaluate and visualise the classic deep generative "
                    "models as energy-based models.")
    parser.add_argument("--version", action="version", version=f"genlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = sub.add_parser("train", help="train a model (genlab train MODEL --help for its flags)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    train.add_argument("--epochs", type=cfgmod.bounded_int(1), default=argparse.SUPPRESS,
                       help="with --resume: train up to this many epochs in all")
    train.add_argument("--device", default=argparse.SUPPRESS,
                       help="with --resume: continue on this device (auto, cpu, cuda, cuda:N) instead of the run's own")
    train.set_defaults(func=_train, model=None)
    models = train.add_subparsers(dest="model", parser_class=Parser, metavar="MODEL")
    for name, cls in MODELS.items():
        p = models.add_parser(name, help=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else name)
        cfgmod.add_arguments(p, cls.Config, f"{name} model")
        cfgmod.add_arguments(p, cfgmod.TrainConfig, "training", defaults=default_train_config(name))

    ds = sub.add_parser("datasets", help="list the data sets and where they were found, or why not")
    ds.add_argument("--data-dir", default="", help="data directory (default: $GENLAB_DATA_DIR or the user cache)")
    ds.add_argument("--json", action="store_true", help="print JSON")
    ds.add_argument("--download", nargs="+", choices=("mnist", "fashion-mnist"), metavar="NAME",
                    help="download the missing files of these data sets (mnist, fashion-mnist) into the data directory")
    ds.set_defaults(func=_datasets)

    ev = sub.add_parser("evaluate", help="test loss, energies and model-specific metrics of a run")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--split", default="test", choices=("train", "test"))
    ev.add_argument("--limit", type=cfgmod.bounded_int(0), default=0, help="use only the first N images (0: all)")
    ev.add_argument("--json", action="store_true", help="print one JSON object of metric name to value "
                    "(a value that is not finite, NaN or infinite, prints as null)")
    ev.add_argument("--iwae-k", type=cfgmod.bounded_int(1, 100_000), nargs="+", help="VAE: importance samples per bound (default: 1 50 5000)")
    ev.add_argument("--quality", action=argparse.BooleanOptionalAction, default=True,
                    help="sample-quality metrics for models that sample (default: on)")
    ev.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    ev.set_defaults(func=_evaluate)

    sp = sub.add_parser("sample", help="draw samples from a model that can sample")
    sp.add_argument("run_dir", metavar="RUN_DIR")
    sp.add_argument("-n", type=cfgmod.bounded_int(1, MAX_SAMPLES), default=64,
                    help=f"number of samples, 1 to {MAX_SAMPLES} (one grid image)")
    sp.add_argument("--out", default="samples.png", help="output PNG")
    sp.add_argument("--seed", type=cfgmod.bounded_int(0, 2**32 - 1), default=0)
    sp.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    sp.add_argument("--label", type=cfgmod.bounded_int(0, 9), default=None,
                    help="conditional models: draw digits of this class 0-9 (default: a grid, one row per class)")
    sp.set_defaults(func=_sample)

    sv = sub.add_parser("serve", help="a local explorer page: draw, corrupt, walk, and every model answers")
    sv.add_argument("run_dirs", metavar="RUN_DIR", nargs="*",
                    help="run directories, or a folder of them (what genlab reproduce wrote)")
    sv.add_argument("--watch", metavar="RUN_DIR", action="append", default=[],
                    help="follow a run in progress: its metrics, figures and samples update live (repeatable)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (0: any free one; default: 8000)")
    sv.add_argument("--allow-host", metavar="NAME", action="append", default=[],
                    help="another name clients may use in the Host header (with --host)")
    sv.add_argument("--test-limit", type=int, default=1000,
                    help="test digits per model for the energy percentiles and the latent map (default: 1000)")
    sv.add_argument("--threads", type=int, default=1, help="PyTorch threads (default: 1)")
    sv.add_argument("--device", default="cpu", help="cpu or cuda")
    sv.set_defaults(func=_serve)

    for module in PLUGIN_COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):  # a missing plug-in is skipped; a broken one raises
                raise
            continue
        mod.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.model is None and not args.resume:
        parser.error("train needs a MODEL (one of the listed choices) or --resume RUN_DIR")
    return one_line_errors(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
