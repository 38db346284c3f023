"""The one exception type of the theory package: invalid input, described for a human."""


class TheoryError(ValueError):
    """Input that the math cannot accept; the message names the offending index and value."""
