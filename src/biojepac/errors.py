"""The one exception type for bad user input.

The CLI prints an `InputError` as a single line (no traceback), so its message must name
the file, column, gene or value at fault.
"""


class InputError(ValueError):
    """Bad input from the user: a file, column, gene or value that cannot be used as given."""
