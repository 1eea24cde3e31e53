"""TPSeNCE (Zheng et al., WACV 2024): realistic rain generation by unpaired translation.

* `TPSeNCEConfig`, `load_tpsence_config`: the training settings (the paper's defaults).
* `train_tpsence`: the trainer (single process or torchrun DDP), see `rainkit.train.tpsence`.
* `load_generator`, `WeatherGenerator.generate`: native-resolution, seam-free generation, see
  `rainkit.tpsence.generate`.

Submodules are imported lazily so that `import rainkit.tpsence` stays light.
"""

from __future__ import annotations

from rainkit.train.tpsence_config import TPSeNCEConfig, load_tpsence_config

__all__ = ["TPSeNCEConfig", "WeatherGenerator", "load_generator", "load_tpsence_config", "train_tpsence"]


def __getattr__(name):
    if name == "train_tpsence":
        from rainkit.train.tpsence import train_tpsence

        return train_tpsence
    if name in ("WeatherGenerator", "load_generator"):
        from rainkit.tpsence import generate

        return getattr(generate, name)
    raise AttributeError(name)
