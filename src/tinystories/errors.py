"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input a user can fix: the message names the file, line or option and the fix."""
