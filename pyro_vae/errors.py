"""Errors a user can act on.

Each carries a message that names the problem and the fix. The command-line
entry points print ``str(error)`` and exit with status 2 instead of a traceback.
"""


class PyroVAEError(Exception):
    """Base class of the errors this project raises for bad input or faults."""


class DataError(PyroVAEError):
    """Missing dataset files, or images that the model cannot take."""


class DeviceError(PyroVAEError):
    """A device was asked for that this machine does not have."""


class CheckpointError(PyroVAEError):
    """A checkpoint is missing, unreadable or of another shape."""


class TrainingDiverged(PyroVAEError):
    """The loss became NaN or infinite; training stopped at ``epoch``/``step``."""

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch = epoch
        self.step = step


class EstimationError(PyroVAEError, ValueError):
    """An estimator was given something it cannot estimate from (K < 1, no data plate, NaN weights)."""


class ConfigError(PyroVAEError, ValueError):
    """Settings that do not go together (``--jit`` with an objective Pyro cannot compile, say)."""


class CompileError(ConfigError):
    """A JIT-compiled loss that failed to compile, or disagreed with the plain loss on a probe batch."""


class CaptureError(ConfigError):
    """A training step that failed to capture in a CUDA graph, or whose replay disagreed with the plain step."""


class ReportError(PyroVAEError):
    """A report folder that is missing or damaged, or reports that cannot be compared (other test images)."""


class PeerFailed(PyroVAEError):
    """Another process of a ``torchrun`` job failed (``rank`` names it); this one stopped with it."""

    def __init__(self, message: str, rank: int):
        super().__init__(message)
        self.rank = rank


class FolderInUse(PyroVAEError):
    """Another process holds the output folder's lock (`pyro_vae.run_lock`); nothing was written."""


class WriteFailed(PyroVAEError):
    """A file could not be written (no space, quota, I/O error, read-only file system): exit status 1, not 2.

    The message names the file, the operating system's reason and what was kept.
    """

    exit_status = 1
