"""Exceptions raised by jobs for problems the user can fix."""


class JobError(Exception):
    """A user-facing job failure: the message is one line naming the bad value and the fix."""


class InputError(JobError):
    """The input archive (posts.parquet / edges.parquet) breaks the data contract."""
