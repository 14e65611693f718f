"""User-facing errors: one clear line each, and a distinct exit code per kind of problem."""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1      # parity below a requested threshold
    USAGE = 2             # bad flags or config (click uses 2 as well)
    INPUT_NOT_FOUND = 3   # missing or unreadable input file
    INVALID_MODEL = 4     # not ONNX, truncated, inconsistent tensors, missing external data
    NOTHING_TO_DO = 5     # no eligible layer
    INVALID_WEIGHTS = 6   # NaN/Inf or otherwise unusable weight values
    OUTPUT_ERROR = 7      # output path equals input, unwritable folder, disk full
    RUNTIME_ERROR = 8     # onnxruntime could not load or run a model
    INTERRUPTED = 130     # Ctrl-C / SIGINT (128 + SIGINT, as shells report it)


class OnnxVQError(Exception):
    """An error the CLI prints as one line, exiting with ``exit_code``."""

    exit_code = ExitCode.RUNTIME_ERROR

    def __init__(self, message: str, exit_code: ExitCode | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputNotFound(OnnxVQError):
    exit_code = ExitCode.INPUT_NOT_FOUND


class InvalidModel(OnnxVQError):
    exit_code = ExitCode.INVALID_MODEL


class NothingToCompress(OnnxVQError):
    exit_code = ExitCode.NOTHING_TO_DO


class InvalidWeights(OnnxVQError):
    exit_code = ExitCode.INVALID_WEIGHTS


class OutputError(OnnxVQError):
    exit_code = ExitCode.OUTPUT_ERROR


class ConfigError(OnnxVQError):
    exit_code = ExitCode.USAGE


class RuntimeFailure(OnnxVQError):
    exit_code = ExitCode.RUNTIME_ERROR
