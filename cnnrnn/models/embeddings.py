"""Class embeddings of a trained model, and the space they score images in.

- CNN-RNN: the label embeddings are the rows of U_l (one per label; END and START left out),
  and an image lives in that space as U_I^x I, the image term of eq. 4.
- A classifier with a linear head (rnn, lstm, gru, cnn, vgg16, bce): the rows of the last
  linear layer are class embeddings, and an image lives in that space as its penultimate
  features (what the head reads); its score for class k is their dot product, plus a bias.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnrnn.errors import CnnrnnError
from cnnrnn.models.cnn_rnn import CNNRNN


def _last_linear(model: nn.Module) -> nn.Linear | None:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, nn.Sequential):
        linears = [m for m in head if isinstance(m, nn.Linear)]
        return linears[-1] if linears else None
    return None


def class_embeddings(model: nn.Module) -> Tensor:
    """(K, D): one embedding per class."""
    if isinstance(model, CNNRNN):
        return model.U_l[: model.num_labels].detach()
    linear = _last_linear(model)
    if linear is None:
        raise CnnrnnError(f"a {type(model).__name__} has no label embeddings (no U_l and no "
                          "linear head)")
    return linear.weight.detach()


@torch.no_grad()
def embed_images(model: nn.Module, x: Tensor) -> Tensor:
    """(B, 1, H, W) model inputs -> (B, D) points in the space of `class_embeddings`."""
    model.eval()
    if isinstance(model, CNNRNN):
        return model.image_embedding(model.encode(x).float())
    if _last_linear(model) is None:
        raise CnnrnnError(f"a {type(model).__name__} has no label embeddings")
    if hasattr(model, "encode"):  # bce: encoder features go into the head
        return model.encode(x).float()
    return model.forward_features(x).float()
