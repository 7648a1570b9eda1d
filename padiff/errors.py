"""The two error classes of padiff.

``PadiffError`` is raised for mistakes a user can make and fix (mismatched structures,
shapes, bad options, a model that raises). Its message names the layer path and says
what to do. ``PadiffInternalError`` means padiff itself is wrong: please report it.
"""


class PadiffError(Exception):
    """A problem with what the user gave padiff; the message says how to fix it."""


class PadiffInternalError(RuntimeError):
    """A bug in padiff. Never raised for a user's mistake."""
