"""The HTTP API of `recsys serve`: a FastAPI app over the same `Client`.

    GET  /v1/items/{item_id}/similar?k=10&in_stock_only=&same_category=&same_brand=&min_price=&max_price=
                                    &price_ratio=lo,hi&exclude=ID[,ID...]
    POST /v1/similar:batch          {"item_ids": [...], "k": 10, <filters>}
    POST /v1/similar:new-item       {"item": {"category": ..., "brand": ..., "price": ..., ...}, "k": 10, <filters>}
    GET  /v1/version                the version served: trained-at, metrics summary
    GET  /healthz                   the process is alive (always 200)
    GET  /readyz                    200 once a verified bundle is loaded, 503 before
    GET  /docs, /openapi.json       the OpenAPI schema

Errors are JSON, `{"error": {"status", "code", "message", "hint"?, "details"?}}`: 404 unknown
item (with the hint to describe it to the new-item endpoint), 422 bad parameters, 401 a
missing or wrong API key, 503 no version yet; never a stack trace.

Loading: a background thread loads the alias's version (verifying every checksum) and
retries every `refresh_interval_s` until there is one. The process accepts requests once
the first attempt is done, so it starts (and /healthz answers) before a version exists. Once loaded, the client's own watcher follows
the alias: a moved version is loaded and verified completely, then swapped in by one
reference assignment; a request in flight finishes on the version it started with, and
each response names the version that answered it.

`create_app(config)` builds the app; `app_from_env()` is the factory uvicorn's worker
processes call (`--workers N`), reading the config `recsys serve` put in the environment.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import gc
import json
import logging
import math
import os
import threading
from contextlib import asynccontextmanager
from typing import Annotated, Any

import faiss
import numpy as np
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys import __version__
from recsys.errors import UserError
from recsys.serving.client import Client, NoVersionError, UnknownItemError
from recsys.serving.http_keys import KEY_HEADER, KeyChecker, api_keys_from_env, presented_key
from recsys.serving.http_models import (BatchRequest, BatchResponse, ErrorResponse, Health, NewItemRequest,
                                        NewItemResponse, Readiness, SimilarQuery, SimilarResponse, VersionResponse)

log = logging.getLogger("recsys.serve")

STARTUP_WAIT_S = 120.0  # the longest a process waits for its first load attempt before it accepts requests
CONFIG_ENV = "RECSYS_SERVE_CONFIG"  # the ServeConfig as JSON, for uvicorn's worker processes
NEW_ITEM_HINT = ("Describe the product by its side features instead: POST /v1/similar:new-item with "
                 '{"item": {"category": ..., "brand": ..., "price": ...}}; or wait for the next version.')


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    alias: str = "production"
    database_url: str | None = None  # None: RECSYS_DATABASE_URL, else the embedded Postgres
    bundle: str | None = None  # serve this bundle folder instead of an alias (no reloading)
    refresh_interval_s: float = 5.0  # how often the alias is checked (and a missing version retried)
    verify: bool = True  # checksums of every bundle file before serving it
    # FAISS (OpenMP) threads per search. 1: a server answers many small queries at once, and on a busy
    # machine OpenMP's threads waiting for each other put milliseconds into the tail (p99 4-20 ms -> 1 ms
    # measured on 2 cores); 0: FAISS's default (all cores).
    search_threads: int = 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        return cls(**json.loads(text))


# --------------------------------------------------------------------------- errors
class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, hint: str | None = None, headers=None, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint
        self.headers, self.extra = headers, extra


def _json(payload: Any, status: int = 200, headers=None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _error(status: int, code: str, message: str, hint: str | None = None, headers=None, **extra) -> Response:
    error = {"status": status, "code": code, "message": message}
    if hint:
        error["hint"] = hint
    error.update({k: v for k, v in extra.items() if v is not None})
    return _json({"error": error}, status, headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


def _validation_details(errors) -> tuple[str, list[dict]]:
    details = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        details.append({"field": ".".join(loc) or None, "problem": str(err.get("msg", "invalid")),
                        "type": str(err.get("type", ""))})
    summary = "; ".join(f"{d['field']}: {d['problem']}" if d["field"] else d["problem"] for d in details[:5])
    return summary or "invalid request", details


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, exc.hint, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError):
        summary, details = _validation_details(exc.errors())
        return _error(422, "bad_parameters", f"Bad parameters: {summary}", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            message = f"No endpoint {request.method} {request.url.path}; see /docs for the API."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs for the API."
        return _error(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # logged with its traceback, never sent
        log.exception("recsys serve: %s %s failed", request.method, request.url.path)
        return _error(500, "internal_error", "The server failed to answer; the traceback is in its log.")


def _client_error(exc: Exception) -> ApiError:
    """The client's exceptions as HTTP errors."""
    if isinstance(exc, UnknownItemError):
        return ApiError(404, "unknown_item", str(exc), NEW_ITEM_HINT)
    if isinstance(exc, (ValueError, TypeError)):
        return ApiError(422, "bad_parameters", str(exc))
    if isinstance(exc, UserError):
        return ApiError(422, "cannot_answer", str(exc))
    raise exc


