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


class TargetError(EscoinError, ValueError):
    """The compilation target is unknown or not supported."""
