"""Exceptions raised by escoin-tvm: every user-facing failure is one of these, with a message
that names the problem (never a crash deep inside TVM)."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (TVM's run to pages), or its type."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class EscoinError(Exception):
    """Base class of escoin-tvm's errors."""


class ShapeError(EscoinError, ValueError):
    """A tensor has the wrong rank, shape or layout for the convolution it is used in."""


class DTypeError(EscoinError, TypeError):
    """A tensor has a dtype escoin-tvm does not support (only float32 is)."""


class ArgumentError(EscoinError, ValueError, TypeError):
    """An argument escoin-tvm cannot use: a bad device, path, option, model name, or an object
    of the wrong kind. The message names the argument. (Both a ValueError and a TypeError, as
    Python's own functions raise either for a bad argument.)"""


class TargetError(EscoinError, ValueError):
    """The compilation target is unknown or not supported."""
