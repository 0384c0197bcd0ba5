"""The REST API: a thin FastAPI adapter over ``finrec.recommend.Recommender``.

    finrec serve --model models/default [--data data/bank] [--host 127.0.0.1] [--port 8000]

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

- ``POST /recommendations``: ``{"customer_id": "C0000042", "k": 5, "filters": {"preset": "conservative"}}``
  or ``{"features": {"age": 41, "income": 52000, ..., "holdings": ["P01"]}, "k": 5}``;
- ``GET /products``: the catalogue; ``GET /customers/{customer_id}``: a known customer's profile;
- ``GET /health``: the process is alive (always 200); ``GET /ready``: 200 once the model is
  loaded, 503 while it loads or when loading failed.

Status codes: 422 for a body that breaks the request schema (``loc`` names the field) or that
the library refuses (``FinrecError``: a non-numeric feature, an unknown held product, a bad
filter), 404 for an unknown customer, 413 for a body over ``max_body_bytes`` (by Content-Length
or, for chunked uploads, counted as it streams), 408 for a body not in ``body_timeout`` seconds
after the request started (one total deadline, however it trickles), 503 until the model is ready
and past ``max_requests`` requests in progress (``/health`` and ``/ready`` are never counted, so
slow clients cannot starve the probes), 500 with a generic message for anything unexpected
(never a traceback in a response).

The model loads in a background thread started by the lifespan handler, so ``/health`` answers
at once and ``/ready`` turns 200 when the recommender is in place. Logs carry ids, paths and
exception types only, never customer feature values (uvicorn's access log is off).

``/recommendations`` runs the recommender on the event loop: a request is sub-millisecond numpy
work (the numpy tower, the filter masks, a partial sort), less than a thread hop costs.
``finrec serve --workers N`` runs N processes to use every core.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import traceback
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from finrec.config import env_switch
from finrec.data import schema as S
from finrec.errors import ConfigError, DataError, FinrecError, RecordLogError, UnknownCustomerError, reject_unknown
from finrec.recommend import filters as F

log = logging.getLogger("finrec.serve")

MAX_K = 50
MAX_FEATURES = 200
MAX_HOLDINGS = 1000
NOT_LOADED = "the model is still loading"

# ------------------------------------------------------------------------------------ schemas

Scalar = StrictStr | StrictInt | StrictFloat | StrictBool | None
HistoryEntry = dict[Literal["product_id", "as_of"], Annotated[StrictStr, Field(max_length=200)]]
FeatureValue = Scalar | list[StrictStr] | list[HistoryEntry]
MAX_ID = 10**18  # an integer customer_id: at most 19 digits (a 400-digit one is no id)


def _integer_id_as_text(value):
    """A JSON integer customer_id as its text: ids are compared as text (``finrec.data.ids``),
    and a bank whose ids are numbers sends them as numbers (refused with "a valid string", a
    tester). A bool, a float or a longer integer is refused, naming what an id may be."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_ID:
        return str(value)
    if value is not None and not isinstance(value, str):
        raise ValueError("customer_id must be text or an integer of at most 19 digits")
    return value


HISTORY = "history"  # features.history: a new customer's past snapshots [{product_id, as_of}, ...]
MAX_HISTORY = 10000
NOT_UNICODE = "not valid Unicode text: it holds a lone surrogate (an unpaired \\ud800-\\udfff escape)"


def _is_unicode(text: str) -> bool:
    # json.loads accepts a lone "\ud800" escape and makes a str that no UTF-8 encoder (Arrow, the
    # response renderer) will take: refused at the boundary, where the field can still be named.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unicode(text: str) -> str:
    if not _is_unicode(text):
        raise ValueError(NOT_UNICODE)
    return text


Text = Annotated[StrictStr, AfterValidator(_unicode)]


