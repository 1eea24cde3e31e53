"""Training losses. Each is built once; feature extractors are passed in, never built per step."""

from rainkit.losses.ssim import SSIMLoss, ssim

__all__ = ["SSIMLoss", "ssim"]
