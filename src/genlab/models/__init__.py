"""The model registry: a name on the command line -> a model class (each with its ``Config`` dataclass)."""

import torch

from genlab.errors import GenlabError
from genlab.models.ae import AE
from genlab.models.base import GenerativeModel, evaluating, per_example
from genlab.models.cdcgan import CDCGAN
from genlab.models.cvae import CVAE
from genlab.models.dae import DAE
from genlab.models.dcgan import DCGAN
from genlab.models.ebgan import EBGAN
from genlab.models.vae import VAE

__all__ = ["MODELS", "GenerativeModel", "build", "check_config", "evaluating", "model_class", "per_example"]

MODELS: dict[str, type[GenerativeModel]] = {
    "ae": AE,
    "dae": DAE,
    "vae": VAE,
    "ebgan": EBGAN,
    "dcgan": DCGAN,
    "cvae": CVAE,
    "cdcgan": CDCGAN,
}


def model_class(name) -> type[GenerativeModel]:
    """The model class called ``name``; an unknown name (or no name at all) is one line listing the models."""
    if not isinstance(name, str) or name not in MODELS:
        raise GenlabError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def build(name: str, cfg=None) -> GenerativeModel:
    from genlab.config import validate

    cls = model_class(name)
    if torch.get_default_dtype() != torch.float32:  # weights and noise of another type: errors deep in PyTorch
        raise GenlabError(f"genlab's models compute in float32, and PyTorch's default dtype is "
                          f"{torch.get_default_dtype()} (torch.set_default_dtype); set it back to torch.float32 "
                          "for genlab's calls")
    if cfg is None:
        return cls(cls.Config())
    check_config(name, cfg)
    validate(cfg)  # its fields may have been changed since it was made
    return cls(cfg)


def check_config(name: str, cfg) -> None:
    """Refuse, in one line, a config that is not model ``name``'s (another model's built one with its fields)."""
    if type(cfg) is not MODELS[name].Config:
        raise GenlabError(f"the model config of {name} is MODELS[{name!r}].Config, got {type(cfg).__name__}")


def cannot_sample(name: str, model: GenerativeModel) -> str:
    """The line for a model that cannot sample (``model.can_sample`` is False): what it does instead, and the
    models that can."""
    hint = ("; it completes digits from observed quadrants (see figures/completions.png of the run)"
            if getattr(model, "quadrants", False) else "")
    can = ", ".join(n for n, cls in MODELS.items() if cls.can_sample)
    return f"{name} cannot sample{hint}; models that can: {can} (cvae with --condition label)"
