"""The one exception of ``kdloss score``'s checks."""


class InputError(ValueError):
    """A bad input or argument for ``kdloss score``: the message names it and the problem."""
