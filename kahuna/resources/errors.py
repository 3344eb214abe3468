"""Domain errors. Each carries the HTTP status the API answers with, and nothing else of HTTP.

The API layer turns any `DomainError` into `{"status", "error", "reason"}`; store errors
(NotFound, Conflict, Unavailable) are translated in the service before they get here.
"""


class DomainError(Exception):
    status = 400
    error = "Bad Request"

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Invalid(DomainError):
    status, error = 400, "Bad Request"


class Unauthorized(DomainError):
    status, error = 401, "Unauthorized"


class Forbidden(DomainError):
    status, error = 403, "Forbidden"


class NotFoundError(DomainError):
    status, error = 404, "Not Found"


class ConflictError(DomainError):
    status, error = 409, "Conflict"


class Missing(DomainError):
    """A required field is absent (upstream's RequiredError: 422)."""

    status, error = 422, "Unprocessable Entity"


class TooManyRequests(DomainError):
    status, error = 429, "Too Many Requests"

    def __init__(self, reason: str, retry_after: int):
        super().__init__(reason)
        self.retry_after = retry_after


class Unavailable(DomainError):
    status, error = 503, "Service Unavailable"


class InsufficientResources(DomainError):
    """Quota or address space exhausted (upstream's HttpQuota: 507)."""

    status, error = 507, "Insufficient Storage"
