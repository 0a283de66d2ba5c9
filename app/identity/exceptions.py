"""Identity errors; each becomes a 4xx JSON answer through the CourierError handler."""

from __future__ import annotations

from app.errors import Conflict, CourierError, NotFound, Unprocessable


class UserNotFound(NotFound):
    """No user has this id."""

    def __init__(self, user_id: int) -> None:
        super().__init__(f"No user {user_id} exists.", details={"user_id": user_id})


class EmailTaken(Conflict):
    """Another user already has this address."""

    def __init__(self) -> None:
        super().__init__("A user with this email address already exists.")


class NoPhone(Unprocessable):
    """The user has no phone number to send an MFA code to."""

    def __init__(self, user_id: int) -> None:
        super().__init__(f"User {user_id} has no phone number for MFA codes.", details={"user_id": user_id})


class InvalidToken(CourierError):
    """A token that is unknown, used or expired: one answer for all three, so none can be told apart."""

    status_code = 400
    code = "invalid_token"

    def __init__(self) -> None:
        super().__init__("This link is invalid, already used or expired; ask for a new one.")


class InvalidCode(CourierError):
    """A wrong MFA code; says how many attempts are left."""

    status_code = 400
    code = "invalid_code"

    def __init__(self, attempts_left: int) -> None:
        super().__init__("The code is wrong.", details={"attempts_left": attempts_left})


class CodeExpired(CourierError):
    """No usable MFA code: none was sent, it expired, it was used, or its attempts ran out."""

    status_code = 400
    code = "code_expired"

    def __init__(self) -> None:
        super().__init__("There is no valid code for this user; request a new one.")


class RateLimited(CourierError):
    """Too many requests of one kind for one address or user; retry after `retry_after` seconds."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, details={"retry_after": retry_after})
        self.headers = {"Retry-After": str(retry_after)}
