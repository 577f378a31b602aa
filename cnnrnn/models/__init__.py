"""Model families; importing this package registers every model by name."""

from cnnrnn.models import (  # noqa: F401 - registration side effects
    cnn,
    heads,
    recurrent,
    timm_encoder,
    vgg,
)
from cnnrnn.models.registry import build_model, count_parameters, get_entry, model_names

__all__ = ["build_model", "count_parameters", "get_entry", "model_names"]
