"""ESPNet (Mehta et al., ECCV 2018): the light-weight semantic segmenter TPSeNCE's SeNCE needs.

The network is the "decoder" ESPNet of the official release (github.com/sacmehta/ESPNet, commit
afe71c38edaee3514ca44e0adcafdf36109bf437, `train/Model.py`, class `ESPNet`), rebuilt here module
for module so that the official Cityscapes checkpoint `pretrained/decoder/espnet_p_2_q_8.pth`
loads with strict key matching:

* ESPNet-C encoder (`encoder.*`): a strided 3x3 CBR stem (16 channels) at 1/2 resolution
  concatenated with the 1/2-downsampled image (19 channels); an ESP down-sampler to 64 channels
  at 1/4 and `p` ESP blocks; the concatenation [blocks, down-sampler, 1/4 image] (131 channels);
  an ESP down-sampler to 128 channels at 1/8 and `q` ESP blocks; concatenation (256 channels) and
  a 1x1 classifier to `classes` channels.
* The decoder: batch norm and a 2x transposed convolution of the 1/8 scores, concatenated with a
  1x1 projection of the 131-channel 1/4 features, an ESP block (no residual), a 2x transposed
  convolution, concatenated with the 19-channel 1/2 features, a 3x3 CBR, and a last 2x
  transposed convolution to full resolution.

An ESP block reduces with a 1x1 (or strided 3x3) convolution to n = nOut/5 channels, runs five
dilated 3x3 convolutions (rates 1, 2, 4, 8, 16; the first gives the remaining nOut - 4n
channels), sums the dilated branches hierarchically (d2, d2+d4, d2+d4+d8, d2+d4+d8+d16) to avoid
gridding, concatenates, optionally adds the input, then batch norm (eps 1e-3) and PReLU.

The official checkpoint predates `num_batches_tracked`, so the batch norms here carry no such
buffer (inference never uses it).

Normalisation is the one of the official training and test scripts: the image is read as BGR
0..255, the per-channel Cityscapes mean (72.39, 82.91, 73.16) is subtracted and the result is
divided by the std (45.32, 46.15, 44.91), both in B, G, R order, and then divided by 255 again.
The 20 output classes are the 19 Cityscapes training classes (0 road, 1 sidewalk, 2 building,
3 wall, 4 fence, 5 pole, 6 traffic light, 7 traffic sign, 8 vegetation, 9 terrain, 10 sky,
11 person, 12 rider, 13 car, 14 truck, 15 bus, 16 train, 17 motorcycle, 18 bicycle) and 19 for
unlabelled.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rainkit.engine import InferenceEngine
from rainkit.registry import WeightsEntry, register_arch

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle", "unlabelled",
)
# The official scripts' statistics, in the B, G, R channel order of cv2.imread, on a 0..255 scale.
ESPNET_MEAN_BGR = (72.3923111, 82.90893555, 73.15840149)
ESPNET_STD_BGR = (45.3192215, 46.15289307, 44.91483307)
ROAD, SKY, UNLABELLED = 0, 10, 19


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-3)
    bn.register_buffer("num_batches_tracked", None)  # absent from the official checkpoints
    return bn


class _Conv(nn.Module):
    """A bias-free convolution with 'same' padding (`conv` in the checkpoint)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        pad = (kernel - 1) // 2 * dilation
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, dilation=dilation, bias=False)

    def forward(self, x):
        return self.conv(x)


