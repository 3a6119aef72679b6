"""Figures: drawing (figures), each model family's own (vae_figures, gan_figures, conditional_figures), the
metrics' (metric_figures), and the training callbacks that draw a run's (callbacks)."""

import os
import tempfile
from pathlib import Path


def _matplotlib_config_dir() -> None:
    """Where the home folder cannot hold matplotlib's settings (HOME unset, read-only, /proc), give it a temporary
    folder before it loads: it makes one itself, but prints two lines of warning into genlab's output first."""
    if "MPLCONFIGDIR" in os.environ:
        return
    try:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "matplotlib"
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return
    except (OSError, RuntimeError):  # RuntimeError: no home folder to be found
        pass
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="genlab-matplotlib-")


_matplotlib_config_dir()


def training_callbacks(cfg) -> list:
    """The training callbacks ``cfg`` (a TrainConfig) asks for; see genlab.viz.callbacks."""
    from genlab.viz.callbacks import training_callbacks as callbacks

    return callbacks(cfg)
