"""Classification backbones and transfer learning for the OCT and pediatric CXR bundles.

The default backbone is a 2D ResNet-18 built from MONAI's ``ResNet`` with the torchvision layout
(7 x 7 stride-2 stem, max-pool, bias-free projection shortcuts), so its parameter names and shapes are
those of ``torchvision.models.resnet18``: an ImageNet or chest-X-ray ResNet-18 checkpoint loads as is
(``initial_ckpt``), its RGB stem folded to one channel by summing the colour filters.

Why ResNet-18: per CPU second it is the most accurate of MONAI's 2D classifiers on these tasks. Its
plain 3 x 3 convolutions run at full speed in PyTorch and ONNX Runtime on CPU (DenseNet-121 costs ~1.6x
the FLOPs and concatenations memory traffic; EfficientNet's depthwise convolutions and SE blocks are
several times slower per FLOP on CPU in training), it converges fast from scratch on 10^3-10^4
images, it exports to ONNX without custom ops, and Grad-CAM has a natural target (``layer4``).
``width`` scales every stage (64 = standard ResNet-18; 32 = a quarter of the FLOPs, the bundles'
default for CPU training); other backbones are selectable for users with a GPU.
"""

from __future__ import annotations

import logging
import os
import tempfile
import types
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "densenet121", "seresnet50", "efficientnet-b0")
# name of the classification head per backbone (re-initialised when the class count differs, trained alone
# when the backbone is frozen); the Grad-CAM target layer is the last feature stage
HEADS: dict[str, str] = {
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "densenet121": "class_layers.out",
    "seresnet50": "last_linear",
    "efficientnet-b0": "_fc",
}
GRADCAM_LAYERS: dict[str, str] = {
    "resnet18": "layer4",
    "resnet34": "layer4",
    "resnet50": "layer4",
    "densenet121": "features.denseblock4",
    "seresnet50": "layer4",
    "efficientnet-b0": "_blocks.15",
}


def classifier(
    num_classes: int,
    backbone: str = "resnet18",
    in_channels: int = 1,
    width: int = 64,
    dropout: float = 0.0,
) -> nn.Module:
    """A 2D image classifier returning logits ``(B, num_classes)``.

    Args:
        num_classes: number of output classes.
        backbone: one of ``BACKBONES``.
        in_channels: image channels (1 for grayscale OCT and CXR).
        width: channels of the first ResNet stage (64 standard; the stages have width x 1, 2, 4, 8);
            ignored by the other backbones.
        dropout: dropout before the last linear layer (ResNets: added in front of ``fc``).

    Returns:
        the network (a ``torch.nn.Module``).
    """
    from monai.networks import nets

    if backbone in ("resnet18", "resnet34", "resnet50"):
        block, layers = {
            "resnet18": ("basic", [2, 2, 2, 2]),
            "resnet34": ("basic", [3, 4, 6, 3]),
            "resnet50": ("bottleneck", [3, 4, 6, 3]),
        }[backbone]
        net = nets.ResNet(
            block=block,
            layers=layers,
            block_inplanes=[width, 2 * width, 4 * width, 8 * width],
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            bias_downsample=False,
            num_classes=num_classes,
        )
        if dropout > 0:
            # ``fc`` stays a Linear (checkpoint names unchanged); dropout runs as a pre-hook
            drop = nn.Dropout(dropout)
            net.add_module("fc_dropout", drop)
            net.fc.register_forward_pre_hook(lambda _m, args: (drop(args[0]),))
        return net
    if backbone == "densenet121":
        return nets.DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, dropout_prob=dropout)
    if backbone == "seresnet50":
        return nets.SEResNet50(spatial_dims=2, in_channels=in_channels, num_classes=num_classes, dropout_prob=dropout or None)
    if backbone == "efficientnet-b0":
        return nets.EfficientNetBN(
            "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels, num_classes=num_classes
        )
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")


def adapt_input_channels(state: dict[str, torch.Tensor], network: nn.Module) -> dict[str, torch.Tensor]:
    """Fold or repeat the first convolution of a checkpoint to the network's input channels.

    An RGB (ImageNet) stem given to a one-channel network is summed over its colour filters, which is
    what the RGB network computes for a gray image replicated into three channels; a one-channel stem
    given to a C-channel network is repeated and divided by C.

    Args:
        state: checkpoint state dict.
        network: the network it is loaded into.

    Returns:
        the state dict with matching first-convolution shapes where that was possible.
    """
    own = network.state_dict()
    out = dict(state)
    for name, tensor in state.items():
        target = own.get(name)
        if target is None or tensor.ndim != 4 or target.ndim != 4 or tensor.shape == target.shape:
            continue
        if tensor.shape[0] != target.shape[0] or tensor.shape[2:] != target.shape[2:]:
            continue
        c_in, c_net = tensor.shape[1], target.shape[1]
        if c_net == 1 and c_in > 1:
            out[name] = tensor.sum(dim=1, keepdim=True)
        elif c_in == 1 and c_net > 1:
            out[name] = tensor.repeat(1, c_net, 1, 1) / c_net
        else:
            continue
        logger.info("initial_ckpt: %s adapted from %d to %d input channels", name, c_in, c_net)
    return out


def _keep_in_eval_mode(module: nn.Module) -> None:
    # a frozen backbone must not update BatchNorm statistics either: pin its norm layers in eval mode
    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        return nn.Module.train(self, False)

    module.train = types.MethodType(train, module)
    module.eval()


def prepare_network(
    network: nn.Module,
    initial_ckpt: str | os.PathLike | None = "",
    freeze_backbone: bool = False,
    head: str | Sequence[str] = "fc",
) -> nn.Module:
    """Transfer learning: load ``initial_ckpt`` and optionally freeze everything but the head.

    The checkpoint may be a plain state dict or ``{"model": ...}`` (ours, a user's ImageNet or chest
    X-ray ResNet-18, or another bundle's weights); tensors whose name and shape match are loaded, an RGB
    stem is folded to gray (``adapt_input_channels``), everything else (e.g. a head with another number
    of classes) keeps its fresh initialisation, and the log says which (``common.bundle_utils``).

    Args:
        network: the freshly built network (already on its device).
        initial_ckpt: checkpoint path; "" or None trains from scratch.
        freeze_backbone: train only ``head`` (linear probing); BatchNorm statistics are frozen too.
        head: name prefix(es) of the head parameters.

    Returns:
        the same network.
    """
    from common import bundle_utils

    if initial_ckpt:
        state = bundle_utils.read_state_dict(initial_ckpt)
        adapted = adapt_input_channels(state, network)
        if any(adapted[k] is not state[k] for k in state):
            # hand the adapted weights to the shared loader (it logs what was loaded and re-initialised)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / Path(initial_ckpt).name
                torch.save(adapted, path)
                bundle_utils.load_initial_weights(network, path)
        else:
            bundle_utils.load_initial_weights(network, initial_ckpt)
    if freeze_backbone:
        heads = (head,) if isinstance(head, str) else tuple(head)
        bundle_utils.freeze(network, trainable=heads)
        for name, module in network.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not name.startswith(heads):
                _keep_in_eval_mode(module)
        n_train = sum(p.numel() for p in network.parameters() if p.requires_grad)
        logger.info("freeze_backbone: training %d parameters of the head %s only", n_train, heads)
    return network


def trainable_parameters(network: nn.Module) -> list[nn.Parameter]:
    """Parameters the optimiser should update (all of them unless the backbone is frozen)."""
    return [p for p in network.parameters() if p.requires_grad]
