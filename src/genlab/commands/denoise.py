"""``genlab denoise RUN_DIR --images PATH... --out DIR``: the model's repair of each image, and a side-by-side
picture (input | repair)."""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from genlab import config as cfgmod
from genlab.commands.flags import DEVICE_HELP
from genlab.errors import DISK_FULL, GenlabError, Stopped
from genlab.scoring import load


def add(subparsers) -> None:
    p = subparsers.add_parser("denoise", help="repair your own images with a model that reconstructs",
                              description="Write the model's repair (reconstruction) of each image as OUT/NAME.png "
                                          "and a side-by-side OUT/NAME-pair.png (input | repair). Images are "
                                          "resized to the run's size and made grey or colour as its data.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by genlab train")
    p.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files or folders of them")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=command)


def command(args) -> int:
    from genlab.data.files import encode_png, image_paths

    model = load(args.run_dir, args.device)
    paths = image_paths(args.images)
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # a file, /dev/null: was "cannot write ... free space"
        raise GenlabError(f"--out {out} is a file, not a folder; give a folder (new, or holding no file of the "
                          "same names) for the repairs")
    stems = _output_stems(paths)
    inputs_here = {Path(p).resolve(): p for p in paths}
    for stem in stems:
        for name in (f"{stem}.png", f"{stem}-pair.png"):
            hit = inputs_here.get((out / name).resolve())
            if hit is not None:
                raise GenlabError(f"--out {out} would overwrite the input image {hit} with its repair; choose "
                                  "another folder for the repairs")
            if (out / name).exists() or (out / name).is_symlink():
                raise GenlabError(f"--out {out} already holds {name}; choose an empty or new folder (genlab "
                                  "denoise replaces no file)")
    inputs = model.images_from_files(paths).numpy()
    repaired = model.denoise(torch.from_numpy(inputs))
    written: list[Path] = []
    try:
        with cfgmod.output_folder(out):
            try:
                for stem, before, after in zip(stems, inputs, repaired):
                    gap = np.full(before.shape[:-1] + (2,), 255, np.uint8)
                    for name, image in ((f"{stem}.png", after),
                                        (f"{stem}-pair.png", np.concatenate([before, gap, after], -1))):
                        written.append(out / name)  # first: a stop just after the write still finds it
                        cfgmod.write_atomically(out / name, encode_png(image), hidden=True)
            except BaseException:  # a failed write, or Ctrl-C / SIGTERM part-way (its line says nothing was kept)
                # No file cut short under its final name, and none of this command's: it can run again.
                for path in written:
                    cfgmod.discard(path)
                raise
    except (Stopped, KeyboardInterrupt) as e:
        said, signum = (str(e), e.signum) if isinstance(e, Stopped) else ("interrupted", signal.SIGINT)
        raise Stopped(f"{said}; no repair was kept in {out}: run the command again", signum) from None
    except OSError as e:
        longest = max(stems, key=lambda stem: len(os.fsencode(stem)))
        if e.errno == errno.ENAMETOOLONG and len(os.fsencode(f"{longest}-pair.png")) > 255:
            todo = f"the input named {longest[:40]}... is too long a name for its repair's ({longest[:8]}...-pair.png): rename it"
        elif e.errno in DISK_FULL:
            todo = "free space (or choose another --out)"
        else:
            todo = "choose another --out"
        raise GenlabError(f"cannot write the repairs into {out} ({e.strerror or e}); nothing was kept: {todo} and "
                          "run the command again") from None
    n = len(paths)
    cfg = model.run.model_cfg
    if model.run.model_name == "dae" and cfg.corruption == "dropout":
        # Black holes in digits came back unrepaired (13.2 dB before and after), mid-grey ones repaired (9.3 to
        # 20.0 dB; benchmarks/denoise_holes.py): the dropout it trained on leaves a dropped pixel at 0 in [-1, 1].
        print("note: this DAE trained on dropout, which leaves a dropped value mid-grey (128 of 255): it repairs "
              "pixels missing as 128, and takes black ones for background (train with --corruption salt-pepper "
              "to repair black and white specks)", file=sys.stderr)
    print(f"wrote {n} repair{'s' if n != 1 else ''} and {n} side-by-side pair{'s' if n != 1 else ''} (input | repair) "
          f"to {out}")
    return 0


def _output_stems(paths) -> list[str]:
    """Each image's output name: its own stem, numbered where it would meet another image's NAME or NAME-pair
    (files of one name from different folders; an input called x-pair.png beside x.png)."""
    taken: set[str] = set()
    stems = []
    for path in paths:
        base = Path(path).stem
        stem, k = base, 1
        while stem in taken or f"{stem}-pair" in taken:
            k += 1
            stem = f"{base}-{k}"
        taken.update((stem, f"{stem}-pair"))
        stems.append(stem)
    return stems
