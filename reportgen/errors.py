"""The one exception type for user mistakes."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints its one-line message and exits with 2."""
