"""PReNet (Ren et al., CVPR 2019): progressive recurrent network, plain residual blocks."""

from rainkit.models.recurrent import RecurrentDerainNet
from rainkit.registry import WeightsEntry, register_arch

_UPSTREAM = "https://github.com/csdwren/PReNet/raw/6d908d1e3c7ff5c26fee624112297ad1c8603ca7/logs"

RAIN100L = WeightsEntry(
    name="prenet.rain100l",
    filename="prenet-rain100l.pth",
    sha256="cb9b743bb33cf6e5c56ba45f8ade93add46266dea9fa582e1934dc5eed942333",
    url=f"{_UPSTREAM}/Rain100L/PReNet6/net_latest.pth",
    license="no licence file upstream: comparison use only",
    provenance="official PReNet6 (Ren et al., CVPR 2019) trained on RainTrainL",
    mirror_paths=("prenet-official/rain100l/net_latest.pth",),
)

RAIN100H = WeightsEntry(
    name="prenet.rain100h",
    filename="prenet-rain100h.pth",
    sha256="127c0098787c5272f1f8583f6c5202e7ef674f750cd145a1691912a6d9e96210",
    url=f"{_UPSTREAM}/Rain100H/PReNet6/net_latest.pth",
    license="no licence file upstream: comparison use only",
    provenance="official PReNet6 (Ren et al., CVPR 2019) trained on RainTrainH",
    mirror_paths=("prenet-official/rain100h/net_latest.pth",),
)


@register_arch(
    "prenet",
    task="derain",
    summary="PReNet6 (CVPR 2019): 6-stage recurrent LSTM net, 5 plain residual blocks",
    variants={"tiny": {"width": 8, "stages": 2, "blocks": 2}},
    weights=(RAIN100L, RAIN100H),
)
def prenet(width: int = 32, stages: int = 6, blocks: int = 5) -> RecurrentDerainNet:
    return RecurrentDerainNet(width=width, stages=stages, dilations=(1,) * blocks, attention=False)