def _feature_problem(name: str, value: Any) -> str | None:
    """Why a feature value cannot even reach the library (which words the rest), or None."""
    items = value if isinstance(value, list) else [value]
    if any(isinstance(item, str) and not _is_unicode(item) for item in items):
        return f"features.{name}: {NOT_UNICODE}"
    if isinstance(value, int) and not isinstance(value, bool):
        try:  # an integer literal of 310+ digits is a valid JSON number but no float
            float(value)
        except OverflowError:
            return f"features.{name}: a {len(str(abs(value)))}-digit integer is beyond the float range (1.8e308)"
    if isinstance(value, float) and not math.isfinite(value):  # NaN, Infinity, 1e309: Python's JSON extensions
        return f"features.{name}: NaN, Infinity and numbers beyond 1.8e308 are refused (null marks a missing value)"
    return None


class FiltersIn(BaseModel):
    """The fields of ``finrec.recommend.filters.Filters``; only those given override the preset."""

    model_config = ConfigDict(extra="forbid")

    # Strict types: "no", 0 or "false" for a boolean (and true or "3" for an integer) would
    # otherwise be coerced, turning a filter off or to 1 without a word.
    exclude_held: StrictBool = Field(True, description="leave out products the customer already holds")
    suitability: StrictBool = Field(True, description="leave out products above the customer's risk tolerance")
    max_risk: StrictInt | None = Field(None, ge=S.RISK_MIN, le=S.RISK_MAX, description="risk level ceiling (SRI 1-7)")
    include_categories: list[Text] = Field(
        default_factory=list, max_length=100, description="only these product categories"
    )
    exclude_categories: list[Text] = Field(
        default_factory=list, max_length=100, description="never these product categories"
    )
    eligibility: StrictBool = Field(True, description="apply the products' income / credit score / age terms")
    preset: Literal[F.PRESET_NAMES] | None = Field(None, description=F.PRESET_HELP)
    max_debt_service_ratio: StrictFloat | StrictInt | None = Field(
        None,
        gt=0,
        le=5,
        description="credit affordability: the most of a year's income debt service may take after "
        "the new credit (0.4 = 40%)",
    )
    credit_score_cutoff: StrictFloat | StrictInt | None = Field(
        None, description="credit products need at least this credit score"
    )


