"""Every tolerance the tests compare numbers with, in one place (as kornia keeps its tolerances), each with why it
is the size it is. A test that needs a looser one adds it here with its reason, rather than a literal in the test."""

# float64 closed forms (PSNR of a constant difference, SSIM of one window, AP of a few boxes): only rounding.
EXACT64 = 1e-12
# float64 reductions over many pixels or boxes, and golden numbers quoted to about ten digits.
SUM64 = 1e-9
# float32 values of order 1 computed two ways (IoU, compositing an image, a rolled field).
FP32 = 1e-6
# float32 reductions in another order (a loss over chunks vs at once, tiles vs the whole image).
FP32_SUM = 1e-5
# float32 losses with terms of order 10 (patch NCE logits).
FP32_LOSS = 1e-4
# Box coordinates mapped through a letterbox and back in float32 pixels.
BOX_PIXELS = 1e-4
# mAP against Ultralytics' `val`, which matches boxes in float32.
ULTRALYTICS_MAP = 1e-4
# ONNX runtime against torch on the same graph (issue 18's parity target).
ONNX = 1e-4
# Iterative algorithms stopped after a fixed number of steps (Sinkhorn's row sums after 50 iterations).
CONVERGED = 1e-3
# SeNCE's weights sum to N - 1 per anchor only up to Sinkhorn's convergence, summed over 31 terms.
SINKHORN_WEIGHT_SUM = 0.05
# SeNCE with a uniform agreement against plain PatchNCE: the same up to the transport plan's convergence.
SENCE_VS_PATCHNCE = 2e-3
# NIQE/BRISQUE against IQA-PyTorch's calibration table (issue 17: agree within 0.01).
IQA_CALIBRATION = 0.01
# Figures of the official test scripts as they print them: PSNR to 4 decimals of dB, SSIM to 5.
PUBLISHED_PSNR = 0.005
PUBLISHED_SSIM = 0.0002
# A term that is zero in exact arithmetic (LPIPS of an image with itself) after float32 convolutions.
ZERO_FP32 = 1e-7
# Networks evaluated two ways in float32 (the fast path vs the official forward, channels-last vs NCHW, one image of a
# batch): convolution sums of some hundred terms in another order.
FP32_NETWORK = 1e-5
# Gradients of the fast path vs the official forward: the same sums, and their chain through the LSTM.
FP32_GRAD_ABS, FP32_GRAD_REL = 1e-6, 1e-4
# Tiled vs whole-image deraining: the halo covers the receptive field and the pooled statistics are the whole
# image's, so what is left is float32 rounding (well above 60 dB PSNR; measured ~157 dB on the tiny variants).
TILED_VS_WHOLE_DB = 60.0
# The single-pass tiler with float32 buffers vs the whole-image forward: the same convolutions over other tile shapes and
# the CRA means summed per tile (measured at most 1.2e-7 on the tiny variants).
SINGLE_PASS_FP32 = 1e-5
# ... with its default fp16 buffers for fp32 precision: every stored map rounded to 11 bits (measured at most 4.8e-5 on
# the tiny variants; 1.9e-4 with the official SAPNet on a 1280x800 photo, within 1 grey level).
SINGLE_PASS_FP16_STORAGE = 2e-4
# TPSeNCE's generator in the single pass with fp16 buffers, on [-1, 1] outputs: 23 normalised maps rounded to 11 bits
# (measured at most 2.6e-3 for ngf 4 with random weights of gain 1, 6.2e-3 without anti-aliasing; float32 buffers:
# 3.6e-6). Why the engine keeps float32 buffers for fp32.
GENERATOR_FP16_STORAGE = 1e-2
# CPU bf16 vs fp32 of a tiny variant: bf16 rounds activations to 8 bits of mantissa (measured ~75 dB, at most 8e-4).
BF16_VS_FP32_DB = 50.0
BF16_MAX_ABS = 0.5 / 255
