"""genlab: the classic deep generative models, trained, evaluated and visualised as energy-based models."""

__version__ = "0.1.0"
