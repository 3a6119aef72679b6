"""genlab: the classic deep generative models, trained, evaluated and visualised as energy-based models."""

__version__ = "0.1.0"


def load(run_dir, device: str = "cpu"):
    """A trained run directory, ready to score and repair images: ``.energy(images)``, ``.denoise(images)``
    (images: paths, a numpy uint8 array or a tensor). See ``genlab.scoring``."""
    from genlab.scoring import load as _load
    return _load(run_dir, device)
