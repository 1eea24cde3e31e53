"""Built-in weights entries. Official checkpoints are registered with their upstream raw URLs."""

from rainkit.hub.weights import WeightsEntry, register_weights

register_weights(WeightsEntry(
    name="sapnet.official",
    filename="sapnet-official.pth",
    sha256="807bb16685280a493236f3e5fa804274198044ad838b5cc060bf66af03a259cb",
    url="https://github.com/ShenZheng2000/SAPNet-for-image-deraining/raw/"
        "47215120e902b02fecd50f7e13309a8e34904bd1/logs/SAPNet/Model11/net_latest.pth",
    license="MIT",
    provenance="official SAPNet release (Zheng et al., WACV 2022), logs/SAPNet/Model11/net_latest.pth, "
               "trained by the authors on Rain100L-style data",
    mirror_paths=("sapnet-official/net_latest.pth",),
))

register_weights(WeightsEntry(
    name="prenet.rain100l",
    filename="prenet-rain100l.pth",
    sha256="cb9b743bb33cf6e5c56ba45f8ade93add46266dea9fa582e1934dc5eed942333",
    url="https://github.com/csdwren/PReNet/raw/6d908d1e3c7ff5c26fee624112297ad1c8603ca7/logs/Rain100L/PReNet6/net_latest.pth",
    license="no licence file upstream: comparison use only",
    provenance="official PReNet6 (Ren et al., CVPR 2019) trained on RainTrainL",
    mirror_paths=("prenet-official/rain100l/net_latest.pth",),
))

register_weights(WeightsEntry(
    name="prenet.rain100h",
    filename="prenet-rain100h.pth",
    sha256="127c0098787c5272f1f8583f6c5202e7ef674f750cd145a1691912a6d9e96210",
    url="https://github.com/csdwren/PReNet/raw/6d908d1e3c7ff5c26fee624112297ad1c8603ca7/logs/Rain100H/PReNet6/net_latest.pth",
    license="no licence file upstream: comparison use only",
    provenance="official PReNet6 (Ren et al., CVPR 2019) trained on RainTrainH",
    mirror_paths=("prenet-official/rain100h/net_latest.pth",),
))

register_weights(WeightsEntry(
    name="espnet.cityscapes",
    filename="espnet-cityscapes.pth",
    sha256="343b0e77e8545d36113c4f3efbf1ee349256f25c97c9f9d5ddefe45f2f49763e",
    url="https://github.com/sacmehta/ESPNet/raw/afe71c38edaee3514ca44e0adcafdf36109bf437/pretrained/decoder/espnet_p_2_q_8.pth",
    license="MIT",
    provenance="official ESPNet (Mehta et al., ECCV 2018) with the light decoder, p=2, q=8, trained on Cityscapes "
               "(19 classes + unlabelled); pretrained/decoder/espnet_p_2_q_8.pth",
    mirror_paths=("espnet-cityscapes/espnet_p_2_q_8.pth",),
))

register_weights(WeightsEntry(
    name="sapnet.rainkit",
    filename="sapnet-rainkit.safetensors",
    sha256="9650c2e6b8c3fb50819ad267ba80d8475dc420310ac2e6313d58e1ae0cfeee82",
    url=None,
    license="MIT",
    provenance="trained by rainkit on physics rain synthesised over coco128 and CamVid/web clear photos (no Rain100 "
               "image): 7 epochs of light rain (SSIM) and 7 with faint-streak jitter (SSIM + L1) on the CPU, then 9 "
               "epochs of 973 steps (batch 24, 128 px) on a GPU; see weights/README.md",
    default_for="sapnet",
))
