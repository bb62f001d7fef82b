"""Errors the custody core raises for things a person must fix; the CLI and API show the message as is."""


class CustodyError(Exception):
    """Refused: bad input, a rule broken, or a state that does not allow it."""


class NotFound(CustodyError):
    """The named thing does not exist."""
