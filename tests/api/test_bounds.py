"""Every integer the API accepts is bounded by its schema.

An integer the database cannot hold (2**63 and up, or a huge negative) in a path id, `limit`/`offset` or a
body field reached the driver and ended in a 500 ("Python int too large to convert to SQLite INTEGER",
PostgreSQL's "integer out of range"). The cases are read from the app's own OpenAPI spec, so a route added
later is covered without touching this file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from app.main import app
from app.schema_types import MAX_ID
from tests.support.api import auth

#: Values no SQL integer column holds, on either side.
OUT_OF_RANGE = (2**63, -(2**64))

#: A body that is valid but for the integer under test, per operation whose body has an integer field or a
#: required one; without it the 422 could come from a missing field rather than from the bound under test.
VALID_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/api/v1/tasks/ping"): {},
    ("post", "/api/v1/identity/mfa/challenge"): {},
    ("post", "/api/v1/identity/mfa/verify"): {"code": "123456"},
    ("post", "/api/v1/audit/reports"): {"kind": "gdpr"},
    ("post", "/api/v1/integrations/webhooks"): {"url": "http://127.0.0.1:9/hook", "event_types": ["*"]},
    ("post", "/api/v1/identity/users/{user_id}/devices"): {"token": "device-token-1"},
    ("post", "/api/v1/integrations/webhooks/{endpoint_id}/recover"): {"since": "2026-01-01T00:00:00Z"},
}


def _spec() -> dict[str, Any]:
    return app.openapi()


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    found: dict[str, Any] = _spec()
    for part in ref.removeprefix("#/").split("/"):
        found = found[part]
    return found


def _is_int(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "integer" or any(_is_int(s) for s in schema.get("anyOf", ()))


def _placeholder(schema: dict[str, Any]) -> Any:
    """A valid-looking value for a parameter that is not under test."""
    schema = _resolve(schema)
    if "enum" in schema:
        return schema["enum"][0]
    return 1 if _is_int(schema) else "x"


def _body_schema(operation: dict[str, Any]) -> dict[str, Any] | None:
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return None
    schema = _resolve(content["schema"])
    if "anyOf" in schema:  # an optional body: `X | None`
        schema = next(_resolve(s) for s in schema["anyOf"] if s.get("type") != "null")
    return schema


def _cases() -> Iterator[tuple[str, str, str, str, int]]:
    for path, item in _spec()["paths"].items():
        for method, operation in item.items():
            params = operation.get("parameters", [])
            body_schema = _body_schema(operation)
            fields = [(p["in"], p["name"]) for p in params if _is_int(_resolve(p["schema"]))]
            if body_schema is not None:
                fields += [("body", n) for n, s in body_schema.get("properties", {}).items() if _is_int(_resolve(s))]
            for where, name in fields:
                for value in OUT_OF_RANGE:
                    yield method, path, where, name, value


def _request(method: str, path: str, where: str, name: str, value: int) -> dict[str, Any]:
    """The URL, query and body of a request that is valid except for `name`, which is `value`."""
    operation = _spec()["paths"][path][method]
    query: dict[str, Any] = {}
    url = path
    for param in operation.get("parameters", []):
        chosen = value if (param["in"], param["name"]) == (where, name) else _placeholder(param["schema"])
        if param["in"] == "path":
            url = url.replace("{" + param["name"] + "}", str(chosen))
        elif param["in"] == "query" and (param.get("required") or param["name"] == name):
            query[param["name"]] = chosen
    request: dict[str, Any] = {"url": url, "params": query}
    body_schema = _body_schema(operation)
    if body_schema is not None:
        if where == "body" or body_schema.get("required"):
            assert (method, path) in VALID_BODIES, f"add a valid body for {method.upper()} {path} to VALID_BODIES"
        body = dict(VALID_BODIES.get((method, path), {}))
        if where == "body":
            body[name] = value
        request["json"] = body
    return request


def test_every_integer_the_api_accepts_is_bounded_in_the_spec() -> None:
    # Given the OpenAPI spec, when every integer parameter and body field is read, then each has both bounds.
    unbounded = []
    for path, method, where, name, schema in _int_fields():
        if "minimum" not in schema or "maximum" not in schema:
            unbounded.append(f"{method.upper()} {path} {where}:{name}")
    assert not unbounded, unbounded


def _int_fields() -> Iterator[tuple[str, str, str, str, dict[str, Any]]]:
    for path, item in _spec()["paths"].items():
        for method, operation in item.items():
            for param in operation.get("parameters", []):
                schema = _resolve(param["schema"])
                if _is_int(schema):
                    yield path, method, param["in"], param["name"], schema
            body_schema = _body_schema(operation)
            for name, prop in (body_schema or {}).get("properties", {}).items():
                prop = _resolve(prop)
                if _is_int(prop):
                    ints = [s for s in prop.get("anyOf", [prop]) if s.get("type") == "integer"]
                    yield path, method, "body", name, ints[0]


def test_an_integer_out_of_the_database_range_is_a_422_never_a_500(
    api: Any, admin_key: tuple[str, str], client_key: tuple[str, str]
) -> None:
    cases = list(_cases())
    assert len(cases) > 40  # (the spec walk found the routes: ids, limit/offset, body ids)
    wrong = []
    for method, path, where, name, value in cases:
        # Given a request valid but for one integer no SQL column holds
        request = _request(method, path, where, name, value)
        for key, allowed in ((admin_key, {422}), (client_key, {403, 422})):
            # When an admin and a client send it
            response = api.request(method.upper(), headers=auth(key), **request)
            # Then it is refused by its schema with the JSON envelope naming the field, before any query ran
            error = response.json().get("error", {}) if _is_json(response) else {}
            named = response.status_code != 422 or (
                error.get("code") == "validation_error"
                and any(detail["loc"][-1] == name for detail in error.get("details", []))
            )
            if response.status_code not in allowed or not error or not named:
                wrong.append(f"{key[0]} {method.upper()} {path} {where}:{name}={value}: {response.status_code}")
    assert not wrong, "\n".join(wrong)


def _is_json(response: Any) -> bool:
    return str(response.headers.get("content-type", "")).startswith("application/json")


def test_the_largest_id_is_an_ordinary_404(api: Any, admin_key: tuple[str, str]) -> None:
    # Given ids at the top of the range, which no row has
    for url in (
        f"/api/v1/tasks/dead-letters/{MAX_ID}",
        f"/api/v1/integrations/webhooks/{MAX_ID}",
        f"/api/v1/identity/users/{MAX_ID}",
        f"/api/v1/audit/reports/{MAX_ID}",
        f"/api/v1/notifications/{MAX_ID}",
    ):
        # When an admin reads them, then each is a 404 with the envelope (in range: the database is asked)
        response = api.get(url, headers=auth(admin_key))
        assert response.status_code == 404, (url, response.text)
        assert response.json()["error"]["code"] == "not_found"
    # And one past the top is a 422, as is a listing offset past it
    assert api.get(f"/api/v1/identity/users/{MAX_ID + 1}", headers=auth(admin_key)).status_code == 422
    response = api.get("/api/v1/audit/events", params={"offset": MAX_ID + 1}, headers=auth(admin_key))
    assert response.status_code == 422


def test_text_with_a_nul_character_is_a_422_never_a_500(api: Any, admin_key: tuple[str, str]) -> None:
    # Given text PostgreSQL cannot hold (U+0000), found by the fuzz run in a query filter and a body filter
    requests: list[dict[str, Any]] = [
        {"method": "GET", "url": "/api/v1/audit/events", "params": {"target": "a\x00b"}},
        {"method": "GET", "url": "/api/v1/tasks/dead-letters", "params": {"task_name": "\x00"}},
        {"method": "POST", "url": "/api/v1/tasks/dead-letters/purge", "json": {"why": "x", "error_class": "a\x00"}},
        {"method": "POST", "url": "/api/v1/integrations/events", "json": {"type": "a.b", "data": {"k": ["\x00"]}}},
    ]
    for request in requests:
        # When an admin sends it
        response = api.request(headers=auth(admin_key), **request)
        # Then it is refused with the envelope, naming the NUL character
        assert response.status_code == 422, (request, response.text)
        assert response.json()["error"]["code"] == "nul_character", response.text


def test_a_non_finite_number_in_a_body_is_a_422_never_a_500(api: Any, client_key: tuple[str, str]) -> None:
    # Given JSON numbers no JSON column can hold: the literals Python's json accepts, and numbers beyond a double
    # (a notification's free-form `data` reached PostgreSQL's json type with them and answered 500)
    for number in ("NaN", "Infinity", "-Infinity", "1e400", "-1.5E+309", "1" + "0" * 250 + "e99", "9" * 400 + ".0"):
        body = '{"channel": "push", "recipient": "device-1", "body": "b", "data": {"n": [' + number + "]}}"
        # When a client sends it
        response = api.post(
            "/api/v1/notifications", content=body, headers={**auth(client_key), "Content-Type": "application/json"}
        )
        # Then it is refused with the envelope, naming the cause, and nothing was created
        assert response.status_code == 422, (number, response.text)
        assert response.json()["error"]["code"] == "non_finite_number", response.text
    # And a large finite number, or the same words inside a string, are not refused for it
    for data in ('{"n": 1e300, "m": 1e-400}', '{"text": "NaN Infinity 1e400"}'):
        body = '{"channel": "push", "recipient": "device-1", "body": "b", "data": ' + data + "}"
        response = api.post(
            "/api/v1/notifications", content=body, headers={**auth(client_key), "Content-Type": "application/json"}
        )
        assert response.status_code == 202, (data, response.text)


def test_text_with_an_unpaired_surrogate_is_a_422_never_stored(api: Any, admin_key: tuple[str, str]) -> None:
    # Given JSON strings that spell half of a surrogate pair (Python's json returns them as text no UTF-8 encoder
    # takes: replayed into a task's result, every read of that task answered 500)
    headers = {**auth(admin_key), "Content-Type": "application/json"}
    for text in ("\\ud800", "a\\uDFFFb", "\\udc00\\ud83d"):
        body = '{"type": "custom.thing", "data": {"k": ["' + text + '"]}}'
        # When it is sent, Then it is refused with the envelope, naming the cause
        response = api.post("/api/v1/integrations/events", content=body, headers=headers)
        assert response.status_code == 422, (text, response.text)
        assert response.json()["error"]["code"] == "invalid_text", response.text
    # And a well-formed pair (an emoji) is ordinary text
    body = '{"type": "custom.thing", "data": {"k": "\\ud83d\\ude00"}}'
    assert api.post("/api/v1/integrations/events", content=body, headers=headers).status_code == 202


def test_a_refused_change_whose_path_holds_a_nul_is_still_audited(api: Any, admin_key: tuple[str, str]) -> None:
    # Given a mutating call whose path holds a NUL (refused 422 before the route runs)
    response = api.post("/api/v1/integrations/webhooks/1/rotate-secret%00x", headers=auth(admin_key))
    assert response.status_code in (404, 422), response.text
    # Then its audit entry is recorded all the same, the NUL shown as U+FFFD (SQL cannot hold a NUL)
    target = "/api/v1/integrations/webhooks/1/rotate-secret\ufffdx"
    entries = api.get("/api/v1/audit/events", params={"target": target}, headers=auth(admin_key)).json()["items"]
    assert [(e["target"], e["outcome"]) for e in entries] == [(target, "failure")]


def test_a_body_that_is_not_utf8_is_the_declared_400(api: Any, admin_key: tuple[str, str]) -> None:
    # Given a JSON body that is not UTF-8 text (found by the fuzz run: an undeclared 400)
    headers = {**auth(admin_key), "Content-Type": "application/json"}
    response = api.post("/api/v1/tasks/dead-letters/purge", content=b"\xc3\x28\xa0", headers=headers)
    # Then the answer is the 400 the spec declares for the operation, with the envelope
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert "400" in api.get("/openapi.json").json()["paths"]["/api/v1/tasks/dead-letters/purge"]["post"]["responses"]


def test_a_body_over_the_bound_is_a_413_before_it_is_read_declared_or_chunked(
    api: Any, client_key: tuple[str, str]
) -> None:
    # Given a notification whose free-form data is 3 MB (the bound is API_MAX_BODY_BYTES, 2 MiB by default)
    before = _notifications()
    body = '{"channel": "push", "recipient": "device-1", "body": "b", "data": {"blob": "' + "x" * 3_000_000 + '"}}'
    headers = {**auth(client_key), "Content-Type": "application/json"}
    # When it is sent with its length declared, Then it is refused with the envelope, naming the bound
    response = api.post("/api/v1/notifications", content=body, headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == {
        "code": "too_large",
        "message": "The request body is larger than this API takes (2097152 bytes).",
        "details": {"limit_bytes": 2097152},
    }

    # When it is sent chunked (no length declared), Then it is refused once it passes the bound
    def chunks() -> Iterator[bytes]:
        data = body.encode()
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    response = api.post("/api/v1/notifications", content=chunks(), headers=headers)
    assert response.status_code == 413, response.text
    # And nothing was created for either
    assert _notifications() == before
    # And a body under the bound is an ordinary request
    small = body.replace("x" * 3_000_000, "x" * 1_000_000)
    assert api.post("/api/v1/notifications", content=small, headers=headers).status_code == 202


def _notifications() -> int:
    from sqlalchemy import func, select

    from app.db import session_scope
    from app.notifications.models import Notification

    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Notification)) or 0)


def test_a_flag_is_a_json_boolean_never_a_number_or_a_string(api: Any, admin_key: tuple[str, str]) -> None:
    # Given request flags sent as what lax parsing would coerce: `dry_run: 0` ran a real bulk replay
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/api/v1/tasks/dead-letters/replay", {"dry_run": 0}),
        ("/api/v1/tasks/dead-letters/replay", {"dry_run": "false"}),
        ("/api/v1/tasks/task/00000000-0000-0000-0000-000000000000/revoke", {"terminate": 1}),
        ("/api/v1/integrations/webhooks", {"url": "https://example.com/hook", "events": ["*"], "enabled": "yes"}),
    ]
    for url, body in requests:
        # When an admin sends it, Then it is refused with the envelope, and nothing was done
        response = api.post(url, json=body, headers=auth(admin_key))
        assert response.status_code == 422, (url, body, response.text)
        assert response.json()["error"]["code"] == "validation_error", response.text
    # And a real boolean is taken
    answer = api.post("/api/v1/tasks/dead-letters/replay", json={"dry_run": True}, headers=auth(admin_key))
    assert answer.status_code == 202 and answer.json()["dry_run"] is True, answer.text
