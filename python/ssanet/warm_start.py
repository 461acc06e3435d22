"""Starting a model from another run's checkpoint (config ``init_from``).

The paper starts every module from an ImageNet-trained backbone. Without a download, the same
kind of start is a plain backbone (``model.proposals=false``, Table 3's first row) trained first
on the same training split: SSANet's backbone, which is also its part network (the part crops
go through the same layers, section 3), starts from that backbone, and the part classifier
(the FC of eq. 1, a linear classifier of pooled features like the plain network's) from the
plain classifier when both have the same classes.
"""

from __future__ import annotations

import os

import torch

from .checkpoint import verify_checksum
from .model import SSANet

__all__ = ["init_from_checkpoint"]


def init_from_checkpoint(model: SSANet, path: str | os.PathLike) -> list[str]:
    """Copies the backbone of the checkpoint at ``path`` (read with ``weights_only=True``;
    any :func:`ssanet.save_checkpoint` file, e.g. a run's ``best.pt``) into ``model``, and its
    classifier into ``model``'s (``classifier`` or ``part_classifier``) when the class counts
    match. Returns the names of the modules copied.

    Raises FileNotFoundError for a missing file and ValueError when the file is no SSANet
    checkpoint, is damaged (its checksum does not match) or its backbone is another
    architecture.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"init_from: checkpoint {path} does not exist")
    contents = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(contents, dict) or not {"model", "model_config"} <= set(contents):
        raise ValueError(f"init_from: {path} is not an SSANet checkpoint (no model, model_config)")
    try:
        verify_checksum(path, contents)
    except ValueError as error:
        raise ValueError(f"init_from: {error}") from None
    source = contents["model_config"]
    if source["backbone"] != model.config["backbone"]:
        raise ValueError(
            f"init_from: {path} has a {source['backbone']} backbone, the model a "
            f"{model.config['backbone']}"
        )
    weights = contents["model"]
    model.backbone.load_state_dict(_prefixed(weights, "backbone."))
    copied = ["backbone"]
    source_head = "classifier." if not source.get("proposals", True) else "part_classifier."
    target_name = "part_classifier" if model.proposals else "classifier"
    if source["num_classes"] == model.config["num_classes"]:
        getattr(model, target_name).load_state_dict(_prefixed(weights, source_head))
        copied.append(target_name)
    return copied


def _prefixed(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}