class RecommendationRequest(BaseModel):
    """Exactly one of ``customer_id`` (a known customer) or ``features`` (a new one)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"customer_id": "C0000042", "k": 5, "filters": {"preset": "conservative"}},
                {"features": {"age": 41, "income": 52000, "risk_tolerance": 4, "holdings": []}, "k": 3},
            ]
        },
    )

    customer_id: (
        Annotated[
            Text,
            Field(min_length=1, max_length=200, description="text, or an integer (ids are compared as text)"),
            BeforeValidator(_integer_id_as_text),
        ]
        | None
    ) = None
    features: dict[Annotated[Text, Field(max_length=200)], FeatureValue] | None = Field(
        None,
        validate_default=True,
        max_length=MAX_FEATURES,
        description=f"raw customer columns; `{S.HOLDINGS}` lists the product ids already held, "
        f"`{HISTORY}` (optional) past snapshots as {{product_id, as_of}} entries",
    )
    k: StrictInt = Field(5, ge=1, le=MAX_K, description="how many products to return")
    filters: FiltersIn | None = None

    @field_validator("features")
    @classmethod
    def _exactly_one(cls, value: dict | None, info: ValidationInfo) -> dict | None:
        if "customer_id" not in info.data:  # customer_id itself failed; its error says why
            return value
        given = info.data["customer_id"] is not None
        if given == (value is not None):
            raise ValueError("give exactly one of customer_id or features" + (", not both" if given else ""))
        if value is not None:
            for name, item in value.items():
                if name == HISTORY:
                    if item is not None and not (
                        isinstance(item, list) and all(isinstance(e, dict) and len(e) == 2 for e in item)
                    ):
                        raise ValueError(f"features.{HISTORY} must be a list of {{product_id, as_of}} entries")
                    if item is not None and len(item) > MAX_HISTORY:
                        raise ValueError(f"features.{HISTORY}: at most {MAX_HISTORY} entries")
                    continue
                if isinstance(item, list) and name != S.HOLDINGS:
                    raise ValueError(f"features.{name}: only {S.HOLDINGS} and {HISTORY} may be lists")
                if name == S.HOLDINGS and not (item is None or isinstance(item, list)):
                    raise ValueError(f"features.{S.HOLDINGS} must be a list of product ids")
                if name == S.HOLDINGS and isinstance(item, list) and len(item) > MAX_HOLDINGS:
                    raise ValueError(f"features.{S.HOLDINGS}: at most {MAX_HOLDINGS} product ids")
                problem = _feature_problem(name, item)
                if problem:
                    raise ValueError(problem)
        return value


ProductDetails = dict[str, Scalar]


class RecommendationItem(BaseModel):
    rank: int
    product_id: str
    score: float
    probability: float | None = Field(
        None,
        description="calibrated probability that the customer adopts the product "
        "in the period; null when the model has no calibration",
    )
    product: ProductDetails
    reason: str


class FiltersOut(BaseModel):
    exclude_held: bool
    suitability: bool
    max_risk: int | None
    include_categories: list[str]
    exclude_categories: list[str]
    eligibility: bool
    preset: str | None
    target_market: bool
    affordability: bool
    max_debt_service_ratio: float
    credit_score_cutoff: float | None


class RecommendationResponse(BaseModel):
    customer_id: str | None = Field(
        description="the customer's id; for one given by features, the known customer they name, else null"
    )
    k: int
    eligible: int = Field(description="products that passed every filter")
    message: str | None = Field(description="set when fewer than k products are eligible")
    filters: FiltersOut = Field(description="the filters as applied")
    recommendations: list[RecommendationItem]
    model_version: str | None = Field(None, description="the model version that produced these recommendations")
    objected: bool = Field(
        False, description="the customer objected to profiling for marketing: no recommendation, and message says so"
    )


class Product(BaseModel):
    model_config = ConfigDict(extra="allow")

    product_id: str


def catalogue_listing(recommender) -> list[dict[str, Any]]:
    """``GET /products``: each product of the model, in its order, with the details shown in
    recommendations and whether it is ``offered``: false for one the data's products table no
    longer lists (the rules never offer it; the listing showed it like any other)."""
    gone = recommender.catalogue.discontinued
    return [
        {S.PRODUCT_ID: str(pid), **details, "offered": not (gone is not None and bool(gone[j]))}
        for j, (pid, details) in enumerate(zip(recommender.pipeline.product_ids_, recommender.products))
    ]


class ProductsResponse(BaseModel):
    count: int
    products: list[Product]


class CustomerProfile(BaseModel):
    customer_id: str
    attributes: dict[str, Any]
    holdings: list[str]


class Status(BaseModel):
    status: str
    detail: str | None = None


class ErrorBody(BaseModel):
    detail: str


# ------------------------------------------------------------------------------------ middleware


class BodyTooLarge(Exception):
    """The request body was refused while it streamed in (too large, or too slow)."""


BODY_TIMEOUT_S = 10.0  # the whole body must be in within this many seconds of the request's start
MAX_REQUESTS = 512  # requests in progress at once, per process (the liveness probes aside)
LIVENESS_PATHS = frozenset({"/health", "/ready"})
# uvicorn's own limit counts every open connection, idle keep-alive ones too, and past it answers
# even /health with 503: it stays only as a backstop on connections, far above MAX_REQUESTS.
CONNECTIONS_PER_REQUEST = 4
KEEP_ALIVE_S = 5  # idle keep-alive connections close after this
ENV_BODY_TIMEOUT = "FINREC_SERVE_BODY_TIMEOUT_S"  # how ``run`` (and each worker process) gets them
ENV_MAX_REQUESTS = "FINREC_SERVE_MAX_REQUESTS"
ENV_ENFORCE_RULES = "FINREC_SERVE_ENFORCE_RULES"  # "1": as ``--enforce-rules``


class BodySizeLimit:
    """The request limits, before the app sees a request:

    - 413 for a body over ``max_bytes``: by Content-Length before anything is read, and counted
      as a chunked (or lying) body streams in;
    - 408 for a body not complete ``body_timeout`` seconds after the request started: one total
      deadline, so a client trickling a byte at a time cannot hold the request open for ever;
    - 503 (``Retry-After``) past ``max_requests`` requests in progress, so that slow bodies hold
      at most that many; ``/health`` and ``/ready`` are not counted and answer all the same.
    """

    def __init__(self, app, max_bytes: int, body_timeout: float = BODY_TIMEOUT_S, max_requests: int = MAX_REQUESTS):
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout
        self.max_requests = max_requests
        self.in_progress = 0  # one event loop per process: no lock needed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                if length > self.max_bytes:
                    return await _send_json(send, 413, {"detail": f"request body over {self.max_bytes} bytes"})
        if scope.get("path") in LIVENESS_PATHS:
            return await self._limited(scope, receive, send)
        if self.in_progress >= self.max_requests:
            busy = {"detail": f"over {self.max_requests} requests in progress; retry shortly"}
            return await _send_json(send, 503, busy, [(b"retry-after", b"1")])
        self.in_progress += 1
        try:
            await self._limited(scope, receive, send)
        finally:
            self.in_progress -= 1

    async def _limited(self, scope, receive, send):
        deadline = anyio.current_time() + self.body_timeout
        seen = 0
        body_done = False
        refused: tuple[int, str] | None = None
        started = False

        async def limited_receive():
            nonlocal seen, refused, body_done
            if body_done:  # later reads wait for the client to disconnect: no deadline on those
                return await receive()
            try:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0)):
                    message = await receive()
            except TimeoutError:
                refused = (408, f"the request body did not arrive within {self.body_timeout:g} s")
                raise BodyTooLarge from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = (413, f"request body over {self.max_bytes} bytes")
                    raise BodyTooLarge
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def guarded_send(message):
            nonlocal started
            if refused and not started:
                return  # whatever the app answers to the aborted read (FastAPI: a 400), the client gets ours
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        if refused and not started:
            await _send_json(send, refused[0], {"detail": refused[1]})


class CatchAll:
    """500 with a generic body for anything unexpected; logs the exception type and the stack
    frames, not the message (which could quote a request's values)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except BodyTooLarge:
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("unhandled %s in %s %s\n%s", type(exc).__name__, scope.get("method"), scope.get("path"), frames)
            if not started:
                await _send_json(send, 500, {"detail": "internal server error"})


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


# ------------------------------------------------------------------------------------ app


class SafeJSONResponse(JSONResponse):
    """JSON that a lone surrogate in a string cannot turn into a 500: it goes out as its
    ``\\udXXX`` escape (ASCII, still valid JSON) instead of failing to encode as UTF-8."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _positive(label: str, value, kind: type):
    """``value`` as a positive, finite ``kind`` (int or float); ``ConfigError`` naming ``label`` if not."""
    try:
        number = kind(value)
        ok = (
            number > 0
            and math.isfinite(number)
            and not isinstance(value, bool)
            and not (kind is int and isinstance(value, float))
        )
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        wanted = "integer" if kind is int else "number"
        raise ConfigError(f"{label} must be a positive {wanted}, got {str(value)[:40]!r}")
    return number


def _from_env(label: str, value, env: str, default, kind: type):
    """``value`` if given, else the environment variable ``env`` if set, else ``default``."""
    if value is not None:
        return _positive(label, value, kind)
    if os.environ.get(env):
        return _positive(env, os.environ[env], kind)
    return default


def create_app(
    model_dir: str | Path | None,
    data_dir: str | Path | None = None,
    max_body_bytes: int = 64_000,
    body_timeout: float = BODY_TIMEOUT_S,
    max_requests: int = MAX_REQUESTS,
    registry_root: str | Path | None = None,
    poll_seconds: float = 1.0,
    records: str | Path | None = None,
    enforce_rules: bool = False,
) -> FastAPI:
    """The ASGI app; the recommender loads in a background thread once the app starts.
    ``body_timeout``: seconds from a request's start by which its whole body must be in (408
    after); ``max_requests``: requests in progress at once, the liveness probes aside (503 past it).

    With ``registry_root`` (instead of ``model_dir``) the promoted version of that model registry
    is served, and a newly promoted one replaces it without dropping a request (see
    ``_watch_registry``). With ``records`` (a file), every recommendation served is appended to
    that hash-chained record log (``finrec.governance.records``) before the response is sent.
    With ``enforce_rules``, a request whose ``filters`` loosen any rule (``filters.loosened``:
    suitability off, a higher debt-service limit ...) is refused with a 403: callers may tighten
    the filters, never relax them. (A request's ``features`` still state the profile the rules
    judge: enforcement is about the filters.)"""
    body_timeout = _positive("body_timeout", body_timeout, float)
    max_requests = _positive("max_requests", max_requests, int)
    from finrec.governance.records import RecordLog, record_of

    record_log = RecordLog(records) if records else None

    def load(app: FastAPI) -> None:
        state = app.state
        try:
            from finrec.recommend.recommender import Recommender

            version, path = _model_source(model_dir, registry_root)
            # The numpy tower answers every request: the Keras model was rebuilt for nothing.
            recommender = Recommender.load(path, data_dir, keras_model=False)
            recommender.served_version = version
            state.products = catalogue_listing(recommender)
            state.recommender = recommender
            if registry_root is not None:
                state.watcher = _watch_registry(app, registry_root, version, data_dir, poll_seconds)
            log.info(
                "model %s loaded: %d products, %d known customers",
                model_dir,
                len(state.products),
                len(recommender.known_customers),
            )
        except FinrecError as exc:
            state.load_error = str(exc)
            log.error("the model failed to load: %s", exc)
        except Exception as exc:  # noqa: BLE001
            state.load_error = f"{type(exc).__name__} while loading the model"
            log.error(
                "the model failed to load: %s\n%s", type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__))
            )
        if state.load_error and state.on_load_failure is not None:
            state.on_load_failure()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.recommender = None
        app.state.load_error = None
        app.state.products = []
        if not hasattr(app.state, "on_load_failure"):
            app.state.on_load_failure = None
        app.state.watcher = None
        threading.Thread(target=load, args=(app,), name="finrec-load", daemon=True).start()
        yield
        if app.state.watcher is not None:
            app.state.watcher.stop()

    app = FastAPI(
        title="finrec",
        version="0.1.0",
        summary="Personalized bank product recommendations (Two-Tower model) with suitability filters.",
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
    )
    app.add_middleware(CatchAll)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, body_timeout=body_timeout, max_requests=max_requests)
    app.add_middleware(ModelVersionHeader)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's default echoes each bad ``input`` (which can be a NaN it then fails to render,
        # or a customer's values); the type, the field's ``loc`` and the message are enough.
        detail = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": _message(e)} for e in exc.errors()]
        return SafeJSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # FastAPI answers a body that json.loads cannot even start on (bytes that are not UTF-8,
        # nesting deeper than the parser's recursion limit) with a bare 400; it is invalid JSON
        # like any other: a 422 that says so.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return SafeJSONResponse(
                status_code=422,
                content={
                    "detail": [
                        {
                            "type": "json_invalid",
                            "loc": ["body"],
                            "msg": "JSON decode error: the body is not UTF-8 JSON, or is nested too deeply",
                        }
                    ]
                },
            )
        return await http_exception_handler(request, exc)

    @app.exception_handler(UnknownCustomerError)
    async def unknown_customer(request: Request, exc: UnknownCustomerError):
        return SafeJSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(FinrecError)
    async def finrec_error(request: Request, exc: FinrecError):
        return SafeJSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(RecordLogError)
    async def record_log_error(request: Request, exc: RecordLogError):
        # The service's fault, not the caller's: nothing is answered that was not recorded.
        log.error("record log: %s", exc)
        return SafeJSONResponse(status_code=503, content={"detail": f"the recommendation was not recorded: {exc}"})

    def ready_recommender(request: Request):
        recommender = request.app.state.recommender
        if recommender is None:
            error = request.app.state.load_error
            raise _NotReady(f"the model failed to load: {error}" if error else NOT_LOADED)
        return recommender

    @app.exception_handler(_NotReady)
    async def not_ready(request: Request, exc: _NotReady):
        return SafeJSONResponse(status_code=503, content={"detail": str(exc)}, headers={"Retry-After": "5"})

    errors = {
        403: {
            "model": ErrorBody,
            "description": "the filters loosen a rule the service enforces (serve --enforce-rules)",
        },
        404: {"model": ErrorBody, "description": "unknown customer_id"},
        422: {"description": "the body breaks the request schema, or the library refused a value"},
        413: {"model": ErrorBody, "description": f"request body over {max_body_bytes} bytes"},
        503: {
            "model": ErrorBody,
            "description": "the model is not loaded (yet), or the record log (serve --records) cannot be written",
        },
    }

    @app.post(
        "/recommendations",
        response_model=RecommendationResponse,
        tags=["recommendations"],
        responses={code: errors[code] for code in (403, 404, 413, 503)},
    )
    async def recommendations(body: RecommendationRequest, request: Request):
        """The top ``k`` eligible products for a known customer or for one given by features."""
        recommender = ready_recommender(request)
        filters = body.filters.model_dump(exclude_unset=True) if body.filters is not None else None
        if enforce_rules and filters:
            filters = F.Filters.build(filters)  # built once: recommend takes it as it is
            loose = F.loosened(filters)
            if loose:
                # Any caller could switch suitability off and be answered with products above the
                # customer's risk tolerance; the record log said so only afterwards.
                return SafeJSONResponse(
                    status_code=403,
                    content={
                        "detail": f"this service enforces the bank's rules; the filters loosen them: "
                        f"{'; '.join(loose)} (a request may tighten the filters, never relax them)"
                    },
                )
        if body.features is not None:
            check_feature_keys(recommender.schema, body.features)
        customer = body.customer_id if body.customer_id is not None else body.features
        # Sub-millisecond numpy work: a thread hop would cost more than it saves. The body is
        # built here and sent as is; response_model above documents it in the OpenAPI schema.
        result = recommender.recommend(customer, k=body.k, filters=filters)
        if record_log is not None:
            # Recorded before it is shown: an fsync'd append, off the event loop.
            await anyio.to_thread.run_sync(record_log.append, record_of(result, recommender.model_version))
        version = getattr(recommender, "served_version", None)
        return SafeJSONResponse(
            {**_response(result), "model_version": version},
            headers={MODEL_VERSION_HEADER: version} if version else None,
        )

    @app.get("/products", response_model=ProductsResponse, tags=["catalogue"], responses={503: errors[503]})
    async def products(request: Request):
        """The product catalogue, in model order, with the details shown in recommendations."""
        ready_recommender(request)
        items = request.app.state.products
        return {"count": len(items), "products": items}

    @app.get(
        "/customers/{customer_id}",
        response_model=CustomerProfile,
        tags=["customers"],
        responses={404: errors[404], 503: errors[503]},
    )
    async def customer(request: Request, customer_id: Annotated[str, PathParam(max_length=200)]):
        """A known customer's attributes and held products."""
        return ready_recommender(request).customer_profile(customer_id)

    @app.get("/health", response_model=Status, response_model_exclude_none=True, tags=["operations"])
    async def health():
        """The process is alive (always 200)."""
        return {"status": "ok"}

    @app.get(
        "/ready",
        response_model=Status,
        response_model_exclude_none=True,
        tags=["operations"],
        responses={503: {"model": Status}},
    )
    async def ready(request: Request):
        """200 once the model is loaded; 503 while it loads or after it failed to load."""
        state = request.app.state
        if state.recommender is not None:
            return {"status": "ready"}
        if state.load_error:
            return SafeJSONResponse(status_code=503, content={"status": "failed", "detail": state.load_error})
        return SafeJSONResponse(status_code=503, content={"status": "loading", "detail": NOT_LOADED})

    return app


