"""Exceptions rainkit raises on purpose.

Every message is meant to be shown to a user as one line, so each names the file or
setting at fault and what is wrong with it.
"""


class RainkitError(Exception):
    """Base class: an error the user can act on (shown without a traceback by the CLI)."""


class InputError(RainkitError):
    """An input image or folder cannot be used."""


class WeightsError(RainkitError):
    """Weights are missing, do not verify, or do not fit the architecture."""


class UnsafeCheckpointError(WeightsError):
    """A checkpoint carries pickled objects beyond plain tensors and was refused unread."""


class DeviceError(RainkitError):
    """A requested device or precision is not available."""


class DatasetError(RainkitError):
    """A dataset cannot be found, or is incomplete."""


class ParameterError(RainkitError):
    """A bad argument of a library call, named as the call spells it (`metrics`); a command line
    says it with its own option name through `for_option`."""

    def __init__(self, parameter: str, problem: str):
        self.parameter = parameter
        self.problem = problem
        super().__init__(f"{parameter}: {problem}")

    def for_option(self, option: str) -> "ParameterError":
        return ParameterError(option, self.problem)


class MetricNotApplicable(InputError):
    """A metric has no value for one image (too small for it, or uniform); the image's other
    metrics, and the other images, are still scored."""

    def __init__(self, metric: str, image: str, reason: str):
        self.metric = metric
        self.image = image
        self.reason = reason
        super().__init__(f"{image}: {metric} not scored: {reason}")
