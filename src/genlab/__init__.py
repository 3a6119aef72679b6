"""genlab: the classic deep generative models, trained, evaluated and visualised as energy-based models."""

import os

__version__ = "0.1.0"

# PyTorch's CPU threads are OpenMP threads, which spin while they wait for the next parallel region. Where
# another program holds one of a laptop's cores, a spinning thread takes the core its partner needs and a
# training step takes several times longer (benchmarks/omp_wait.py). Waiting passively costs little on an
# idle machine. It takes effect when genlab is imported before torch (the command line always is); a user's
# own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

# OpenCV decodes images of up to this many pixels (its own default is 2^30, which a 2 MB PNG can declare and a
# 16-bit one then fills with 8 GB): 2^27 is 134 megapixels, past any camera's photographs. OpenCV reads it
# once, when it loads, so it is set here, before genlab imports cv2; a user's own setting wins.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 27))


from genlab.errors import GenlabError  # noqa: E402 - what every refusal raises: ``except genlab.GenlabError``


def load(run_dir, device: str = "cpu"):
    """A trained run directory, ready to score and repair images: ``.energy(images)``, ``.denoise(images)``
    (images: paths, a numpy uint8 array or a tensor). See ``genlab.scoring``."""
    from genlab.scoring import load as _load
    return _load(run_dir, device)