# --------------------------------------------------------------------------- the loaded client
class ClientHolder:
    """The client of the process once a version is loaded (None before), and why not yet."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.client: Client | None = None
        self.error: Exception | None = None
        self.since: dict[str, str] = {}  # version -> when this process loaded (or first answered with) it
        self._stop = threading.Event()
        self.first_attempt = threading.Event()  # set once the first load has succeeded or failed
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._load_until_ready, name="recsys-serve-load", daemon=True)
        self._thread.start()

    def load_once(self) -> bool:
        """Try to load the configured version now; True when a client is loaded."""
        config = self.config
        try:
            if config.bundle:
                client = Client.open(config.bundle, verify=config.verify)
            else:
                client = Client.from_registry(config.alias, database_url=config.database_url,
                                              refresh_interval_s=config.refresh_interval_s or None,
                                              verify=config.verify)
        except Exception as exc:  # no version yet, database down, a damaged bundle: not ready, retry
            if not isinstance(exc, NoVersionError) or type(self.error) is not type(exc):
                log.warning("recsys serve: not ready: %s", exc)
            self.error = exc
            return False
        self.client, self.error = client, None
        self.seen(client.version)
        log.info("recsys serve: serving version %s", client.version)
        return True

    def _load_until_ready(self) -> None:
        while not self._stop.is_set():
            loaded = self.load_once()
            self.first_attempt.set()
            if loaded:
                return
            self._stop.wait(max(self.config.refresh_interval_s, 0.1))

    def close(self) -> None:
        self._stop.set()
        if self.client is not None:
            self.client.close()

    def require(self) -> Client:
        client = self.client
        if client is None:
            if isinstance(self.error, NoVersionError):
                raise ApiError(503, "no_version", str(self.error), headers={"Retry-After": "30"})
            detail = f" ({self.error})" if self.error else ""
            raise ApiError(503, "not_ready", f"No version is loaded yet{detail}.", headers={"Retry-After": "5"})
        return client

    def seen(self, version: str) -> str:
        since = self.since.get(version)
        if since is None:
            since = self.since[version] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            # the loaded version's long-lived objects (per-item tuples, lists, dicts: hundreds of thousands)
            # leave the cyclic collector's scans, whose full passes over them made the requests' latency tail
            gc.freeze()
        return since


_thread_state = threading.local()


def _limit_search_threads(n: int) -> None:
    """FAISS's OpenMP thread count is per calling thread: set it once in each thread that searches."""
    if n > 0 and getattr(_thread_state, "search_threads", None) != n:
        faiss.omp_set_num_threads(n)
        _thread_state.search_threads = n


def _consistent(holder: ClientHolder, client: Client, query):
    """(version, result) with the version that answered: a swap between reading the version
    and the query's own snapshot read is seen (the version differs after) and the query repeated."""
    _limit_search_threads(holder.config.search_threads)
    for _ in range(3):
        version = client.version
        result = query()
        if client.version == version:
            break
    if version not in holder.since:
        holder.seen(version)
    return version, result


# --------------------------------------------------------------------------- JSON of results
def _price(price):
    """A float32 price as the shop wrote it (12.98, not 12.979999542236328)."""
    if price is None or (isinstance(price, float) and math.isnan(price)):
        return None
    return float(str(np.float32(price)))


def _neighbors(neighbors) -> list[dict]:
    return [{"item_id": n.item_id, "score": round(float(n.score), 6), "rank": n.rank, "category": n.category,
             "brand": n.brand, "price": _price(n.price), "in_stock": bool(n.in_stock),
             "shared": list(n.why.get("shared", ()))} for n in neighbors]


def _query_info(neighbors) -> dict:
    if not neighbors:
        return {}
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in neighbors[0].why.items() if k != "shared"}