class _NotReady(Exception):
    pass


def check_feature_keys(schema: S.DatasetSchema, features: dict) -> None:
    """Refuse a key of a request's ``features`` that names no customer column of the model's
    schema (nor ``holdings`` or ``history``): a misspelled ``risk_tolerence`` was answered as if
    the value were missing (imputed, or risk tolerance 1), with a 200 (a tester). Only here: the
    dashboard hands the library whole table rows, which may carry columns the schema leaves out."""
    table = schema.customers
    allowed = {
        table.id,
        *table.numeric_features,
        *table.categorical_features,
        *table.protected,
        *table.compliance_columns,
        *(S.INCOME, S.CREDIT_SCORE, S.AGE),  # the eligibility terms read them, features or not
        S.HOLDINGS,
        HISTORY,
    }
    reject_unknown(features, allowed, "features", error=DataError)


def _response(result) -> dict[str, Any]:
    """``RecommendationResult.to_dict`` without its deep copies (the product dicts are shared, read-only)."""
    return {
        "customer_id": result.customer_id,
        "k": result.k,
        "eligible": result.eligible,
        "message": result.message,
        "filters": {name: getattr(result.filters, name) for name in FiltersOut.model_fields},
        "recommendations": [
            {
                "rank": item.rank,
                "product_id": item.product_id,
                "score": item.score,
                "probability": item.probability,
                "product": item.product,
                "reason": item.reason,
            }
            for item in result.items
        ],
        "objected": result.objected,
    }


