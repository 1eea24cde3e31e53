"""SAPNet (Zheng et al., WACV 2022): PReNet recurrence with dilated residual blocks and CRA."""

from rainkit.models.recurrent import RecurrentDerainNet
from rainkit.registry import WeightsEntry, register_arch

OFFICIAL = WeightsEntry(
    name="sapnet.official",
    filename="sapnet-official.pth",
    sha256="807bb16685280a493236f3e5fa804274198044ad838b5cc060bf66af03a259cb",
    url="https://github.com/ShenZheng2000/SAPNet-for-image-deraining/raw/"
        "47215120e902b02fecd50f7e13309a8e34904bd1/logs/SAPNet/Model11/net_latest.pth",
    license="MIT",
    provenance="official SAPNet release (Zheng et al., WACV 2022), logs/SAPNet/Model11/net_latest.pth, "
               "trained by the authors on Rain100L-style data",
    mirror_paths=("sapnet-official/net_latest.pth",),
)

HEAVY = WeightsEntry(
    name="sapnet.rainkit-heavy",
    filename="sapnet-rainkit-heavy.safetensors",
    sha256="0d01fb09518a438798c1c3443d23edcc30d89e07fcc69e9eb3306b44a4222a17",
    url=None,
    license="MIT",
    provenance="trained by rainkit: sapnet.rainkit fine-tuned on the CPU on physics downpour (Rain100H-style) and heavy "
               "rain with some light rain over coco128 and CamVid/web clear photos (no Rain100 image); see weights/README.md",
)

RAINKIT = WeightsEntry(
    name="sapnet.rainkit",
    filename="sapnet-rainkit.safetensors",
    sha256="9650c2e6b8c3fb50819ad267ba80d8475dc420310ac2e6313d58e1ae0cfeee82",
    url=None,
    license="MIT",
    provenance="trained by rainkit on physics rain synthesised over coco128 and CamVid/web clear photos (no Rain100 "
               "image): 7 epochs of light rain (SSIM) and 7 with faint-streak jitter (SSIM + L1) on the CPU, then 9 "
               "epochs of 973 steps (batch 24, 128 px) on a GPU; see weights/README.md",
    default_for="sapnet",
    heavy_weights=HEAVY.name,
    heavy_threshold=0.12,
)


@register_arch(
    "sapnet",
    task="derain",
    summary="SAPNet (WACV 2022): 6-stage recurrent LSTM net, dilated residual blocks 1-2-4-8-16 with channel residual attention",
    variants={"tiny": {"width": 8, "stages": 2, "dilations": (1, 2), "reduction": 4}},
    weights=(OFFICIAL, RAINKIT, HEAVY),
)
def sapnet(width: int = 32, stages: int = 6, dilations: tuple[int, ...] = (1, 2, 4, 8, 16), reduction: int = 16) -> RecurrentDerainNet:
    return RecurrentDerainNet(width=width, stages=stages, dilations=dilations, attention=True, reduction=reduction)
