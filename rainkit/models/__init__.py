"""Network definitions. Importing this package registers every built-in architecture."""

from rainkit.models import espnet, prenet, sapnet, tpsence  # noqa: F401
from rainkit.models.recurrent import CRALayer, PooledStats, RecurrentDerainNet

__all__ = ["CRALayer", "PooledStats", "RecurrentDerainNet"]
