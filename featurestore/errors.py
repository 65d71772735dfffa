"""Exceptions raised by the feature store (no torch, no Ray)."""


class StoreError(Exception):
    """A user-facing problem with a store: bad path, bad view, bad values.

    The message names the bad value and, where there is one, the fix.
    """
