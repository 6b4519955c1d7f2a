"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json and /docs."""

from __future__ import annotations

import html

_ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(description: str, schema: dict | None = None) -> dict:
    out: dict = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


_ERRORS = {
    "400": _resp("Malformed request", _ERROR),
    "401": _resp("Missing or invalid token", _ERROR),
    "503": _resp("A backend did not answer in time; retry", _ERROR),
}

_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

SPEC: dict = {
    "openapi": "3.1.0",
    "info": {"title": "raymail", "version": "1", "description": "Send, list and read mail; live pushes over WebSocket."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
            },
            "Address": {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"}}},
            "Summary": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"}, "message_id": {"type": "string"}, "folder": {"type": "string"},
                    "from": {"$ref": "#/components/schemas/Address"},
                    "to": {"type": "array", "items": {"$ref": "#/components/schemas/Address"}},
                    "cc": {"type": "array", "items": {"$ref": "#/components/schemas/Address"}},
                    "subject": {"type": "string"}, "snippet": {"type": "string"}, "date": {"type": "number"},
                    "size": {"type": "integer"}, "unread": {"type": "boolean"}, "has_attachments": {"type": "boolean"},
                    "auth": {"$ref": "#/components/schemas/AuthResults"},
                },
            },
            "AuthResults": {
                "type": "object", "nullable": True,
                "description": "SPF, DKIM and DMARC of mail received by the MX; null for other mail",
                "properties": {
                    "spf": {"type": "string", "enum": ["pass", "fail", "softfail", "neutral", "none", "temperror",
                                                       "permerror"]},
                    "dkim": {"type": "string", "enum": ["pass", "fail", "neutral", "none", "temperror", "permerror"]},
                    "dmarc": {"type": "string", "enum": ["pass", "fail", "none", "temperror", "permerror"]},
                    "policy": {"type": "string", "description": "the From domain's DMARC policy (none, quarantine, "
                                                                "reject; after pct sampling on failure), or empty"},
                    "spf_domain": {"type": "string"},
                    "dkim_domains": {"type": "array", "items": {"type": "string"}},
                    "from_domain": {"type": "string"},
                },
            },
            "Page": {
                "type": "object",
                "properties": {
                    "emails": {"type": "array", "items": {"$ref": "#/components/schemas/Summary"}},
                    "page_number": {"type": "integer"}, "page_size": {"type": "integer"}, "total": {"type": "integer"},
                },
            },
            "SendRequest": {
                "type": "object",
                "required": ["recipients"],
                "properties": {
                    "uid": {"type": "string", "description": "optional; must be the caller's own uid"},
                    "subject": {"type": "string"},
                    "recipients": {"type": "array", "items": {"type": "string"}, "description": "'a@b' or 'Name <a@b>'"},
                    "cc": {"type": "array", "items": {"type": "string"}},
                    "bcc": {"type": "array", "items": {"type": "string"}},
                    "body": {"type": "string"}, "html": {"type": "string"},
                    "attachments": {"type": "array", "items": {"type": "string"}},
                    "category": {"enum": ["transactional", "marketing"]},
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/send": {"post": {
            "summary": "Send a message (an Idempotency-Key header makes a retry safe)",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 128}}],
            "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/SendRequest"}}}},
            "responses": {
                "201": _resp("On stable storage", {"type": "object", "properties": {
                    "id": {"type": "string"}, "message_id": {"type": "string"}, "status": {"enum": ["delivered", "queued"]}}}),
                "403": _resp("uid is not the caller's", _ERROR), "413": _resp("Too large", _ERROR),
                "422": _resp("Invalid field, unknown recipient, CR/LF in a header", _ERROR),
                "429": _resp("Rate limited; see Retry-After", _ERROR), **_ERRORS,
            },
        }},
        "/v1/emails": {"get": {
            "summary": "List a folder, newest first",
            "parameters": [
                {"name": "folder", "in": "query", "schema": {"enum": ["inbox", "sent", "archive", "trash", "junk"]}},
                {"name": "page_number", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                {"name": "page_size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
            ],
            "responses": {"200": _resp("A page", {"$ref": "#/components/schemas/Page"}), "422": _resp("Bad paging", _ERROR), **_ERRORS},
        }},
        "/v1/emails/{id}": {
            "get": {"summary": "A full message", "parameters": [_ID],
                    "responses": {"200": _resp("Summary plus body, html, headers, attachments"), "404": _resp("Not yours or gone", _ERROR), **_ERRORS}},
            "patch": {"summary": "Set unread and/or move to a folder", "parameters": [_ID],
                      "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                          "unread": {"type": "boolean"}, "folder": {"type": "string"}}}}}},
                      "responses": {"200": _resp("The new summary", {"$ref": "#/components/schemas/Summary"}), "404": _resp("Not found", _ERROR), **_ERRORS}},
            "delete": {"summary": "Delete permanently (move to trash with PATCH)", "parameters": [_ID],
                       "responses": {"204": _resp("Deleted"), "404": _resp("Not found", _ERROR), **_ERRORS}},
        },
        "/v1/emails/{id}/raw": {"get": {"summary": "The RFC 5322 source", "parameters": [_ID],
                                        "responses": {"200": {"description": "message/rfc822"}, "404": _resp("Not found", _ERROR), **_ERRORS}}},
        "/v1/search": {"get": {
            "summary": "Search your own mail, newest first (Gmail-style q: from: to: cc: subject: filename: "
                       "has:attachment is:unread is:read in:FOLDER before: after: \"phrase\" -word)",
            "parameters": [{"name": n, "in": "query", "schema": {"type": "string"}} for n in
                           ("q", "from", "to", "folder", "has_attachment", "unread", "after", "before",
                            "page_number", "page_size")],
            "responses": {"200": _resp("A page", {"$ref": "#/components/schemas/Page"}),
                          "400": _resp("Query syntax error, bad date or filter", _ERROR), **_ERRORS},
        }},
        "/v1/events": {"get": {
            "summary": "Events after a cursor (catch-up)",
            "parameters": [{"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
            "responses": {"200": _resp("Events, cursor of the last one, latest cursor, more"),
                          "410": _resp("Cursor older than the events kept: reload the list", _ERROR), **_ERRORS},
        }},
        "/v1/connect": {"get": {
            "summary": "WebSocket: live events (token in Authorization or ?token=; ?since= replays)",
            "responses": {"101": {"description": "Switching protocols"}, "403": {"description": "Bad token or foreign Origin"}},
        }},
        "/v1/attachments": {"post": {
            "summary": "Upload a file (raw body with Content-Type and X-Filename, percent-encoded UTF-8; or multipart/form-data)",
            "requestBody": {"content": {"application/octet-stream": {}, "multipart/form-data": {}}},
            "responses": {"201": _resp("Stored", {"type": "object", "properties": {
                "id": {"type": "string"}, "sha256": {"type": "string"}, "size": {"type": "integer"},
                "content_type": {"type": "string"}, "filename": {"type": "string"}}}),
                "413": _resp("Over the attachment limit", _ERROR),
                "422": _resp("Empty, or a missing or malformed Content-Type", _ERROR), **_ERRORS},
        }},
        "/v1/attachments/{id}": {"get": {
            "summary": "Download (uploader and recipients only); Range supported",
            "parameters": [_ID, {"name": "Range", "in": "header", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the bytes"}, "206": {"description": "a byte range"},
                          "404": _resp("Not yours", _ERROR), "410": _resp("Content missing from storage", _ERROR),
                          "416": _resp("Range outside the file", _ERROR), **_ERRORS},
        }},
        "/v1/import": {"post": {
            "summary": "Import an RFC 5322 message into your own mailbox (attachments are extracted and shared)",
            "parameters": [{"name": "folder", "in": "query", "schema": {"type": "string"}}],
            "requestBody": {"content": {"message/rfc822": {}}},
            "responses": {"201": _resp("The summary", {"$ref": "#/components/schemas/Summary"}),
                          "413": _resp("Too large", _ERROR), "422": _resp("Not message/rfc822, or empty", _ERROR),
                          **_ERRORS},
        }},
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (loopback or metrics token)", "responses": {"200": {"description": "text"}}}},
    },
}


def render_html() -> str:
    rows = []
    for path, ops in SPEC["paths"].items():
        for method, op in ops.items():
            codes = ", ".join(op.get("responses", {}))
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op.get('summary', ''))}</td><td>{codes}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>raymail API</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em}td{padding:.3em .8em;border-bottom:1px solid #ddd}</style>"
        "</head><body><h1>raymail HTTP API</h1><p>All endpoints take <code>Authorization: Bearer TOKEN</code>. "
        "Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>"
        "<table><tr><th>Method</th><th>Path</th><th>What</th><th>Statuses</th></tr>" + "".join(rows) + "</table></body></html>"
    )
