"""Figures: drawing (figures), each model family's own (vae_figures, gan_figures, conditional_figures), the
metrics' (metric_figures), and the training callbacks that draw a run's (callbacks)."""

import logging


class _QuietConfigDir(logging.Filter):
    """Where the home folder cannot hold matplotlib's settings (HOME unset or read-only, /proc), matplotlib
    makes a temporary folder and logs two warnings about it into genlab's output; this drops those two."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("mkdir -p failed for path") or "MPLCONFIGDIR" in message)


logging.getLogger("matplotlib").addFilter(_QuietConfigDir())


def training_callbacks(cfg) -> list:
    """The training callbacks ``cfg`` (a TrainConfig) asks for; see genlab.viz.callbacks."""
    from genlab.viz.callbacks import training_callbacks as callbacks

    return callbacks(cfg)
