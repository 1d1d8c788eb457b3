"""The one exception type that means "the user's input is wrong": exit code 2, no traceback."""


class BadInput(Exception):
    """Bad config, data or arguments; the message says what is wrong and how to fix it."""