class _BR(nn.Module):
    """Batch norm then PReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = _batch_norm(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x):
        return self.act(self.bn(x))


class _CBR(nn.Module):
    """Convolution, batch norm, PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        pad = (kernel - 1) // 2
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, bias=False)
        self.bn = _batch_norm(cout)
        self.act = nn.PReLU(cout)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _ESPBranches(nn.Module):
    """Reduce, split into five dilated branches, fuse hierarchically (shared by both ESP modules)."""

    def __init__(self, cin: int, cout: int, reduce_kernel: int, reduce_stride: int):
        super().__init__()
        n = cout // 5
        self.c1 = _Conv(cin, n, reduce_kernel, reduce_stride)
        self.d1 = _Conv(n, cout - 4 * n, 3, 1, 1)
        self.d2 = _Conv(n, n, 3, 1, 2)
        self.d4 = _Conv(n, n, 3, 1, 4)
        self.d8 = _Conv(n, n, 3, 1, 8)
        self.d16 = _Conv(n, n, 3, 1, 16)

    def branches(self, x):
        reduced = self.c1(x)
        s1 = self.d2(reduced)
        s2 = s1 + self.d4(reduced)
        s3 = s2 + self.d8(reduced)
        s4 = s3 + self.d16(reduced)
        return torch.cat([self.d1(reduced), s1, s2, s3, s4], 1)


