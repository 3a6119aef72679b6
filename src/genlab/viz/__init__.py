"""Figures: drawing (figures), each model family's own (vae_figures, gan_figures, conditional_figures), the
metrics' (metric_figures), and the training callbacks that draw a run's (callbacks)."""


def training_callbacks(cfg) -> list:
    """The training callbacks ``cfg`` (a TrainConfig) asks for; see genlab.viz.callbacks."""
    from genlab.viz.callbacks import training_callbacks as callbacks

    return callbacks(cfg)
