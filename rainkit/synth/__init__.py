"""Weather synthesis: physics-based rain, snow, fog and night, seeded and reproducible.

`generate_paths`, `GenerateSettings` and `choose_method` (files in, files out; physics or the
learned TPSeNCE generator) live in `rainkit.synth.batch` and are imported lazily.
"""

from rainkit.synth.physics import DOMAINS, PRESETS, RainParams, synthesize

__all__ = ["DOMAINS", "PRESETS", "GenerateSettings", "RainParams", "choose_method", "generate_paths", "synthesize"]


def __getattr__(name):
    if name in ("GenerateSettings", "choose_method", "generate_paths"):
        from rainkit.synth import batch

        return getattr(batch, name)
    raise AttributeError(name)
