"""422: a well-formed request that the current state of things cannot satisfy (upstream's answer
for "the project has no private subnet there", "that file system is not served")."""

from kahuna.resources.errors import DomainError


class Unprocessable(DomainError):
    status, error = 422, "Unprocessable Entity"
