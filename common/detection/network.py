"""The nodule detection network: MONAI's 3D RetinaNet on a narrow ResNet-FPN, plus a malignancy head.

The network is ``monai.apps.detection.networks.retinanet_network.RetinaNet`` with

- a ResNet backbone (``monai.networks.nets.ResNet``) whose widths are chosen for a CPU budget instead of
  ResNet-50's (32-64 channels instead of 256-2048), cut after the last returned layer;
- MONAI's ``FeaturePyramidNetwork`` with few output channels (``ResNetFPNFeatures`` does what MONAI's
  ``BackboneWithFPN`` does without torchvision, which has no CPU build here);
- classification and box-regression heads from MONAI with fewer convolutions per head;
- a third per-anchor head, ``malignancy``, with the same layout as the classification head, predicting the
  LIDC malignancy rating (1-5) as 5 logits per anchor.

Its ``forward`` returns MONAI's dictionary of lists (``{"classification": [...], "box_regression": [...],
"malignancy": [...]}``, one tensor per pyramid level) so ``RetinaNetDetector``'s decoding, matching and
losses apply unchanged; ``NoduleDetector`` (in ``common.detection.detector``) adds the malignancy loss
and keeps the malignancy probabilities of the boxes that survive NMS.

Wrappers give other consumers the tensors they take: ``FlatHeadOutputs`` a flat tuple (ONNX export),
``HeadOutputsDict`` the dict back from that tuple (ONNX Runtime inference), ``PackedHeadOutputs`` one tensor
``(B, num_classes + 6 + 5, anchors)`` for MONAI's bundle tools, which expect a network with one output
(``verify_net_in_out`` checks its dim 1 against ``network_data_format``'s ``pred``, ``ckpt_export`` writes
it to TorchScript).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.apps.detection.networks.retinanet_network import (
    RetinaNet,
    RetinaNetClassificationHead,
)
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets import resnet
from torch import Tensor, nn

__all__ = [
    "ResNetFPNFeatures",
    "NoduleRetinaNet",
    "FlatHeadOutputs",
    "HeadOutputsDict",
    "PackedHeadOutputs",
    "pack_head_maps",
    "build_nodule_retinanet",
    "MALIGNANCY_KEY",
    "NUM_MALIGNANCY_CLASSES",
]

MALIGNANCY_KEY = "malignancy"
NUM_MALIGNANCY_CLASSES = 5


def _trim_head(head: nn.Module, num_convs: int) -> None:
    """Keep the first ``num_convs`` (conv, GroupNorm, ReLU) triples of a MONAI RetinaNet head."""
    layers = list(head.conv.children())
    head.conv = nn.Sequential(*layers[: 3 * num_convs])


class ResNetFPNFeatures(nn.Module):
    """The first ``num_stages`` stages of a MONAI ``ResNet`` followed by MONAI's ``FeaturePyramidNetwork``.

    Equivalent to ``monai.networks.blocks.backbone_fpn_utils.BackboneWithFPN`` (which needs torchvision's
    ``IntermediateLayerGetter``); the state-dict names (``body.*``, ``fpn.*``) are the same.

    Args:
        backbone: a MONAI ``ResNet``.
        in_channels_list: output channels of the stages used.
        out_channels: channels of every pyramid level.
    """

    def __init__(self, backbone: resnet.ResNet, in_channels_list: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.num_stages = len(in_channels_list)
        body = OrderedDict([("conv1", backbone.conv1), ("bn1", backbone.bn1), ("act", backbone.act)])
        if not backbone.no_max_pool:
            body["maxpool"] = backbone.maxpool
        for i in range(self.num_stages):
            body[f"layer{i + 1}"] = getattr(backbone, f"layer{i + 1}")
        self.body = nn.ModuleDict(body)
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=3,
            in_channels_list=list(in_channels_list),
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(3),
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        stages: dict[str, Tensor] = OrderedDict()
        for name, module in self.body.items():
            x = module(x)
            if name.startswith("layer"):
                stages[str(len(stages))] = x
        return self.fpn(stages)


class NoduleRetinaNet(RetinaNet):
    """MONAI ``RetinaNet`` with an additional per-anchor malignancy head.

    Args:
        feature_extractor: a network returning a dict or list of feature maps with ``out_channels``
            channels each (e.g. ``BackboneWithFPN``), highest resolution first.
        num_anchors: anchors per location (``AnchorGenerator.num_anchors_per_location()[0]``).
        num_classes: foreground classes (1: nodule).
        size_divisible: the input spatial size must be divisible by this (2 x the largest stride).
        num_malignancy_classes: malignancy ratings predicted per anchor (5 for LIDC's 1-5 scale).
        head_convs: (conv, GroupNorm, ReLU) blocks in each head before its output convolution; MONAI uses 4.
        spatial_dims: 3.
    """

    def __init__(
        self,
        feature_extractor: nn.Module,
        num_anchors: int,
        num_classes: int = 1,
        size_divisible: Sequence[int] | int = 8,
        num_malignancy_classes: int = NUM_MALIGNANCY_CLASSES,
        head_convs: int = 2,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            num_classes=num_classes,
            num_anchors=num_anchors,
            feature_extractor=feature_extractor,
            size_divisible=size_divisible,
        )
        self.num_malignancy_classes = num_malignancy_classes
        # the prior is only for the sigmoid classification head; a softmax head starts near uniform
        self.malignancy_head = RetinaNetClassificationHead(
            self.feature_map_channels,
            num_anchors,
            num_malignancy_classes,
            spatial_dims,
            prior_probability=0.5,
        )
        for head in (self.classification_head, self.regression_head, self.malignancy_head):
            _trim_head(head, head_convs)
        self.malignancy_key = MALIGNANCY_KEY

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        """Per-level head maps for a batch ``(B, 1, X, Y, Z)``.

        Returns:
            ``{"classification": [(B, A * num_classes, x_l, y_l, z_l)], "box_regression": [(B, A * 6, ...)],
            "malignancy": [(B, A * 5, ...)]}``, one entry per pyramid level, highest resolution first.
        """
        features = self.feature_extractor(images)
        if isinstance(features, Tensor):
            feature_maps = [features]
        elif torch.jit.isinstance(features, dict[str, Tensor]):  # TorchScript (ckpt_export) knows no `dict` here
            feature_maps = list(features.values())
        else:
            feature_maps = list(features)
        return {
            self.cls_key: self.classification_head(feature_maps),
            self.box_reg_key: self.regression_head(feature_maps),
            self.malignancy_key: self.malignancy_head(feature_maps),
        }


def build_nodule_retinanet(
    num_anchors: int,
    num_classes: int = 1,
    widths: Sequence[int] = (32, 64),
    blocks: Sequence[int] = (2, 2),
    fpn_channels: int = 32,
    conv1_stride: int = 2,
    conv1_size: int = 5,
    head_convs: int = 1,
    num_malignancy_classes: int = NUM_MALIGNANCY_CLASSES,
    in_channels: int = 1,
) -> NoduleRetinaNet:
    """Build the narrow ResNet-FPN RetinaNet used by the ``lung_nodule_ct_detection`` bundle.

    The pyramid has ``len(widths) + 1`` levels: one per ResNet stage (strides ``conv1_stride * 2**i``)
    and one max-pooled level on top (MONAI's ``LastLevelMaxPool``).

    Args:
        num_anchors: anchors per location of the anchor generator.
        num_classes: foreground classes.
        widths: channels of the ResNet stages used (each stage after the first halves the resolution).
        blocks: basic residual blocks per stage.
        fpn_channels: channels of every pyramid level (MONAI's default is 256).
        conv1_stride: stride of the stem convolution (no max-pooling after it).
        conv1_size: kernel size of the stem convolution.
        head_convs: convolutions per head before its output layer. The three heads on the finest level
            cost most of the network's time, so the defaults spend it on the backbone instead (two blocks
            per stage, 32-64 channels, one head convolution): at the same cost per iteration as 16-32
            channels, one block and two head convolutions, the synthetic validation CPM rose faster.
        num_malignancy_classes: malignancy ratings predicted per anchor.
        in_channels: input channels.

    Returns:
        the network; ``size_divisible`` is set to the stride of the coarsest level.
    """
    if len(widths) != len(blocks) or not 1 <= len(widths) <= 4:
        raise ValueError(f"widths {widths} and blocks {blocks} must have the same length, 1 to 4")
    # MONAI's ResNet always builds 4 stages; ResNetFPNFeatures keeps only the first len(widths)
    stage_widths = list(widths) + [widths[-1]] * (4 - len(widths))
    stage_blocks = list(blocks) + [1] * (4 - len(blocks))
    backbone = resnet.ResNet(
        block="basic",
        layers=stage_blocks,
        block_inplanes=stage_widths,
        spatial_dims=3,
        n_input_channels=in_channels,
        conv1_t_size=conv1_size,
        conv1_t_stride=conv1_stride,
        no_max_pool=True,
        shortcut_type="B",
        bias_downsample=False,
    )
    feature_extractor = ResNetFPNFeatures(backbone, in_channels_list=list(widths), out_channels=fpn_channels)
    # coarsest level: stem stride, x2 per further stage, x2 for the max-pooled level
    size_divisible = conv1_stride * 2 ** (len(widths) - 1) * 2
    return NoduleRetinaNet(
        feature_extractor=feature_extractor,
        num_anchors=num_anchors,
        num_classes=num_classes,
        size_divisible=size_divisible,
        num_malignancy_classes=num_malignancy_classes,
        head_convs=head_convs,
    )


class FlatHeadOutputs(nn.Module):
    """Wrap a ``NoduleRetinaNet`` so it returns a flat tuple of tensors (for ONNX export).

    The tuple is ``(cls_0, ..., cls_{L-1}, box_0, ..., box_{L-1}, mal_0, ..., mal_{L-1})`` for ``L`` pyramid
    levels: the order ``export_onnx.yaml`` names as outputs and ``HeadOutputsDict`` turns back into a dict.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.network(images)
        return tuple(out["classification"]) + tuple(out["box_regression"]) + tuple(out[MALIGNANCY_KEY])


class HeadOutputsDict(nn.Module):
    """Turn a network returning the flat tuple of ``FlatHeadOutputs`` back into RetinaNet's dict of lists.

    Used to put an ONNX Runtime session (``common.export.OnnxRuntimeNetwork``) where ``NoduleDetector``
    expects the PyTorch network, so decoding and NMS are the same code for both.

    Args:
        network: callable returning ``3 * L`` tensors in ``FlatHeadOutputs`` order.
        keys: output keys, in tuple order.
    """

    def __init__(
        self, network, keys: Sequence[str] = ("classification", "box_regression", MALIGNANCY_KEY)
    ) -> None:
        super().__init__()
        self.network = network
        self.keys = tuple(keys)

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        flat = self.network(images)
        if isinstance(flat, Tensor):
            flat = (flat,)
        flat = [torch.as_tensor(t) for t in flat]
        if len(flat) % len(self.keys):
            raise ValueError(f"expected a multiple of {len(self.keys)} outputs, got {len(flat)}")
        levels = len(flat) // len(self.keys)
        return {k: list(flat[i * levels : (i + 1) * levels]) for i, k in enumerate(self.keys)}


def pack_head_maps(heads: list[list[Tensor]], num_anchors: int) -> Tensor:
    """Pack per-level head maps into one tensor ``(B, sum of per-anchor channels, anchors)``.

    Each head's map of level ``l`` is ``(B, A * C_h, *spatial_l)`` with the ``C_h`` channels of anchor ``a``
    at ``a * C_h ... (a + 1) * C_h - 1`` (MONAI's layout). The packed tensor has, along dim 1, the ``C_h``
    channels of every head in ``heads`` order and, along dim 2, every anchor of every level: levels
    highest resolution first, then the voxels in C order, then the ``A`` anchors of a voxel. That is the
    order of MONAI's ``AnchorGenerator`` and of ``RetinaNetDetector``'s flattened head outputs, so the
    anchors and ``BoxCoder`` decode ``pred[:, box channels, :]`` directly.

    Args:
        heads: per head, its maps per pyramid level (every head with the same levels).
        num_anchors: ``A``, anchors per voxel.

    Returns:
        ``(B, sum_h C_h, sum_l A * prod(spatial_l))``.
    """
    levels: list[Tensor] = []
    for level in range(len(heads[0])):
        per_head: list[Tensor] = []
        for maps in heads:
            m = maps[level]
            # (B, A * C, *spatial) -> (B, A, C, *spatial) -> (B, C, *spatial, A) -> (B, C, voxels * A)
            m = m.reshape([m.shape[0], num_anchors, -1] + list(m.shape[2:]))
            m = m.movedim(1, -1)
            per_head.append(m.reshape(m.shape[0], m.shape[1], -1))
        levels.append(torch.cat(per_head, dim=1))
    return torch.cat(levels, dim=2)


class PackedHeadOutputs(nn.Module):
    """Wrap a ``NoduleRetinaNet`` so it returns its head maps as one tensor (see ``pack_head_maps``).

    For MONAI's bundle tools, which take a network with one output tensor: ``verify_net_in_out`` checks its
    channels against ``network_data_format#outputs#pred`` and ``ckpt_export`` scripts it into ``model.ts``.
    ``ckpt_export`` loads ``model.pt`` into the module it exports, strictly and by key, so this wrapper
    reads and writes the wrapped network's own state-dict keys (no ``network.`` prefix): the bundle's
    checkpoint loads into it as into ``network_def``.

    Args:
        network: a ``NoduleRetinaNet`` (returning the dict of per-level classification, box-regression and
            malignancy maps).

    Returns (``forward``):
        ``(B, num_classes + 6 + num_malignancy_classes, anchors)``: per anchor, the classification logits,
        the encoded box offsets (MONAI's ``BoxCoder``: dx, dy, dz, dw, dh, dd) and the malignancy logits.
    """

    def __init__(self, network: NoduleRetinaNet) -> None:
        super().__init__()
        self.network = network
        self.num_anchors = int(network.num_anchors)
        # attributes, not module globals: TorchScript compiles forward
        self.keys = [network.cls_key, network.box_reg_key, network.malignancy_key]

    def forward(self, images: Tensor) -> Tensor:
        out = self.network(images)
        return pack_head_maps([out[k] for k in self.keys], self.num_anchors)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The wrapped network's state dict (its own keys, as in ``model.pt``)."""
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a ``network_def`` state dict (e.g. ``model.pt``) into the wrapped network."""
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)
