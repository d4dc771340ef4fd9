"""The collector's OpenAPI 3.1 document, built from the contract's own models, and the
plain HTML page that shows it on /docs (no script, nothing from elsewhere)."""

from __future__ import annotations

import html
from functools import cache
from typing import Any, Final

import orjson
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from schemas.segment import SEGMENT_MODELS
from schemas.touchpoint import ANY_TOUCHPOINT

REF: Final = "#/components/schemas/{model}"
NATIVE_PATH: Final = "/v1/touchpoints"
SEGMENT_PATHS: Final = {f"/v1/{name}": name for name in SEGMENT_MODELS}


class RejectedEvent(BaseModel):
    index: int = Field(description="Position of the event in the request (0-based; JSON "
                       "lines: among the non-blank lines).")
    reason: str = Field(description="The DLQ reason, as the validator names it.")
    message: str = Field(description="One sentence saying what is wrong.")


class CollectAnswer(BaseModel):
    """Sent once the broker acknowledged every record of the request."""

    accepted: int = Field(description="Events sent to touchpoints.ingest.")
    rejected: list[RejectedEvent] = Field(description="Events sent to the DLQ instead.")


class SegmentAnswer(CollectAnswer):
    """Segment's answer, plus what the native endpoint says."""

    success: bool = True


class ErrorAnswer(BaseModel):
    """A request refused as a whole: nothing of it was sent."""

    error: str = Field(description="What is wrong and what to do.")
    reason: str = Field(description="unauthorized, origin_not_allowed, body_too_large, "
                        "rate_limited, bad_request or broker_unavailable.")


def _components() -> dict[str, Any]:
    touchpoint = ANY_TOUCHPOINT.json_schema(mode="validation", ref_template=REF)
    schemas: dict[str, Any] = dict(touchpoint.pop("$defs"))
    schemas["Touchpoint"] = {
        **touchpoint, "description": "One touchpoint of docs/EVENTS.md (at most 64 KiB)."}
    models: list[type[BaseModel]] = [*SEGMENT_MODELS.values(), CollectAnswer, SegmentAnswer,
                                     ErrorAnswer]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas.update(defs.get("$defs", {}))
    return schemas


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorAnswer")}}},
    }
    if retry:
        answer["headers"] = {"Retry-After": {
            "description": "Seconds to wait before sending the same request again.",
            "schema": {"type": "integer"}}}
    return answer


_REFUSALS: Final = {
    "400": _error("The body is empty or its Content-Encoding cannot be decoded."),
    "401": _error("No write key, or one that is not configured."),
    "403": _error("The browser's Origin is not among JOURNEY_COLLECTOR_CORS_ORIGINS."),
    "413": _error("The body is larger than JOURNEY_COLLECTOR_MAX_BODY_BYTES (after gunzip)."),
    "429": _error("The write key sent more than its rate; wait Retry-After seconds.", True),
    "503": _error("The broker did not acknowledge the records: send the same request again "
                  "after Retry-After seconds (repeats are dropped by event_id).", True),
}
_SECURED: Final[list[dict[str, list[str]]]] = [{"bearer": []}, {"basic": []}]


def _answer(model: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


def _native() -> dict[str, Any]:
    touchpoint = {"$ref": REF.format(model="Touchpoint")}
    return {"post": {
        "operationId": "collectTouchpoints",
        "summary": "Send touchpoints: one object, a JSON array, or JSON lines",
        "description": (
            "Each event is checked with the validator's codec. Accepted events go to "
            "touchpoints.ingest keyed by customer_id (else anonymous_id); rejected ones go "
            "to the DLQ with their reason and bytes. The answer comes once the broker "
            "acknowledged every record. `Content-Encoding: gzip` is accepted."),
        "security": _SECURED,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"oneOf": [
                touchpoint, {"type": "array", "items": touchpoint}]}},
            "application/x-ndjson": {"schema": {
                "type": "string", "description": "One touchpoint JSON object a line."}},
        }},
        "responses": {"200": _answer("CollectAnswer", "Every record acknowledged."),
                      **_REFUSALS},
    }}


