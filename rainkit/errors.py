"""Exceptions rainkit raises on purpose.

Every message is meant to be shown to a user as one line, so each names the file or
setting at fault and what is wrong with it.
"""


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """An exception's message cut to its first line (and to `limit` characters), or its type's name when it has none:
    what a one-line error quotes of a library's own exception."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class RainkitError(Exception):
    """Base class: an error the user can act on (shown without a traceback by the CLI)."""


class ParameterError(RainkitError):
    """A parameter of a library call has a value it cannot take. `parameter` is the Python name, so each front
    end can say which of its own options that is (the CLI shows `--derain-weights`, not `derain_weights`)."""

    def __init__(self, parameter: str, detail: str):
        self.parameter = parameter
        self.detail = detail
        super().__init__(f"{parameter}: {detail}")

    def for_option(self, option: str) -> "ParameterError":
        """The same error, said with a front end's name for the parameter."""
        return ParameterError(option, self.detail)


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


class MissingExtraError(RainkitError):
    """A feature needs a package from an optional extra (`pip install 'rainkit[EXTRA]'`) that is not installed."""


class RainkitWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI shows it as one line)."""


class MetricNotApplicable(InputError):
    """A metric has no value for one image (too small for it, or uniform); the image's other
    metrics, and the other images, are still scored."""

    def __init__(self, metric: str, image: str, reason: str):
        self.metric = metric
        self.image = image
        self.reason = reason
        super().__init__(f"{image}: {metric} not scored: {reason}")