def _message(error: dict) -> str:
    message = str(error.get("msg", "invalid value"))
    reason = (error.get("ctx") or {}).get("error")
    if error.get("type") == "json_invalid" and isinstance(reason, str):
        message = f"{message}: {reason}"
    return message


def app_from_env() -> FastAPI:
    """The app for worker processes (``finrec serve --workers N``), configured by environment."""
    return create_app(
        os.environ.get("FINREC_SERVE_MODEL") or None,
        os.environ.get("FINREC_SERVE_DATA") or None,
        body_timeout=_from_env("body_timeout", None, ENV_BODY_TIMEOUT, BODY_TIMEOUT_S, float),
        max_requests=_from_env("max_requests", None, ENV_MAX_REQUESTS, MAX_REQUESTS, int),
        registry_root=os.environ.get("FINREC_SERVE_ROOT") or None,
        records=os.environ.get("FINREC_SERVE_RECORDS") or None,
        enforce_rules=bool(env_switch(ENV_ENFORCE_RULES)),
    )


def run(
    model_dir: str | Path | None,
    data_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    body_timeout: float | None = None,
    max_requests: int | None = None,
    registry_root: str | Path | None = None,
    records: str | Path | None = None,
    enforce_rules: bool = False,
) -> None:
    """Serve with uvicorn until interrupted; stops (and raises ``FinrecError``) if the model fails to load.
    ``workers`` > 1 starts that many processes (each loads the model), to use every core.
    ``body_timeout`` and ``max_requests`` (see ``create_app``; per process) default to the
    environment variables ``FINREC_SERVE_BODY_TIMEOUT_S`` and ``FINREC_SERVE_MAX_REQUESTS``, then
    to 10 s and 512. ``registry_root`` serves the promoted version of a model registry instead of
    ``model_dir``. ``enforce_rules`` (or ``FINREC_SERVE_ENFORCE_RULES=1``): see ``create_app``."""
    import uvicorn

    body_timeout = _from_env("body_timeout", body_timeout, ENV_BODY_TIMEOUT, BODY_TIMEOUT_S, float)
    max_requests = _from_env("max_requests", max_requests, ENV_MAX_REQUESTS, MAX_REQUESTS, int)
    # Either switch turns it on; neither turns off what the other turned on.
    enforce_rules = enforce_rules or bool(env_switch(ENV_ENFORCE_RULES))
    limits = {"timeout_keep_alive": KEEP_ALIVE_S, "limit_concurrency": CONNECTIONS_PER_REQUEST * max_requests}
    if workers > 1:
        from finrec.artifacts import read_manifest

        read_manifest(_model_source(model_dir, registry_root)[1])  # fail fast, once, on a missing or damaged model
        if records:  # and on a file that is not a record log, or one that does not match its head
            from finrec.governance.records import RecordLog

            RecordLog(records).close()
        os.environ["FINREC_SERVE_MODEL"] = str(model_dir or "")
        os.environ["FINREC_SERVE_ROOT"] = str(registry_root or "")
        os.environ["FINREC_SERVE_DATA"] = str(data_dir or "")
        os.environ[ENV_BODY_TIMEOUT] = repr(body_timeout)
        os.environ[ENV_MAX_REQUESTS] = str(max_requests)
        os.environ["FINREC_SERVE_RECORDS"] = str(records or "")
        os.environ[ENV_ENFORCE_RULES] = "1" if enforce_rules else ""
        uvicorn.run(
            "finrec.serve:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
            **limits,
        )
        return

    app = create_app(
        model_dir,
        data_dir,
        body_timeout=body_timeout,
        max_requests=max_requests,
        registry_root=registry_root,
        records=records,
        enforce_rules=enforce_rules,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on", **limits)
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    app.state.on_load_failure = stop
    server.run()
    error = getattr(app.state, "load_error", None)
    if error:
        raise FinrecError(error)


# ------------------------------------------------------------------------------------ model versions

MODEL_VERSION_HEADER = "x-model-version"


def _model_source(model_dir, registry_root) -> tuple[str, Path]:
    """(version, model directory): the promoted version of ``registry_root``, or ``model_dir``
    named after its folder."""
    if registry_root is not None:
        from finrec.governance.registry import promoted_model

        return promoted_model(registry_root)
    return Path(model_dir).name, Path(model_dir)


def _watch_registry(app: FastAPI, root, version: str, data_dir, poll_seconds: float):
    """Poll the registry; load a newly promoted version beside the one serving (or take it from
    the warm standbys, see ``PointerWatcher``), then swap it in.

    A request reads ``app.state.recommender`` once and uses that object to the end, and the swap
    is one attribute assignment: a request is answered whole by the old version or whole by the
    new one, and none waits on a load."""
    from finrec.governance.registry import PointerWatcher
    from finrec.recommend.recommender import Recommender

    datasets: dict = {}  # the data directory, loaded once for every version while unchanged

    def load(new_version: str, path: Path):
        recommender = Recommender.load(path, data_dir, datasets=datasets, keras_model=False)
        recommender.served_version = new_version
        return recommender, catalogue_listing(recommender)

    def install(new_version: str, loaded) -> None:
        recommender, products = loaded
        app.state.products = products
        app.state.recommender = recommender

    return PointerWatcher(root, version, load, install, interval=poll_seconds).start()


class ModelVersionHeader:
    """Adds ``x-model-version`` (the version serving now) to every response that lacks one."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope["app"].state if "app" in scope else None

        async def tagged_send(message):
            if message["type"] == "http.response.start":
                recommender = getattr(state, "recommender", None) if state is not None else None
                version = getattr(recommender, "served_version", None)
                headers = list(message.get("headers", ()))
                if version and not any(name == MODEL_VERSION_HEADER.encode() for name, _ in headers):
                    message = {**message, "headers": [*headers, (MODEL_VERSION_HEADER.encode(), version.encode())]}
            await send(message)

        await self.app(scope, receive, tagged_send)
