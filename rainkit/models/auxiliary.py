"""Weights rainkit borrows rather than trains: the backbones of SAPNet's training losses and the detector.

They are registered like rainkit's own checkpoints (full sha256, licence, provenance), so the
code that loads them resolves, verifies and reports them through the same registry. The
networks themselves come from torchvision and Ultralytics, so these entries declare no
architecture of rainkit's. Each digest says where it was checked.
"""

from rainkit.registry import WeightsEntry, register_weights

VGG16_IMAGENET = register_weights(WeightsEntry(
    name="vgg16.imagenet",
    filename="vgg16-397923af.pth",
    sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    license="BSD-3-Clause (torchvision); trained on ImageNet, whose terms restrict use to research",
    provenance="torchvision's VGG-16 IMAGENET1K_V1 weights (553,433,881 bytes), used by SAPNet training's contrastive "
               "and LPIPS losses; the file name carries the digest's first 8 hex digits (torchvision's check), the "
               "full digest is the one pinned by several independent public projects' manifests, found by exact-string "
               "search of public code",
))

LPIPS_VGG = register_weights(WeightsEntry(
    name="lpips.vgg-v0.1",
    filename="lpips-vgg-v0.1.pth",
    sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    url="https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/082bb24f84c091ea94de2867d34c4544f68e0963/"
        "lpips/weights/v0.1/vgg.pth",
    license="BSD-2-Clause (LPIPS, Zhang et al. 2018)",
    provenance="LPIPS v0.1 linear layers for VGG (7,289 bytes), used by SAPNet training's LPIPS loss; digest computed "
               "here from lpips/weights/v0.1/vgg.pth inside the PyPI wheel lpips-0.1.4-py3-none-any.whl, and pinned "
               "with the same value by public projects at PerceptualSimilarity commit 082bb24",
    mirror_paths=("lpips/weights/v0.1/vgg.pth", "v0.1/vgg.pth"),
))

DEEPLAB_COCO_VOC = register_weights(WeightsEntry(
    name="deeplabv3_mobilenet_v3_large.coco-voc",
    filename="deeplabv3_mobilenet_v3_large-fc3c493d.pth",
    sha256="fc3c493d68e89cc31ef488c803d5d7dd2f3190fb570598faa49fef69be8e5e70",
    url="https://download.pytorch.org/models/deeplabv3_mobilenet_v3_large-fc3c493d.pth",
    license="BSD-3-Clause (torchvision); trained on COCO with the 20 VOC classes",
    provenance="torchvision's DeepLabV3-MobileNetV3-Large COCO_WITH_VOC_LABELS_V1 weights (44,356,159 bytes), the "
               "segmenter of SAPNet training's segmentation loss; the file name carries the digest's first 8 hex "
               "digits, the full digest is the one pinned by several independent public projects, found by "
               "exact-string search of public code",
))

YOLO11N_COCO = register_weights(WeightsEntry(
    name="yolo11n.coco",
    filename="yolo11n.pt",
    sha256="0ebbc80d4a7680d14987a577cd21342b65ecfd94632bd9a8da63ae6417644ee1",
    url="https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11n.pt",
    license="AGPL-3.0 (Ultralytics)",
    provenance="Ultralytics YOLO11n, COCO 80 classes, from the v8.3.0 release of ultralytics/assets: the default "
               "detector of `rainkit detect`; the full digest is the one pinned by many independent public projects, "
               "found by exact-string search of public code",
))
