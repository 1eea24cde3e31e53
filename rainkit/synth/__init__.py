"""Weather synthesis: physics rain, snow, fog and night (`physics`, and `motion` for weather that moves across video
frames), and the learned TPSeNCE generator (`tpsence`: `load_generator`, `WeatherGenerator`), seeded and reproducible.

`generate_paths`, `GenerateSettings` and `choose_method` (files in, files out; physics or the learned generator) live
in `rainkit.synth.batch`. TPSeNCE's network is in `rainkit.models.tpsence`, its losses in `rainkit.losses.tpsence`, its
trainer in `rainkit.train.tpsence`, as SAPNet's are. The heavy modules are imported lazily.
"""

from rainkit.synth.physics import DOMAINS, PRESETS, RainParams, synthesize

__all__ = ["DOMAINS", "PRESETS", "GenerateSettings", "RainParams", "WeatherGenerator", "choose_method",
           "generate_paths", "load_generator", "synthesize"]


def __getattr__(name):
    if name in ("GenerateSettings", "choose_method", "generate_paths"):
        from rainkit.synth import batch

        return getattr(batch, name)
    if name in ("WeatherGenerator", "load_generator"):
        from rainkit.synth import tpsence

        return getattr(tpsence, name)
    raise AttributeError(name)
