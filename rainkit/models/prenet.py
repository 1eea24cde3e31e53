"""PReNet (Ren et al., CVPR 2019): progressive recurrent network, plain residual blocks."""

from rainkit.hub.registry import register_arch
from rainkit.models.recurrent import RecurrentDerainNet


@register_arch(
    "prenet",
    task="derain",
    summary="PReNet6 (CVPR 2019): 6-stage recurrent LSTM net, 5 plain residual blocks",
    variants={"tiny": {"width": 8, "stages": 2, "blocks": 2}},
)
def prenet(width: int = 32, stages: int = 6, blocks: int = 5) -> RecurrentDerainNet:
    return RecurrentDerainNet(width=width, stages=stages, dilations=(1,) * blocks, attention=False)
