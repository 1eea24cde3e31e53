"""SAPNet (Zheng et al., WACV 2022): PReNet recurrence with dilated residual blocks and CRA."""

from rainkit.hub.registry import register_arch
from rainkit.models.recurrent import RecurrentDerainNet


@register_arch(
    "sapnet",
    task="derain",
    summary="SAPNet (WACV 2022): 6-stage recurrent LSTM net, dilated residual blocks 1-2-4-8-16 with channel residual attention",
    variants={"tiny": {"width": 8, "stages": 2, "dilations": (1, 2), "reduction": 4}},
)
def sapnet(width: int = 32, stages: int = 6, dilations: tuple[int, ...] = (1, 2, 4, 8, 16), reduction: int = 16) -> RecurrentDerainNet:
    return RecurrentDerainNet(width=width, stages=stages, dilations=dilations, attention=True, reduction=reduction)