def _segment(path: str, call: str) -> dict[str, Any]:
    model = SEGMENT_MODELS[call].__name__
    short = "/v1/b" if call == "batch" else f"/v1/{call[0]}"
    schema = {"$ref": REF.format(model=model)}
    return {"post": {
        "operationId": f"segment{call.title()}",
        "summary": f"Segment {call} call (also at {short}, as analytics.js sends it)",
        "description": "Segment's HTTP tracking API; mapped onto touchpoints as "
                       "docs/SEGMENT.md describes. The write key may also come as the "
                       "body's writeKey.",
        "security": _SECURED,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": schema}, "text/plain": {"schema": schema}}},
        "responses": {"200": _answer("SegmentAnswer", "Every record acknowledged."),
                      **_REFUSALS},
    }}


def _plain(summary: str, content_type: str, description: str = "") -> dict[str, Any]:
    return {"get": {"summary": summary, "security": [],
                    "description": description,
                    "responses": {"200": {"description": "OK",
                                          "content": {content_type: {}}}}}}


@cache
def openapi_document() -> dict[str, Any]:
    """The collector's API; built once per process (the models do not change)."""
    paths: dict[str, Any] = {NATIVE_PATH: _native()}
    for path, call in SEGMENT_PATHS.items():
        paths[path] = _segment(path, call)
    paths["/health"] = _plain("Whether the collector reaches Kafka (503 when not)",
                              "application/json")
    paths["/metrics"] = _plain("Counters in Prometheus' text format", "text/plain",
                               "Needs a write key when keys are configured.")
    paths["/metrics"]["get"]["security"] = _SECURED
    paths["/openapi.json"] = _plain("This document", "application/json")
    paths["/docs"] = _plain("This document as a page", "text/html")
    return {
        "openapi": "3.1.0",
        "info": {"title": "journey collector", "version": "1",
                 "description": "Touchpoints over HTTP: the native contract (docs/EVENTS.md) "
                                "and Segment's tracking API (docs/SEGMENT.md)."},
        "paths": paths,
        "components": {
            "schemas": _components(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "Authorization: Bearer WRITE_KEY"},
                "basic": {"type": "http", "scheme": "basic",
                          "description": "The write key as user name, no password "
                                         "(Segment's libraries)."},
            },
        },
    }


def openapi_json() -> bytes:
    return orjson.dumps(openapi_document())


def _e(text: Any) -> str:
    return html.escape(str(text))


@cache
def docs_page() -> bytes:
    """The OpenAPI document as one HTML page, rendered here rather than by a script."""
    doc = openapi_document()
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(doc['info']['title'])}</title><style>",
        "body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}code,pre{font:13px ui-monospace,monospace}pre{background:#f4f4f4;"
        "padding:.6rem;overflow:auto}.m{font-weight:700;text-transform:uppercase;"
        "margin-right:.5rem}section{border-top:1px solid #ddd;padding:.4rem 0}",
        "</style></head><body>",
        f"<h1>{_e(doc['info']['title'])}</h1><p>{_e(doc['info']['description'])}</p>",
        "<p>The machine-readable document: <a href=/openapi.json>/openapi.json</a>.</p>",
        "<h2>Authentication</h2><ul>",
    ]
    for name, scheme in doc["components"]["securitySchemes"].items():
        parts.append(f"<li><b>{_e(name)}</b>: {_e(scheme['description'])}</li>")
    parts.append("</ul><h2>Endpoints</h2>")
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            parts.append(f"<section><h3><span class=m>{_e(method)}</span>"
                         f"<code>{_e(path)}</code></h3><p>{_e(op['summary'])}</p>")
            if op.get("description"):
                parts.append(f"<p>{_e(op['description'])}</p>")
            body = op.get("requestBody")
            if body:
                types = ", ".join(f"<code>{_e(t)}</code>" for t in body["content"])
                parts.append(f"<p>Body: {types}</p>")
            parts.append("<ul>")
            for status, answer in op["responses"].items():
                parts.append(f"<li><b>{_e(status)}</b> {_e(answer['description'])}</li>")
            parts.append("</ul></section>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        text = orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode()
        parts.append(f"<details id={_e(name)}><summary><code>{_e(name)}</code></summary>"
                     f"<pre>{_e(text)}</pre></details>")
    parts.append("</body></html>")
    return "".join(parts).encode()
