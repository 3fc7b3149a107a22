"""Which exceptions are the user's to fix, and how the CLI prints them: one line, no traceback.

A user error is bad input: a path that does not exist, an unknown recipe or model, an
ONNX operator bitfold does not support (the importer names the node), empty or unusable
calibration data, a malformed artifact. Anything else is a bug in bitfold; ``--debug``
shows its traceback.
"""

from __future__ import annotations


class CLIError(Exception):
    """A problem with what the user asked for, raised by the CLI itself."""


def user_error_types() -> tuple:
    """The exception types whose message is meant for the user (imported lazily: they pull in torch)."""
    from bitfold.api.report import AnalysisError
    from bitfold.ir import CaptureError, OnnxImportError
    from bitfold.ir.formats import FormatError
    from bitfold.ir.serialize import GraphFormatError
    from bitfold.passes.calibration import CalibrationError
    from bitfold.recipes import RecipeError
    from bitfold.zoo import ZooMissingError

    return (CLIError, AnalysisError, CaptureError, OnnxImportError, FormatError, GraphFormatError,
            CalibrationError, RecipeError, ZooMissingError, OSError, ValueError)


def one_line(err: BaseException) -> str:
    """The error's message with its whitespace (newlines included) collapsed to single spaces."""
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text or type(err).__name__
