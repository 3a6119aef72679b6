"""genlab: the classic deep generative models, trained, evaluated and visualised as energy-based models."""

import os as _os  # the package's names are genlab's own: not genlab.os

__version__ = "0.1.0"

# PyTorch's CPU threads are OpenMP threads, which spin while they wait for the next parallel region. Where
# another program holds one of a laptop's cores, a spinning thread takes the core its partner needs and a
# training step takes several times longer (benchmarks/omp_wait.py). Waiting passively costs little on an
# idle machine. It takes effect when genlab is imported before torch (the command line always is); a user's
# own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
#
# Settings the libraries cannot read are taken out (``ENVIRONMENT_PROBLEMS``: the command line stops on them
# in one line; in Python genlab goes on with its own): OpenCV aborted the whole process on a pixel limit it
# could not read (a C++ terminate, no Python error), and OpenMP printed its own complaint on every run.
ENVIRONMENT_PROBLEMS: list[str] = []
_policy = _os.environ.get("OMP_WAIT_POLICY")
if _policy is not None and _policy.strip().upper() not in ("ACTIVE", "PASSIVE"):
    ENVIRONMENT_PROBLEMS.append(f"OMP_WAIT_POLICY={_policy!r} is not a wait policy; set it to PASSIVE or ACTIVE, "
                                "or unset it")
    del _os.environ["OMP_WAIT_POLICY"]
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

# OpenCV decodes images of up to this many pixels (its own default is 2^30, which a 2 MB PNG can declare and a
# 16-bit one then fills with 8 GB): 2^27 is 134 megapixels, past any camera's photographs. OpenCV reads it
# once, when it loads, so it is set here, before genlab imports cv2; a user's own setting wins.
_pixels = _os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS")
if _pixels is not None and not (_pixels.isascii() and _pixels.isdigit() and 0 < int(_pixels) < 2**64):
    ENVIRONMENT_PROBLEMS.append(f"OPENCV_IO_MAX_IMAGE_PIXELS={_pixels[:40]!r} is not a number of pixels; set it "
                                "to a whole number from 1 to 2**64 - 1, or unset it")
    del _os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"]
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 27))


from genlab.errors import GenlabError  # noqa: E402 - what every refusal raises: ``except genlab.GenlabError``


def load(run_dir, device: str = "cpu"):
    """A trained run directory, ready to score and repair images: ``.energy(images)``, ``.denoise(images)``
    (images: paths, a numpy uint8 array or a tensor), and to draw them: ``.sample(n)``, a quadrant cvae's
    ``.complete(images, observed)``. See ``genlab.scoring``."""
    from genlab.scoring import load as _load
    return _load(run_dir, device)


__all__ = ["ENVIRONMENT_PROBLEMS", "GenlabError", "__version__", "load"]