class ESPDownsampler(_ESPBranches):
    """Strided ESP module (`DownSamplerB` upstream): strided 3x3 reduction, no residual."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, 2)
        self.bn = _batch_norm(cout)
        self.act = nn.PReLU(cout)

    def forward(self, x):
        return self.act(self.bn(self.branches(x)))


class ESPBlock(_ESPBranches):
    """ESP module (`DilatedParllelResidualBlockB` upstream): 1x1 reduction, optional residual."""

    def __init__(self, cin: int, cout: int, residual: bool = True):
        super().__init__(cin, cout, 1, 1)
        self.bn = _BR(cout)
        self.residual = residual

    def forward(self, x):
        out = self.branches(x)
        if self.residual:
            out = out + x
        return self.bn(out)


def _image_pyramid(x: torch.Tensor, times: int) -> torch.Tensor:
    for _ in range(times):
        x = F.avg_pool2d(x, 3, stride=2, padding=1)  # count_include_pad=True, as nn.AvgPool2d upstream
    return x


class ESPNetEncoder(nn.Module):
    """ESPNet-C. `features` returns what the decoder needs: the stem (1/2), the 1/4 features, the 1/8 scores."""

    def __init__(self, classes: int = 20, p: int = 2, q: int = 8):
        super().__init__()
        self.level1 = _CBR(3, 16, 3, 2)
        self.b1 = _BR(16 + 3)
        self.level2_0 = ESPDownsampler(16 + 3, 64)
        self.level2 = nn.ModuleList([ESPBlock(64, 64) for _ in range(p)])
        self.b2 = _BR(128 + 3)
        self.level3_0 = ESPDownsampler(128 + 3, 128)
        self.level3 = nn.ModuleList([ESPBlock(128, 128) for _ in range(q)])
        self.b3 = _BR(256)
        self.classifier = _Conv(256, classes, 1)

    def features(self, x: torch.Tensor):
        stem = self.level1(x)
        half = self.b1(torch.cat([stem, _image_pyramid(x, 1)], 1))
        down2 = self.level2_0(half)
        out = down2
        for block in self.level2:
            out = block(out)
        quarter = self.b2(torch.cat([out, down2, _image_pyramid(x, 2)], 1))
        down3 = self.level3_0(quarter)
        out = down3
        for block in self.level3:
            out = block(out)
        eighth = self.b3(torch.cat([down3, out], 1))
        return stem, quarter, self.classifier(eighth)

    def forward(self, x):
        return self.features(x)[2]


class ESPNet(nn.Module):
    """ESPNet with its light decoder; `forward` maps a normalised (N, 3, H, W) batch, H and W
    multiples of 8, to (N, classes, H, W) scores."""

    def __init__(self, classes: int = 20, p: int = 2, q: int = 8):
        super().__init__()
        self.classes = classes
        self.encoder = ESPNetEncoder(classes, p, q)
        self.level3_C = _Conv(128 + 3, classes, 1)
        self.br = _batch_norm(classes)
        self.conv = _CBR(16 + classes, classes, 3, 1)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(_BR(2 * classes), ESPBlock(2 * classes, classes, residual=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False), _BR(classes))
        self.classifier = nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem, quarter, scores8 = self.encoder.features(x)
        up8 = self.up_l3(self.br(scores8))
        up4 = self.up_l2(self.combine_l2_l3(torch.cat([self.level3_C(quarter), up8], 1)))
        return self.classifier(self.conv(torch.cat([up4, stem], 1)))


CITYSCAPES_WEIGHTS = WeightsEntry(
    name="espnet.cityscapes",
    filename="espnet-cityscapes.pth",
    sha256="343b0e77e8545d36113c4f3efbf1ee349256f25c97c9f9d5ddefe45f2f49763e",
    url="https://github.com/sacmehta/ESPNet/raw/afe71c38edaee3514ca44e0adcafdf36109bf437/pretrained/decoder/espnet_p_2_q_8.pth",
    license="MIT",
    provenance="official ESPNet (Mehta et al., ECCV 2018) with the light decoder, p=2, q=8, trained on Cityscapes "
               "(19 classes + unlabelled); pretrained/decoder/espnet_p_2_q_8.pth",
    mirror_paths=("espnet-cityscapes/espnet_p_2_q_8.pth",),
)


@register_arch(
    "espnet",
    task="segment",
    summary="ESPNet (ECCV 2018) semantic segmentation with the light decoder, Cityscapes 19 classes + unlabelled",
    variants={"tiny": {"p": 1, "q": 1}},
    weights=(CITYSCAPES_WEIGHTS,),
)
def espnet(classes: int = 20, p: int = 2, q: int = 8) -> ESPNet:
    return ESPNet(classes=classes, p=p, q=q)


def normalize_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> the network's input: BGR, (255 x - mean) / std / 255."""
    bgr = rgb.flip(1) * 255.0
    mean = torch.tensor(ESPNET_MEAN_BGR, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(ESPNET_STD_BGR, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (bgr - mean) / std / 255.0


class Segmenter(InferenceEngine):
    """A loaded ESPNet plus how to run it: `segment(rgb) -> labels` at the image's own resolution.

    The image is reflect-padded to a multiple of 8 (the network's stride) and the scores are
    cropped back, so a label map always has the input's size. `width` optionally rescales the
    image to that width first (the official test script feeds 1024x512 Cityscapes frames, objects
    at half the scale of the 2048x1024 originals); labels are then resized back by nearest
    neighbour.
    """

    arch = "espnet"

    def __init__(self, model: ESPNet, device: torch.device | str = "cpu", width: int | None = None, **engine) -> None:
        super().__init__(model.eval().requires_grad_(False), device, **engine)
        self.width = width

    @torch.inference_mode()
    def scores(self, rgb: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> (N, classes, H, W) float32 scores."""
        _, _, height, width = rgb.shape
        x = normalize_rgb(rgb.to(self.device, torch.float32))
        pad_h, pad_w = (-height) % 8, (-width) % 8
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        with self.autocast():
            return self.model(x)[:, :, :height, :width].float()

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 float32 RGB in [0, 1] -> H x W uint8 labels (Cityscapes train ids, 19 = unlabelled)."""
        import cv2

        height, width = rgb.shape[:2]
        image = np.ascontiguousarray(rgb, dtype=np.float32)
        if self.width and self.width != width:
            new_h = max(8, int(round(height * self.width / width)))
            image = cv2.resize(image, (self.width, new_h), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
        labels = self.scores(x)[0].argmax(0).to(torch.uint8).cpu().numpy()
        if labels.shape != (height, width):
            labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
        return labels

    def describe(self) -> dict:
        return {**super().describe(), "width": self.width}


def load_segmenter(weights: str = "espnet.cityscapes", device: torch.device | str = "cpu",
                   width: int | None = None) -> Segmenter:
    """ESPNet with verified weights (a registered name such as `espnet.cityscapes`, or a path)."""
    return Segmenter.load("espnet", weights, device=device, width=width)