def _metrics_summary(metrics: dict) -> dict:
    """The shipped row's segments (warm, cold) and each row's Recall@20 beside them."""
    out: dict[str, Any] = {}
    if metrics.get("name"):
        out["row"] = metrics["name"]
    for segment in ("warm", "cold"):
        seg = metrics.get(segment)
        if isinstance(seg, dict):
            out[segment] = {key: seg[key] for key in ("recall", "hit_rate", "coverage", "mrr", "n_queries")
                            if key in seg}
    rows = metrics.get("rows")
    if isinstance(rows, dict):
        out["rows_recall_at_20"] = {
            name: {segment: (row.get(segment) or {}).get("recall", {}).get("20") for segment in ("warm", "cold")}
            for name, row in rows.items() if isinstance(row, dict)}
    return out


# --------------------------------------------------------------------------- query parameters
def _similar_query(request: Request) -> SimilarQuery:
    """The GET parameters, validated by one pydantic call (FastAPI's per-parameter solving costs more
    than the query itself); `exclude` may repeat, other repeated parameters count once (the last)."""
    params = request.query_params
    values = {key: (params.getlist(key) if key == "exclude" else params.getlist(key)[-1]) for key in params}
    try:
        return SimilarQuery.model_validate(values)
    except ValidationError as exc:
        summary, details = _validation_details(exc.errors())
        if any(d["type"] == "extra_forbidden" for d in details):
            summary += f" (the parameters are {', '.join(SimilarQuery.model_fields)})"
        raise ApiError(422, "bad_parameters", f"Bad parameters: {summary}", details=details) from None


