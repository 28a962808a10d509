"""BiSeNet face parsing for MuseTalk's blend masks, when its weights are there
(``weights/musetalk/face-parse-bisent/79999_iter.pth``).

The network is the face-parsing BiSeNet that upstream TMElyralab/MuseTalk
(0a89dec4, ``musetalk/utils/face_parsing/model.py`` and ``resnet.py``) loads:
a ResNet-18 context path with attention refinement, a feature fusion module
and three output heads, 19 classes. Written here from its structure, with the
module names its checkpoint's keys need (the file is one state dict, loaded
strictly; the ResNet-18 ImageNet file upstream also reads is only its
training-time initialisation and is not needed). Only the main head's output
is used, as upstream does.

``jaw_region`` is v1.5's "jaw" mode (``FaceParsing.__call__`` there): the skin
(class 1) stretched downwards by a cone-shaped kernel so an opening jaw stays
inside, narrowed at the cheeks, the nose (10) left out, the mouth and lips
(11-13) in. The rest of the mask (the lower half of the expanded crop, the
blur) is models/avatar/musetalk_prepare.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.avatar.musetalk_nets import import_torch

PARSE_SIZE = 512  # upstream parses the expanded face crop at 512x512
SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP = 1, 10, 11, 12, 13
CHEEK_WIDTH = 90  # realtime_inference.py's --left_cheek_width / --right_cheek_width
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def build_bisenet(classes: int = 19) -> Any:
    """The face-parsing BiSeNet (random weights until a state dict is loaded)."""
    torch = import_torch()
    nn, F = torch.nn, torch.nn.functional

    class ConvBNReLU(nn.Module):  # type: ignore[name-defined]
        def __init__(self, cin: int, cout: int, k: int = 3) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, 1, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x: Any) -> Any:
            return F.relu(self.bn(self.conv(x)))

    class Block(nn.Module):  # type: ignore[name-defined]
        """ResNet's basic block."""

        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if cin != cout or stride != 1:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: Any) -> Any:
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
            for i, (cin, cout, stride) in enumerate(widths, 1):
                layer = nn.Sequential(Block(cin, cout, stride), Block(cout, cout, 1))
                setattr(self, f"layer{i}", layer)

        def forward(self, x: Any) -> tuple[Any, Any, Any]:
            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
            x8 = self.layer2(self.layer1(x))
            x16 = self.layer3(x8)
            return x8, x16, self.layer4(x16)

    class Attention(nn.Module):  # type: ignore[name-defined]
        """Attention refinement: features times a per-channel gate from their mean."""

        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.conv = ConvBNReLU(cin, cout)
            self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
            self.bn_atten = nn.BatchNorm2d(cout)

        def forward(self, x: Any) -> Any:
            feat = self.conv(x)
            gate = self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True)))
            return feat * torch.sigmoid(gate)

    class ContextPath(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.resnet = ResNet18()
            self.arm16 = Attention(256, 128)
            self.arm32 = Attention(512, 128)
            self.conv_head32 = ConvBNReLU(128, 128)
            self.conv_head16 = ConvBNReLU(128, 128)
            self.conv_avg = ConvBNReLU(512, 128, k=1)

        def forward(self, x: Any) -> tuple[Any, Any]:
            x8, x16, x32 = self.resnet(x)
            tail = self.conv_avg(x32.mean(dim=(2, 3), keepdim=True))
            up32 = F.interpolate(self.arm32(x32) + tail, x16.shape[2:], mode="nearest")
            up32 = self.conv_head32(up32)
            up16 = F.interpolate(self.arm16(x16) + up32, x8.shape[2:], mode="nearest")
            return x8, self.conv_head16(up16)

    class Fusion(nn.Module):  # type: ignore[name-defined]
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.convblk = ConvBNReLU(cin, cout, k=1)
            self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
            self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

        def forward(self, a: Any, b: Any) -> Any:
            feat = self.convblk(torch.cat([a, b], dim=1))
            pooled = feat.mean(dim=(2, 3), keepdim=True)
            gate = torch.sigmoid(self.conv2(F.relu(self.conv1(pooled))))
            return feat * gate + feat

    class Head(nn.Module):  # type: ignore[name-defined]
        def __init__(self, cin: int, mid: int) -> None:
            super().__init__()
            self.conv = ConvBNReLU(cin, mid)
            self.conv_out = nn.Conv2d(mid, classes, 1, bias=False)

        def forward(self, x: Any) -> Any:
            return self.conv_out(self.conv(x))

    class BiSeNet(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.cp = ContextPath()
            self.ffm = Fusion(256, 256)
            self.conv_out = Head(256, 256)
            self.conv_out16 = Head(128, 64)  # training-time heads: in the checkpoint, unused
            self.conv_out32 = Head(128, 64)

        def forward(self, x: Any) -> Any:
            x8, cp8 = self.cp(x)
            logits = self.conv_out(self.ffm(x8, cp8))
            return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)

    return BiSeNet()


class FaceParser:
    """Class per pixel of a face crop, from the BiSeNet checkpoint at ``path``."""

    def __init__(self, path: Path, device: Any) -> None:
        torch = import_torch()
        self.device = device
        net = build_bisenet()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        self.net = net.to(device).eval()

    def classes(self, rgb: np.ndarray) -> np.ndarray:
        """(512, 512) class ids of an RGB crop resized to 512x512."""
        torch = import_torch()
        x = cv2.resize(rgb, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR)
        x = (x.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        tensor = torch.from_numpy(x.transpose(2, 0, 1)[None].copy()).to(self.device)
        with torch.inference_mode():
            out: np.ndarray = self.net(tensor)[0].argmax(0).to(torch.uint8).cpu().numpy()
        return out

    def region(self, rgb: np.ndarray) -> np.ndarray:
        """What MuseTalk redraws in an RGB crop (uint8 0/255, the crop's size)."""
        h, w = rgb.shape[:2]
        region = jaw_region(self.classes(rgb))
        return cv2.resize(region, (w, h), interpolation=cv2.INTER_LINEAR)


def _cone_kernel() -> np.ndarray:
    """v1.5's downward kernel: a widening cone (its lower half) over a straight tail."""
    cone, tail = 21, 12
    size = cone + tail
    kernel = np.zeros((size, size), np.uint8)
    centre = size // 2
    for row in range(cone // 2, cone):
        half = row - cone // 2
        kernel[row, centre - half : centre + half + 1] = 1
    base = int(kernel[cone - 1].sum())
    kernel[cone:, max(0, centre - base // 2) : min(size, centre + base // 2 + 1)] = 1
    return kernel


def jaw_region(classes: np.ndarray) -> np.ndarray:
    """The region (uint8 0/255) of a parsed 512-scale crop that MuseTalk redraws."""
    h, w = classes.shape
    skin = np.where(classes == SKIN, 255, 0).astype(np.uint8)
    dilated: np.ndarray = cv2.dilate(skin, _cone_kernel())
    eroded: np.ndarray = cv2.erode(
        dilated, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3)), iterations=2
    )
    cheeks = np.zeros((h, w), np.uint8)  # the outer columns, where the face is narrowed
    centre = w // 2
    cheeks[:, : max(0, centre - CHEEK_WIDTH * w // PARSE_SIZE)] = 255
    cheeks[:, centre + CHEEK_WIDTH * w // PARSE_SIZE :] = 255
    face = (eroded & cheeks) | (dilated & ~cheeks)
    region = ((face == 255) & (classes != NOSE)) | np.isin(classes, (MOUTH, UPPER_LIP, LOWER_LIP))
    return np.where(region, 255, 0).astype(np.uint8)
