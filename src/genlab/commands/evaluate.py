"""``genlab evaluate RUN_DIR`` (every metric of a run) and ``genlab sample RUN_DIR`` (a grid of samples)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genlab import config as cfgmod
from genlab.commands.flags import DEVICE_HELP, bounded_int, seed_flag
from genlab.errors import GenlabError, one_line
from genlab.models import MODELS, cannot_sample

MAX_SAMPLES = 10_000  # one grid of 100 x 100 digits; more is a typo, not a figure


def add(subparsers) -> None:
    ev = subparsers.add_parser("evaluate", help="test loss, energies and model-specific metrics of a run",
                               description="Print a run's metrics on a split; on the test split also keep them in "
                                           "RUN_DIR/evaluation.json for genlab report, unless that file holds an "
                                           "evaluation of the same checkpoint on more images.")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--split", default="test", choices=("train", "test"), help="the split to evaluate (default: test)")
    ev.add_argument("--limit", type=bounded_int(0), default=0, help="use only the first N images (0: all)")
    ev.add_argument("--json", action="store_true", help="print one JSON object of metric name to value "
                    "(a value that is not finite, NaN or infinite, prints as null)")
    ev.add_argument("--iwae-k", type=bounded_int(1, 100_000), nargs="+",
                    help="importance samples: the VAE's bound for each value (default: 1 50 5000, minutes on a "
                    "CPU; --iwae-k 1 50 for a quick look); a quadrant "
                    "cvae's completion bounds with the largest (default: 100); other models have no such bound")
    ev.add_argument("--quality", action=argparse.BooleanOptionalAction, default=None,
                    help="sample-quality metrics for models that sample (default: on where the model samples)")
    ev.add_argument("--device", default="auto", help=DEVICE_HELP)
    ev.set_defaults(func=evaluate)

    sp = subparsers.add_parser("sample", help="draw samples from a model that can sample")
    sp.add_argument("run_dir", metavar="RUN_DIR")
    sp.add_argument("-n", type=bounded_int(1, MAX_SAMPLES), default=64,
                    help=f"number of samples, 1 to {MAX_SAMPLES} (one grid image; default: 64); a conditional "
                    "model without --label rounds it up to whole rows, one per class; a grid of thousands is "
                    "written pixel for pixel, without a title")
    sp.add_argument("--out", default="samples.png", help="output PNG, replaced if it exists (default: samples.png)")
    sp.add_argument("--seed", type=seed_flag, default=0, help="seed of the draws (default: 0)")
    sp.add_argument("--device", default="auto", help=DEVICE_HELP)
    sp.add_argument("--label", type=bounded_int(0, 9), default=None,
                    help="conditional models: draw images of this class, one the run learned (default: a grid, "
                    "one row per class it learned)")
    sp.set_defaults(func=sample)


def evaluate(args) -> int:
    from genlab.checkpoint import load_run
    from genlab.evaluate import evaluate_run, finite_or_null

    run = load_run(args.run_dir, device=args.device)
    bounds = "likelihood" in run.model.extra_metrics or getattr(run.model, "quadrants", False)
    if args.iwae_k and not bounds:
        raise GenlabError(f"--iwae-k sets the importance samples of a vae's bounds or a quadrant cvae's; "
                          f"{args.run_dir} holds {'an' if run.model_name[0] in 'aeiou' else 'a'} {run.model_name} run, which has none: leave the flag out")
    if args.quality and not run.model.can_sample:
        raise GenlabError(f"--quality measures a model's samples, and {cannot_sample(run.model_name, run.model)}; "
                          "leave the flag out")
    options = {"iwae_k": tuple(args.iwae_k)} if args.iwae_k else {}
    quality = run.model.can_sample if args.quality is None else args.quality
    results = evaluate_run(run, split=args.split, limit=args.limit, quality=quality, **options)
    fuller = _fuller_evaluation(Path(run.dir) / "evaluation.json", results)
    if fuller:  # a quick look (--limit 1) replaced a whole evaluation, and the report then showed the quick one
        print(one_line(f"genlab evaluate: note: {run.dir}/evaluation.json keeps its evaluation of the same checkpoint "
                       f"on {fuller} test images; this one is printed only"), file=sys.stderr)
    elif args.split == "test":  # kept beside the run, where genlab report finds it
        try:
            cfgmod.write_json(Path(run.dir) / "evaluation.json", finite_or_null(results))
        except GenlabError as e:
            print(f"genlab evaluate: note: {one_line(e)}; the results are printed only", file=sys.stderr)
    if args.json:
        print(json.dumps(finite_or_null(results), allow_nan=False))
    else:
        for key, value in results.items():
            print(f"{key:<24} {value:.6g}" if isinstance(value, float) else f"{key:<24} {value}")
    return 0


def _fuller_evaluation(path: Path, results: dict) -> int:
    """The number of test images of the evaluation in ``path`` when it is of the same checkpoint as ``results``
    and of more images (then it is kept), else 0."""
    try:
        saved = cfgmod.read_json(path)
    except GenlabError:  # none yet, or damaged: replaced
        return 0
    same = all(saved.get(k) == results.get(k) for k in ("epoch", "step", "split"))
    images = saved.get("images")
    return images if same and isinstance(images, int) and images > results["images"] else 0


def sample(args) -> int:
    import torch

    from genlab.checkpoint import labels_said, load_run
    from genlab.data.batching import to_unit
    from genlab.models import evaluating
    from genlab.models.base import eval_batch
    from genlab.viz.figures import save_grid

    if Path(args.out).is_dir():
        raise GenlabError(f"--out {args.out} is a directory; give the file name of a PNG")
    if Path(args.out).name.lower() == ".png":
        raise GenlabError(f"--out {args.out}: the file needs a name before .png, e.g. samples.png")
    if Path(args.out).suffix.lower() != ".png":
        raise GenlabError(f"--out {args.out}: sample writes a PNG image; give a file name ending in .png")
    run = load_run(args.run_dir, device=args.device)
    model = run.model
    if not model.can_sample:
        raise GenlabError(cannot_sample(run.model_name, model))
    if args.label is not None and not model.conditional:
        conditional = ", ".join(name for name, cls in MODELS.items() if cls.conditional)
        raise GenlabError(f"--label needs a conditional model ({conditional}); {run.model_name} is not one")
    learned = model.learned_classes if model.conditional else []
    if args.label is not None and args.label not in learned:
        raise GenlabError(f"--label {args.label}: {args.run_dir} learned the classes {labels_said(learned)} only; "
                          "choose one of them")
    ncol = max(1, round(args.n ** 0.5))
    title = f"{run.model_name} samples"
    if not model.conditional:
        labels = None
    elif args.label is not None:
        labels = torch.full((args.n,), args.label, device=model.device)
        title += f" of class {args.label}"
    else:  # one row per class it learned, the lowest at the top
        ncol = max(1, -(-args.n // len(learned)))
        labels = torch.tensor(learned, device=model.device).repeat_interleave(ncol)
        title += f", one row per class {labels_said(learned)}"
    n = args.n if labels is None else len(labels)
    chunk = eval_batch(n, model.cfg.shape)  # all at once, 10,000 samples of a large model asked for 30 GB
    with evaluating(model, args.seed):
        images = torch.cat([to_unit(model.sample(min(chunk, n - i)) if labels is None else
                                    model.sample(min(chunk, n - i), labels[i:i + chunk]), model.pixel_range).cpu()
                            for i in range(0, n, chunk)])
    out = Path(args.out)
    save_grid(out, images, ncol=ncol, title=title)
    print(out)
    return 0