# --------------------------------------------------------------------------- API keys
class _RequireKey:
    """ASGI middleware: every /v1 request carries one of the keys (X-API-Key, or Authorization: Bearer).
    /healthz, /readyz and the OpenAPI schema and docs stay open (probes, and the API's own description)."""

    def __init__(self, app, keys: KeyChecker):
        self.app, self.keys = app, keys

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            x_api_key = authorization = None
            for name, value in scope["headers"]:
                if name == b"x-api-key":
                    x_api_key = value.decode("latin-1")
                elif name == b"authorization":
                    authorization = value.decode("latin-1")
            given = presented_key(x_api_key, authorization)
            if not self.keys.matches(given):
                response = _error(401, "unauthorized", "Missing API key." if given is None else "Wrong API key.",
                                  f"Send one of the keys in RECSYS_API_KEYS as the header `{KEY_HEADER}: KEY` "
                                  "or `Authorization: Bearer KEY`.", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _openapi(app: FastAPI, with_keys: bool) -> dict:
    """FastAPI's schema, with the API-key schemes on the /v1 operations when keys are required."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        if with_keys:
            schema.setdefault("components", {})["securitySchemes"] = {
                "APIKeyHeader": {"type": "apiKey", "in": "header", "name": KEY_HEADER,
                                 "description": "One of the keys in RECSYS_API_KEYS."},
                "HTTPBearer": {"type": "http", "scheme": "bearer",
                               "description": "Authorization: Bearer KEY, KEY one of RECSYS_API_KEYS."}}
            for path, operations in schema["paths"].items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{"APIKeyHeader": []}, {"HTTPBearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


# --------------------------------------------------------------------------- the app
def create_app(config: ServeConfig | None = None, *, api_keys=None) -> FastAPI:
    """The FastAPI app serving `config`'s version. api_keys: default RECSYS_API_KEYS (none: open)."""
    config = config or ServeConfig()
    keys = KeyChecker(api_keys_from_env() if api_keys is None else api_keys)
    holder = ClientHolder(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder.start()
        # Accept connections only after the first load attempt: with --workers N the listening socket is
        # shared, and a worker still loading would answer 503 beside ready ones. Without a version (or a
        # database), startup goes on after the attempt and the loader keeps retrying.
        await asyncio.to_thread(holder.first_attempt.wait, STARTUP_WAIT_S)
        yield
        holder.close()

    app = FastAPI(
        title="recsys similar items", version=__version__, lifespan=lifespan,
        description=(
            "Similar items from the published version the registry alias points at (the same answers as the "
            "Python `Client`). Errors are JSON: `{\"error\": {\"status\", \"code\", \"message\", \"hint\"}}`. "
            + (f"Every /v1 request needs an API key: header `{KEY_HEADER}: KEY` or `Authorization: Bearer KEY`."
               if keys else "No API keys are configured (RECSYS_API_KEYS): requests need none.")),
        responses={422: {"model": ErrorResponse, "description": "Bad parameters"}})
    app.state.holder = holder
    _install_error_handlers(app)

    if keys:
        app.add_middleware(_RequireKey, keys=keys)
    app.openapi = lambda: _openapi(app, bool(keys))
    errors = {401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
              503: {"model": ErrorResponse, "description": "No version loaded yet"}}

    @app.get("/v1/items/{item_id:path}/similar", response_model=SimilarResponse,
             responses={404: {"model": ErrorResponse, "description": "Unknown item (use /v1/similar:new-item)"},
                        **errors}, tags=["similar"], summary="Items similar to a known item",
             openapi_extra={"parameters": SimilarQuery.openapi_parameters()})
    async def similar(item_id: Annotated[str, Path(description="The item id (URL-encoded).")], request: Request):
        query = _similar_query(request)
        client = holder.require()
        filters, k = query.client_filters(), query.k
        try:
            version, neighbors = _consistent(holder, client, lambda: client.similar(item_id, k, **filters))
        except Exception as exc:
            raise _client_error(exc) from None
        return _json({"version": version, "item_id": item_id, "k": k, "neighbors": _neighbors(neighbors),
                      "query": _query_info(neighbors), "reason": getattr(neighbors, "reason", None)})

    @app.post("/v1/similar:batch", response_model=BatchResponse,
              responses={404: {"model": ErrorResponse, "description": "Unknown item ids (unknown=error)"},
                         **errors}, tags=["similar"], summary="Similar items for many known items at once")
    async def similar_batch(body: BatchRequest):
        client = holder.require()
        item_ids = body.item_ids
        missing = [i for i in item_ids if i not in client]
        if missing and body.unknown == "error":
            shown = ", ".join(repr(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise ApiError(404, "unknown_item", f"{len(missing)} item id(s) are not in version {client.version}: "
                                                f"{shown}.", NEW_ITEM_HINT + ' Or send "unknown": "omit".',
                           unknown_item_ids=missing[:1000])
        known = [i for i in item_ids if i in client] if missing else item_ids
        filters = body.client_filters()

        def run():
            return _consistent(holder, client, lambda: client.similar_batch(known, body.k, **filters))

        try:
            version, results = await run_in_threadpool(run)  # a big batch must not hold up the event loop
        except Exception as exc:
            raise _client_error(exc) from None
        return _json({"version": version, "k": body.k,
                      "results": [{"item_id": item_id, "neighbors": _neighbors(r), "query": _query_info(r),
                                   "reason": getattr(r, "reason", None)} for item_id, r in zip(known, results)],
                      "unknown_item_ids": missing})

    @app.post("/v1/similar:new-item", response_model=NewItemResponse,
              responses=errors, tags=["similar"], summary="Items similar to a new product (cold start)")
    async def similar_new_item(body: NewItemRequest):
        client = holder.require()
        filters = body.client_filters()
        item = dict(body.item)
        try:
            version, neighbors = _consistent(
                holder, client, lambda: client.similar_to_new_item(item, k=body.k, strict=body.strict, **filters))
        except Exception as exc:
            raise _client_error(exc) from None
        return _json({"version": version, "k": body.k, "neighbors": _neighbors(neighbors),
                      "query": _query_info(neighbors), "reason": getattr(neighbors, "reason", None)})

    @app.get("/v1/version", response_model=VersionResponse, responses=errors,
             tags=["version"], summary="The version served: trained-at, metrics summary")
    async def version():
        client = holder.require()
        manifest = client.manifest
        return _json({"version": manifest.get("version", client.version), "alias": None if config.bundle
                      else config.alias, "trained_at": manifest.get("created_at"), "kind": manifest.get("kind"),
                      "parent_version": manifest.get("parent_version"),
                      "format_version": manifest.get("format_version"),
                      "data_watermark": manifest.get("data_watermark") or {},
                      "row_counts": manifest.get("row_counts") or {},
                      "metrics": _metrics_summary(manifest.get("metrics") or {}),
                      "serving_since": holder.seen(client.version)})

    @app.get("/healthz", response_model=Health, tags=["operations"], summary="The process is alive")
    async def healthz():
        return _json({"status": "ok"})

    @app.get("/readyz", response_model=Readiness, tags=["operations"],
             responses={503: {"model": Readiness, "description": "No verified version loaded yet"}},
             summary="200 once a verified bundle is loaded")
    async def readyz():
        client = holder.client
        if client is None:
            detail = str(holder.error) if holder.error else (
                f"loading {config.bundle}" if config.bundle else f"loading the {config.alias} version")
            return _json({"ready": False, "version": None, "detail": detail}, 503)
        refresh_error = client.last_refresh_error
        return _json({"ready": True, "version": client.version,
                      "detail": f"last reload failed, still serving: {refresh_error}" if refresh_error else None})

    return app


def app_from_env() -> FastAPI:
    """The factory of uvicorn's workers: the config `recsys serve` wrote to RECSYS_SERVE_CONFIG."""
    text = os.environ.get(CONFIG_ENV)
    return create_app(ServeConfig.from_json(text) if text else ServeConfig())
