"""Exceptions of the bus.

They live in a leaf module so that ``pcloud.protocol`` can raise ``MethodError`` without
importing the proton machinery.
"""

from __future__ import annotations


class BusError(Exception):
    """The bus cannot do what was asked: refused connection, bad credentials, closed bus."""


class BusTimeout(BusError):
    """No answer arrived before the caller's deadline."""


class BusUnreachable(BusError):
    """No connection to the broker within the attempt's time: it may come back, try again."""


class BusAuthError(BusError):
    """The broker refused the login: trying again with the same credentials cannot help."""


class BusTLSError(BusError):
    """The broker's certificate is not trusted or does not name it: cannot get better."""


class MethodError(Exception):
    """A method failed; it travels as ``<response rc="N"><error code message/></response>``.

    Handlers raise it to answer with an error; ``Bus.call`` raises it when the answer is one.
    """

    def __init__(self, code: str, message: str, rc: int = 1) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.rc = rc
