"""Two-branch CXR + EHR network for oxygen-need risk, after EXAM (Dayan et al., Nature Medicine 2021).

Image branch: a MONAI ResNet (EXAM used ResNet-34; the default here is a narrower 4-stage ResNet sized
for CPU, ``image_layers=[3, 4, 6, 3]`` and ``image_channels=[64, 128, 256, 512]`` gives ResNet-34).
EHR branch: a deep-and-cross network (Wang et al., 2017) on the normalised, imputed EHR values
concatenated with their missing-value indicators. The two embeddings are fused by an MLP; a linear
"wide" path from the EHR vector to the outputs (Wide & Deep, Cheng et al., 2016) carries the main effects.

Output: ``(B, 2 * n_levels)`` logits of the cumulative probabilities ``P(level >= k)`` for the 24 h
horizon (first ``n_levels``) then the 72 h horizon, k = 1..n_levels (1 any oxygen, 2 high flow or more,
3 mechanical ventilation or death, 4 death). The parameterisation makes the risks consistent by
construction, for any weights and any input:

- across levels: ``logit_k = logit_1 - sum_{j=2..k} softplus(d_j)``, so ``P(>= k+1) <= P(>= k)``;
- across horizons: ``logit72_k = logaddexp(logit24_k, c_k)`` with ``c_k`` itself decreasing in k, so
  ``P72(>= k) >= P24(>= k)`` and the 72 h risks stay monotone across levels (logaddexp is increasing
  in both arguments).

Missing modalities: each branch embedding is multiplied by an availability flag and the flags are
appended to the fused vector, so the fusion MLP learns what "no image" / "no EHR" means. A flag is 0
when ``mode`` excludes the branch (``"image"``: image only, ``"ehr"``: EHR only), when the input itself
is empty (an all-zero image; an EHR vector whose indicators say every feature is missing), or, during
training, at random with probability ``modality_dropout`` (per sample, never both branches at once), so one
model serves sites that lack one of the two inputs.

``forward(image)`` without ``ehr`` means "no EHR value at all": the network then uses ``missing_ehr``, the
vector the bundle's EHR transform produces when every value is missing (``FeatureSpec.all_missing_vector()``:
imputed defaults, then every indicator 1). So MONAI's bundle tools, which call a network with one image
tensor (``verify_net_in_out``, ``ckpt_export``), run it as the bundle's inference would for such an encounter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import ResNet

MODES = ("both", "image", "ehr")


class CrossLayer(nn.Module):
    """One cross layer ``x_{l+1} = x_0 * (W x_l + b) + x_l`` (explicit feature interactions)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class DeepCrossNetwork(nn.Module):
    """Deep & cross network: cross layers and an MLP side by side, outputs concatenated and projected.

    Args:
        in_features: input width (normalised values + missing indicators).
        out_features: embedding width.
        n_cross: number of cross layers.
        hidden: widths of the deep MLP.
        dropout: dropout in the deep MLP.
    """

    def __init__(self, in_features: int, out_features: int = 64, n_cross: int = 2,
                 hidden: tuple[int, ...] = (64, 64), dropout: float = 0.1) -> None:
        super().__init__()
        self.cross = nn.ModuleList(CrossLayer(in_features) for _ in range(n_cross))
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.deep = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Linear(in_features + width, out_features), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = x
        for layer in self.cross:
            xc = layer(x, xc)
        return self.project(torch.cat([xc, self.deep(x)], dim=1))


def ordinal_logits(raw: torch.Tensor, n_levels: int) -> torch.Tensor:
    """Map ``(B, 2 * n_levels)`` unconstrained outputs to consistent cumulative logits (see module doc).

    ``raw[:, 0]`` is the 24 h level-1 logit, ``raw[:, 1:n]`` the 24 h decrements, ``raw[:, n]`` the 72 h
    level-1 floor and ``raw[:, n+1:]`` its decrements.
    """
    n = n_levels
    logit24 = torch.cat([raw[:, :1], raw[:, :1] - torch.cumsum(F.softplus(raw[:, 1:n]), dim=1)], dim=1)
    floor72 = torch.cat([raw[:, n:n + 1], raw[:, n:n + 1] - torch.cumsum(F.softplus(raw[:, n + 1:]), dim=1)], dim=1)
    # logaddexp written out: the same value, and it exports to every ONNX opset
    logit72 = torch.maximum(logit24, floor72) + torch.log1p(torch.exp(-torch.abs(logit24 - floor72)))
    return torch.cat([logit24, logit72], dim=1)


