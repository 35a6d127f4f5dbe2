"""Errors a user can cause. The CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad params, a missing or corrupt file, an unavailable device: something the user fixes.

    The message names the key or file and says what to do about it.
    """
