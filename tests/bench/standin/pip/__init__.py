"""STAND-IN for pip (`python -m pip`): the bench has no network; invocations are only recorded."""
