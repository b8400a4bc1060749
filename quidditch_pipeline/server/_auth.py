"""The admin token guard: ``Authorization: Bearer <token>`` on admin routes, compared in constant time."""

from __future__ import annotations

import hmac
from typing import Annotated, Any, Final

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import AuthenticationError

_BEARER: Final = HTTPBearer(auto_error=False, description="the server's admin token")


class AdminGuard:
    """The dependency of admin routes: ``Authorization: Bearer <token>`` or 401."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def __call__(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        # compare_digest: the time taken says nothing about how much of the token was right.
        if not hmac.compare_digest(given, self._expected):
            raise AuthenticationError("this route needs the admin token: Authorization: Bearer <token>")


def admin_dependency(token: str | None) -> list[Any]:
    """The dependency list an admin route carries (empty without a token)."""
    return [Depends(AdminGuard(token))] if token else []
