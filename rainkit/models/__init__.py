"""Network definitions. Importing this package registers every built-in architecture and weights entry."""

from rainkit.models import auxiliary, espnet, prenet, sapnet, tpsence  # noqa: F401
from rainkit.models.recurrent import CRALayer, PooledStats, RecurrentDerainNet

__all__ = ["CRALayer", "PooledStats", "RecurrentDerainNet"]
