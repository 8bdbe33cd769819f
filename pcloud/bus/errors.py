"""Exceptions of the bus.

They live in a leaf module so that ``pcloud.protocol`` can raise ``MethodError`` without
importing the proton machinery.
"""

from __future__ import annotations


class BusError(Exception):
    """The bus cannot do what was asked: refused connection, bad credentials, closed bus."""


class BusTimeout(BusError):
    """No answer arrived before the caller's deadline."""


class MethodError(Exception):
    """A method failed; it travels as ``<response rc="N"><error code message/></response>``.

    Handlers raise it to answer with an error; ``Bus.call`` raises it when the answer is one.
    """

    def __init__(self, code: str, message: str, rc: int = 1) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.rc = rc
