"""The one exception type a user can cause; the CLI turns it into a sentence and exit code 2."""


class SurgeryError(Exception):
    """A problem with the user's input (paths, files, options): reported without a traceback."""
