"""The model registry: a name on the command line -> a model class (each with its ``Config`` dataclass)."""

from genlab.models.ae import AE
from genlab.models.base import GenerativeModel, evaluating, per_example
from genlab.models.cdcgan import CDCGAN
from genlab.models.cvae import CVAE
from genlab.models.dae import DAE
from genlab.models.dcgan import DCGAN
from genlab.models.ebgan import EBGAN
from genlab.models.vae import VAE

__all__ = ["MODELS", "GenerativeModel", "build", "evaluating", "per_example"]

MODELS: dict[str, type[GenerativeModel]] = {
    "ae": AE,
    "dae": DAE,
    "vae": VAE,
    "ebgan": EBGAN,
    "dcgan": DCGAN,
    "cvae": CVAE,
    "cdcgan": CDCGAN,
}


def build(name: str, cfg=None) -> GenerativeModel:
    from genlab.errors import GenlabError

    if name not in MODELS:
        raise GenlabError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    cls = MODELS[name]
    return cls(cfg if cfg is not None else cls.Config())
