"""The one exception type for problems a user can cause and fix."""


class ClipassoError(Exception):
    """A user-fixable problem. The message is one line that says what to do.

    The CLI prints ``error: <message>`` and exits with status 2, no traceback.
    """

    exit_code = 2
