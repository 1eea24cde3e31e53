"""Semantic label maps with ESPNet (Cityscapes classes), on rainkit's batch layer: `segment_paths` is the whole
`rainkit segment` command as one call. Its maps are what `rainkit train tpsence --seg-clear/--seg-target` reads."""

from rainkit.segment.batch import CITYSCAPES_PALETTE, OVERLAY_DIR, RECORD_NAME, colour_overlay, segment_paths

__all__ = ["CITYSCAPES_PALETTE", "OVERLAY_DIR", "RECORD_NAME", "colour_overlay", "segment_paths"]
