"""Which exceptions are the user's to fix, and how the CLI prints them: one line, no traceback.

A user error is bad input: a path that does not exist, an unknown recipe or model, an
ONNX operator bitfold does not support (the importer names the node), empty or unusable
calibration data, a malformed artifact. Anything else is a bug in bitfold; ``--debug``
shows its traceback.
"""

from __future__ import annotations

import sys


class CLIError(Exception):
    """A problem with what the user asked for, raised by the CLI itself."""


#: Where the user-facing exception types live; looked up only in modules already imported.
_USER_ERRORS = (
    ("bitfold.api.report.layers", "AnalysisError"),
    ("bitfold.ir.capture", "CaptureError"),
    ("bitfold.ir.onnx_import.errors", "OnnxImportError"),
    ("bitfold.ir.formats.base", "FormatError"),
    ("bitfold.ir.serialize", "GraphFormatError"),
    ("bitfold.passes.calibration", "CalibrationError"),
    ("bitfold.recipes.recipe", "RecipeError"),
    ("bitfold.zoo._common", "ZooMissingError"),
    ("bitfold.backends.onnx.errors", "OnnxExportError"),
)


def user_error_types() -> tuple:
    """The exception types whose message is meant for the user.

    A module that was never imported cannot have raised its exception, so only imported
    ones are consulted: classifying an error never imports torch.
    """
    found = [getattr(sys.modules[module], name) for module, name in _USER_ERRORS if module in sys.modules]
    return (CLIError, OSError, ValueError, *found)


def one_line(err: BaseException) -> str:
    """The error's message with its whitespace (newlines included) collapsed to single spaces."""
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text or type(err).__name__
