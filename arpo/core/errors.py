"""Errors a person sees. Each carries a one-line message and the exit code the CLI uses for it."""


class ArpoError(Exception):
    """Base of every error arpo reports to a person instead of a traceback."""

    exit_code = 1


class InvalidInputError(ArpoError):
    """The person gave us something we cannot use (a bad image, a bad flag value, an unknown run)."""

    exit_code = 2


class BrainError(ArpoError):
    """A language or vision-language model failed for good (after retries, or at once on auth/bad request)."""

    exit_code = 3


class ModelUnavailableError(ArpoError):
    """Weights for a named model cannot be loaded here (not cached and the hub is unreachable)."""

    exit_code = 3
