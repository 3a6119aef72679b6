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


def load(run_dir, device: str = "cpu"):
    """A trained run directory, ready to score and repair images: ``.energy(images)``, ``.denoise(images)``
    (images: paths, a numpy uint8 array or a tensor). See ``genlab.scoring``."""
    from genlab.scoring import load as _load
    return _load(run_dir, device)
