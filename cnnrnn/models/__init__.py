"""Model families; importing this package registers every model by name."""

from cnnrnn.models import cnn, heads, recurrent, vgg  # noqa: F401 - registration side effects
from cnnrnn.models.registry import build_model, count_parameters, get_entry, model_names

__all__ = ["build_model", "count_parameters", "get_entry", "model_names"]