class OxygenRiskNet(nn.Module):
    """CXR + EHR network with consistent cumulative risks per horizon and oxygen level.

    Args:
        n_ehr_features: number of EHR features F; the ``ehr`` input is ``(B, 2F)``: F normalised values
            (missing ones imputed) then F missing-value indicators (1 = missing or out of range).
        mode: ``"both"``, ``"image"`` (image only) or ``"ehr"`` (EHR only).
        n_levels: number of cumulative levels per horizon (4: >= low flow, >= high flow,
            >= ventilation, death).
        in_channels: image channels.
        image_layers: residual blocks per ResNet stage.
        image_channels: widths of the ResNet stages (the image embedding is the last one).
        ehr_embedding: width of the EHR embedding.
        n_cross: cross layers in the EHR branch.
        ehr_hidden: widths of the deep part of the EHR branch.
        fusion_hidden: width of the fusion MLP.
        dropout: dropout in the EHR branch and the fusion MLP.
        modality_dropout: probability, per training sample, of hiding one branch.
        ehr_clip: normalised EHR values are clipped to [-ehr_clip, ehr_clip] (a CRP of 700 mg/L is 8 standard
            deviations out; the cross layers multiply features, so one extreme lab would dominate).
        missing_ehr: the ``2F`` vector of an encounter without any EHR value, used when ``forward`` gets no
            ``ehr``: ``FeatureSpec.all_missing_vector()`` of the bundle's feature spec (what ``EHRVectord``
            makes of an empty row). Not part of the state dict; None: ``ehr`` is required.

    Inputs:
        image: ``(B, in_channels, H, W)`` in [0, 1]; ehr: ``(B, 2F)``, or None for "every EHR value
        missing" (needs ``missing_ehr``).

    Returns:
        ``(B, 2 * n_levels)`` cumulative logits (24 h levels, then 72 h levels).
    """

    def __init__(
        self,
        n_ehr_features: int,
        mode: str = "both",
        n_levels: int = 4,
        in_channels: int = 1,
        image_layers: tuple[int, ...] = (1, 1, 1, 1),
        image_channels: tuple[int, ...] = (16, 32, 64, 128),
        ehr_embedding: int = 64,
        n_cross: int = 2,
        ehr_hidden: tuple[int, ...] = (64, 64),
        fusion_hidden: int = 64,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
        ehr_clip: float = 5.0,
        missing_ehr: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.n_ehr_features = int(n_ehr_features)
        if missing_ehr is not None and len(missing_ehr) != 2 * self.n_ehr_features:
            raise ValueError(
                f"missing_ehr has {len(missing_ehr)} values; the EHR vector of {self.n_ehr_features} features has "
                f"{2 * self.n_ehr_features} (values, then missing indicators)"
            )
        # not persistent: it comes from the feature spec, so checkpoints stay as they were and a re-estimated
        # spec takes effect without touching the weights; empty when not given (TorchScript needs a tensor)
        self.register_buffer(
            "missing_ehr",
            torch.tensor([] if missing_ehr is None else [float(v) for v in missing_ehr], dtype=torch.float32),
            persistent=False,
        )
        self.n_levels = int(n_levels)
        self.modality_dropout = float(modality_dropout)
        self.ehr_clip = float(ehr_clip)
        self.image_encoder = ResNet(
            block="basic", layers=list(image_layers), block_inplanes=list(image_channels), spatial_dims=2,
            n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2, feed_forward=False,
        )
        image_dim = int(image_channels[-1])
        self.ehr_encoder = DeepCrossNetwork(2 * self.n_ehr_features, ehr_embedding, n_cross, tuple(ehr_hidden), dropout)
        self.fusion = nn.Sequential(
            nn.Linear(image_dim + ehr_embedding + 2, fusion_hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(fusion_hidden, fusion_hidden), nn.ReLU(),
        )
        self.head = nn.Linear(fusion_hidden, 2 * self.n_levels)
        # "wide" path (Wide & Deep): a linear map of the EHR vector straight to the outputs, which learns the
        # main effects as fast as a logistic regression while the deep branches learn the rest
        self.wide = nn.Linear(2 * self.n_ehr_features, 2 * self.n_levels, bias=False)
        nn.init.zeros_(self.wide.weight)
        # start from plausible risks (about 40% any oxygen, each level about 3x rarer than the one below)
        # instead of 50% for every level, so early epochs are not spent undoing the prior
        with torch.no_grad():
            bias = torch.full((2 * self.n_levels,), 1.0)
            bias[0] = bias[self.n_levels] = -0.5
            self.head.bias.copy_(bias)

    def availability(self, image: torch.Tensor, ehr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample availability flags (B, 1) of the image and the EHR input."""
        img_ok = (image.flatten(1).abs().amax(dim=1, keepdim=True) > 0).to(image.dtype)
        indicators = ehr[:, self.n_ehr_features:]
        ehr_ok = (indicators.amin(dim=1, keepdim=True) < 0.5).to(ehr.dtype)
        if self.mode == "image":
            ehr_ok = torch.zeros_like(ehr_ok)
        elif self.mode == "ehr":
            img_ok = torch.zeros_like(img_ok)
        if self.training and self.modality_dropout > 0 and self.mode == "both":
            drop = torch.rand_like(img_ok) < self.modality_dropout
            which = torch.rand_like(img_ok) < 0.5
            img_ok = img_ok * ~(drop & which)
            ehr_ok = ehr_ok * ~(drop & ~which)
        return img_ok, ehr_ok

    def forward(self, image: torch.Tensor, ehr: torch.Tensor | None = None) -> torch.Tensor:
        if ehr is None:
            if self.missing_ehr.numel() == 0:
                raise ValueError(
                    "forward(image) without ehr needs the network's missing_ehr (FeatureSpec.all_missing_vector())"
                )
            ehr = self.missing_ehr.to(image.dtype).unsqueeze(0).expand(image.shape[0], -1)
        img_ok, ehr_ok = self.availability(image, ehr)
        img_emb = self.image_encoder(image) * img_ok
        n = self.n_ehr_features
        ehr = torch.cat([ehr[:, :n].clamp(-self.ehr_clip, self.ehr_clip), ehr[:, n:]], dim=1)
        ehr_emb = self.ehr_encoder(ehr) * ehr_ok
        fused = self.fusion(torch.cat([img_emb, ehr_emb, img_ok, ehr_ok], dim=1))
        return ordinal_logits(self.head(fused) + self.wide(ehr) * ehr_ok, self.n_levels)


def parameter_groups(
    network: nn.Module, lr: float, wide_lr_scale: float = 1.0, image_lr_scale: float = 1.0
) -> list[dict]:
    """Optimizer parameter groups with their own learning rates for the wide path and the image encoder.

    With a few hundred encounters the deep branches over-fit long before the linear "wide" path has
    learnt the EHR main effects (Adam moves each weight by about ``lr`` per step, so at ``lr`` 3e-4 a
    zero-initialised logistic coefficient needs thousands of steps to reach 1). A faster wide path and a
    slower image encoder let the model reach what a logistic regression reaches on the EHR before the
    CNN starts to add (or fit noise).

    Args:
        network: an :class:`OxygenRiskNet`, possibly wrapped (``DistributedDataParallel``: ``.module``).
        lr: the base learning rate (EHR branch, fusion, head).
        wide_lr_scale: learning-rate factor of the wide path.
        image_lr_scale: learning-rate factor of the image encoder.

    Returns:
        parameter groups for a ``torch.optim`` optimizer (empty groups left out).
    """
    net = getattr(network, "module", network)
    wide = {id(p) for p in net.wide.parameters()}
    image = {id(p) for p in net.image_encoder.parameters()}
    groups = [
        {"params": [p for p in network.parameters() if id(p) not in wide and id(p) not in image], "lr": lr},
        {"params": [p for p in network.parameters() if id(p) in wide], "lr": lr * wide_lr_scale},
        {"params": [p for p in network.parameters() if id(p) in image], "lr": lr * image_lr_scale},
    ]
    return [g for g in groups if g["params"]]
