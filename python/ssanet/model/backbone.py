"""The backbone: a torchvision ResNet split into the stages the model needs.

SSANet (like NTS-Net, which it builds on) scores anchors on the last feature map (stride 32),
feeds part crops through the same network, and, with ``crop_from="shared"``, crops the
stride-16 map and runs only the last stage on the crops (paper section 4.1).
"""

from __future__ import annotations

import os
import urllib.error

import torch
import torchvision
from torch import nn

__all__ = ["Backbone", "load_backbone_weights", "RESNET_NAMES"]

#: The torchvision ResNets a backbone can be.
RESNET_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)


def load_backbone_weights(network: nn.Module, name: str, weights: str | os.PathLike) -> None:
    """Loads `weights` into the torchvision ResNet `network` (architecture `name`).

    `weights` is an existing local file (a state dict saved with ``torch.save``, as torchvision
    downloads them) or the name of one of torchvision's weights for `name` ("DEFAULT",
    "IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V2"), downloaded on first use into the torch
    hub cache. A failed download raises an OSError saying how to pass a local file instead.
    """
    if os.path.isfile(weights):
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state_dict, dict) and "state_dict" in state_dict:
            state_dict = state_dict["state_dict"]
        network.load_state_dict(state_dict)
        return
    weights = str(weights)
    weights_enum = torchvision.models.get_model_weights(name)
    try:
        entry = weights_enum.verify(weights)
    except (KeyError, ValueError, TypeError) as error:
        known = ", ".join(["DEFAULT", *weights_enum.__members__])
        raise ValueError(
            f"weights must be None, an existing local file, or one of torchvision's "
            f"{weights_enum.__name__} ({known}); got {weights!r}"
        ) from error
    try:
        state_dict = entry.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        file_name = os.path.basename(entry.url)
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        # An OSError, as the download's own failure: a missing file the user can provide.
        raise OSError(
            f"could not download the {entry} weights of {name} from {entry.url} ({error}). "
            f"Download {file_name} on a machine with internet access and pass its path, "
            f"weights='/path/to/{file_name}' (ssanet train: --set "
            f"model.weights=/path/to/{file_name}), or copy it into {cache}/"
        ) from error
    network.load_state_dict(state_dict)


class Backbone(nn.Module):
    """A torchvision ResNet (without its pooling and classifier) as the stages SSANet uses.

    Args:
        name: a torchvision ResNet family name, e.g. ``"resnet50"`` (the paper) or
            ``"resnet18"`` (tests, CPU demos).
        weights: None (random initialisation), a torchvision weights name, or a local file.

    Attributes:
        stride16_channels: channels of the stride-16 map (``layer3``).
        out_channels: channels of the stride-32 map (``layer4``).
    """

    def __init__(self, name: str = "resnet50", weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        if name not in RESNET_NAMES:
            raise ValueError(f"backbone must be one of {', '.join(RESNET_NAMES)}; got {name!r}")
        network = torchvision.models.get_model(name, weights=None)
        if weights is not None:
            load_backbone_weights(network, name, weights)
        self.stem = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool)
        self.layer1 = network.layer1
        self.layer2 = network.layer2
        self.layer3 = network.layer3
        self.layer4 = network.layer4
        self.stride16_channels: int = network.layer3[-1].conv1.in_channels
        self.out_channels: int = network.fc.in_features

    def forward_stride16(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, stride16_channels, ceil(H/16), ceil(W/16)]``."""
        return self.layer3(self.layer2(self.layer1(self.stem(images))))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the stride-16 and the stride-32 maps of ``images [B, 3, H, W]``."""
        stride16 = self.forward_stride16(images)
        return stride16, self.layer4(stride16)
