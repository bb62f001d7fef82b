"""The refusals an API operation can answer, declared in its OpenAPI entry so that clients (and the
schemathesis run in the suite) know every answer the service gives: each is JSON `{"detail": reason}`.
422 (a request that does not fit the schema) FastAPI declares itself."""
from __future__ import annotations

_REFUSAL = {"application/json": {"schema": {"title": "Refusal", "type": "object", "required": ["detail"],
                                            "properties": {"detail": {"type": "string"}}}}}
_ALWAYS = {
    400: "refused: the reason says what to change (nothing was changed)",
    404: "no such object",
    409: "conflicts with what the database holds (nothing was changed)",
    413: "the request body is over this route's limit",
    429: "too many heavy requests of this user at once; retry later",
    502: "the Bitcoin node refused the call",
    503: "the Bitcoin node or the database is unavailable (nothing was changed)",
}
_AUTHENTICATED = {
    401: "no valid session or API token",
    403: "the caller's role (or the token's scope) may not do this",
}


def declared(action: str) -> dict[int, dict]:
    codes = _ALWAYS if action == "public" else {**_AUTHENTICATED, **_ALWAYS}
    return {code: {"description": text, "content": _REFUSAL} for code, text in sorted(codes.items())}


def body(*media_types: str) -> dict[int, dict]:
    """A 200 answer that is a file or text, not JSON: declared with its media types."""
    return {200: {"description": "the document", "content": {m: {"schema": {"type": "string"}} for m in media_types}}}
