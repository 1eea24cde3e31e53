"""Weather synthesis: physics-based rain, snow, fog and night, seeded and reproducible."""

from rainkit.synth.physics import DOMAINS, PRESETS, RainParams, synthesize

__all__ = ["DOMAINS", "PRESETS", "RainParams", "synthesize"]
