"""User-facing errors: the command-line entry points print these as one clear paragraph
(no traceback) and exit with status 1."""


class GmlabError(Exception):
    """Base class of every error whose message is meant for the user, not a developer."""


class DataNotFoundError(GmlabError):
    """Dataset files are missing, truncated or corrupt."""


class ShapeError(GmlabError, ValueError):
    """An input has the wrong shape or dtype for the model or dataset."""


class NonFiniteError(GmlabError, FloatingPointError):
    """A batch or a metric contains NaN or inf."""


class CheckpointMismatchError(GmlabError):
    """A checkpoint does not fit the model or config it is loaded into."""


class SingularCovarianceError(GmlabError, FloatingPointError):
    """A covariance (or its low-rank capacitance matrix) is not positive definite even when
    factored in float64."""


class ConfigError(GmlabError, ValueError):
    """A config option is unknown, out of range, or does not fit the other options."""


class UntrustedFileError(GmlabError):
    """A file gmlab reads (checkpoint, stored run config) names code it may not run
    (`gmlab.utils.trust`)."""
