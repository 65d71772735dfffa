"""Exceptions raised by the compute kernels in `models/`."""


class ModelError(Exception):
    """A user-facing problem with a model: unknown name, bad weights file, bad shapes."""


class NumericalError(ModelError):
    """Training diverged (NaN/inf loss or factors); the message names the hyperparameters."""
