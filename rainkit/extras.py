"""Optional extras: packages `pip install rainkit` leaves out, imported where a feature needs them.

`pip install rainkit` derains, generates and benchmarks PSNR/SSIM. NIQE/BRISQUE need pyiqa
(`rainkit[iqa]`, its licence is non-commercial) and detection needs Ultralytics (`rainkit[detect]`,
AGPL-3.0); `rainkit[all]` has both. `require` is the one place that turns a missing extra into a
one-line error saying what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rainkit.errors import MissingExtraError


def require(module: str, *, extra: str, for_what: str) -> ModuleType:
    """Import `module` (e.g. "pyiqa.archs.niqe_arch"), or raise MissingExtraError naming the extra to install:
    "NIQE/BRISQUE need pyiqa: pip install 'rainkit[iqa]'"."""
    package = module.split(".", 1)[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or "").split(".", 1)[0]
        if missing and missing != package:  # the package is there but one of its own dependencies is not
            raise MissingExtraError(f"{for_what} need {package}, which could not import {missing}: "
                                    f"pip install 'rainkit[{extra}]'") from None
        raise MissingExtraError(f"{for_what} need {package}: pip install 'rainkit[{extra}]'") from None
