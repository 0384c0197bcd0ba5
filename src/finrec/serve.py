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
or, for chunked uploads, counted as it streams), 503 until the model is ready, 500 with a
generic message for anything unexpected (never a traceback in a response).

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
import os
import threading
import traceback
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Path as PathParam, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationInfo, field_validator

from finrec.data import schema as S
from finrec.errors import FinrecError, UnknownCustomerError

log = logging.getLogger("finrec.serve")

MAX_K = 50
MAX_FEATURES = 200
MAX_HOLDINGS = 1000
NOT_LOADED = "the model is still loading"

# ------------------------------------------------------------------------------------ schemas

Scalar = StrictStr | StrictInt | StrictFloat | StrictBool | None
FeatureValue = Scalar | list[StrictStr]


class FiltersIn(BaseModel):
    """The fields of ``finrec.recommend.filters.Filters``; only those given override the preset."""

    model_config = ConfigDict(extra="forbid")

    exclude_held: bool = Field(True, description="leave out products the customer already holds")
    suitability: bool = Field(True, description="leave out products above the customer's risk tolerance")
    max_risk: int | None = Field(None, ge=S.RISK_MIN, le=S.RISK_MAX, description="risk level ceiling (SRI 1-7)")
    include_categories: list[StrictStr] = Field(default_factory=list, max_length=100, description="only these product categories")
    exclude_categories: list[StrictStr] = Field(default_factory=list, max_length=100, description="never these product categories")
    eligibility: bool = Field(True, description="apply the products' income / credit score / age terms")
    preset: Literal["balanced", "conservative", "risk_tolerant"] | None = Field(
        None, description="conservative: risk level at most 3; balanced (default) and risk_tolerant: the customer's tolerance")
    max_debt_service_ratio: float | None = Field(
        None, gt=0, le=5, description="credit affordability: the most of a year's income debt service may take after the new credit (0.4 = 40%)")
    credit_score_cutoff: float | None = Field(None, description="credit products need at least this credit score")


class RecommendationRequest(BaseModel):
    """Exactly one of ``customer_id`` (a known customer) or ``features`` (a new one)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"customer_id": "C0000042", "k": 5, "filters": {"preset": "conservative"}},
            {"features": {"age": 41, "income": 52000, "risk_tolerance": 4, "holdings": []}, "k": 3},
        ]},
    )

    customer_id: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    features: dict[Annotated[str, Field(max_length=200)], FeatureValue] | None = Field(
        None, validate_default=True, max_length=MAX_FEATURES,
        description=f"raw customer columns; `{S.HOLDINGS}` lists the product ids already held")
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
                if isinstance(item, list) and name != S.HOLDINGS:
                    raise ValueError(f"features.{name}: only {S.HOLDINGS} may be a list")
                if name == S.HOLDINGS and not (item is None or isinstance(item, list)):
                    raise ValueError(f"features.{S.HOLDINGS} must be a list of product ids")
                if name == S.HOLDINGS and isinstance(item, list) and len(item) > MAX_HOLDINGS:
                    raise ValueError(f"features.{S.HOLDINGS}: at most {MAX_HOLDINGS} product ids")
        return value


ProductDetails = dict[str, Scalar]


class RecommendationItem(BaseModel):
    rank: int
    product_id: str
    score: float
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
    customer_id: str | None = Field(description="null for a customer given by features")
    k: int
    eligible: int = Field(description="products that passed every filter")
    message: str | None = Field(description="set when fewer than k products are eligible")
    filters: FiltersOut = Field(description="the filters as applied")
    recommendations: list[RecommendationItem]
    objected: bool = Field(False, description="the customer objected to profiling for marketing: no recommendation, "
                                              "and message says so")


class Product(BaseModel):
    model_config = ConfigDict(extra="allow")

    product_id: str


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


BODY_READ_TIMEOUT_S = 10.0
# Idle keep-alive connections close after 5 s; past 512 open requests a worker answers 503.
SERVER_LIMITS = {"timeout_keep_alive": 5, "limit_concurrency": 512}


class BodySizeLimit:
    """413 for a request body over ``max_bytes``: by Content-Length before anything is read, and
    counted as a chunked (or lying) body streams in. 408 for a body that stalls for more than
    ``read_timeout`` seconds (a slow client must not hold a connection open forever)."""

    def __init__(self, app, max_bytes: int, read_timeout: float = BODY_READ_TIMEOUT_S):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

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
        seen = 0
        refused: tuple[int, str] | None = None
        started = False

        async def limited_receive():
            nonlocal seen, refused
            try:
                with anyio.fail_after(self.read_timeout):
                    message = await receive()
            except TimeoutError:
                refused = (408, f"the request body did not arrive within {self.read_timeout:g} s")
                raise BodyTooLarge from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = (413, f"request body over {self.max_bytes} bytes")
                    raise BodyTooLarge
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


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


# ------------------------------------------------------------------------------------ app


def create_app(model_dir: str | Path, data_dir: str | Path | None = None, max_body_bytes: int = 64_000,
               records: str | Path | None = None) -> FastAPI:
    """The ASGI app; the recommender loads in a background thread once the app starts. With
    ``records`` (a file), every recommendation served is appended to that hash-chained record
    log (``finrec.governance.records``) before the response is sent."""
    from finrec.governance.records import RecordLog, record_of

    record_log = RecordLog(records) if records else None

    def load(app: FastAPI) -> None:
        state = app.state
        try:
            from finrec.recommend.recommender import Recommender

            recommender = Recommender.load(model_dir, data_dir)
            state.products = [{S.PRODUCT_ID: str(pid), **details}
                              for pid, details in zip(recommender.pipeline.product_ids_, recommender.products)]
            state.recommender = recommender
            log.info("model %s loaded: %d products, %d known customers", model_dir, len(state.products),
                     len(recommender.known_customers))
        except FinrecError as exc:
            state.load_error = str(exc)
            log.error("the model failed to load: %s", exc)
        except Exception as exc:  # noqa: BLE001
            state.load_error = f"{type(exc).__name__} while loading the model"
            log.error("the model failed to load: %s\n%s", type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))
        if state.load_error and state.on_load_failure is not None:
            state.on_load_failure()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.recommender = None
        app.state.load_error = None
        app.state.products = []
        if not hasattr(app.state, "on_load_failure"):
            app.state.on_load_failure = None
        threading.Thread(target=load, args=(app,), name="finrec-load", daemon=True).start()
        yield

    app = FastAPI(
        title="finrec",
        version="0.1.0",
        summary="Personalized bank product recommendations (Two-Tower model) with suitability filters.",
        lifespan=lifespan,
    )
    app.add_middleware(CatchAll)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's default echoes each bad ``input`` (which can be a NaN it then fails to render,
        # or a customer's values); the type, the field's ``loc`` and the message are enough.
        detail = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": _message(e)} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # FastAPI answers a body that json.loads cannot even start on (bytes that are not UTF-8,
        # nesting deeper than the parser's recursion limit) with a bare 400; it is invalid JSON
        # like any other: a 422 that says so.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return JSONResponse(status_code=422, content={"detail": [{
                "type": "json_invalid", "loc": ["body"],
                "msg": "JSON decode error: the body is not UTF-8 JSON, or is nested too deeply"}]})
        return await http_exception_handler(request, exc)

    @app.exception_handler(UnknownCustomerError)
    async def unknown_customer(request: Request, exc: UnknownCustomerError):
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(FinrecError)
    async def finrec_error(request: Request, exc: FinrecError):
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    def ready_recommender(request: Request):
        recommender = request.app.state.recommender
        if recommender is None:
            error = request.app.state.load_error
            raise _NotReady(f"the model failed to load: {error}" if error else NOT_LOADED)
        return recommender

    @app.exception_handler(_NotReady)
    async def not_ready(request: Request, exc: _NotReady):
        return JSONResponse(status_code=503, content={"detail": str(exc)}, headers={"Retry-After": "5"})

    errors = {
        404: {"model": ErrorBody, "description": "unknown customer_id"},
        422: {"description": "the body breaks the request schema, or the library refused a value"},
        413: {"model": ErrorBody, "description": f"request body over {max_body_bytes} bytes"},
        503: {"model": ErrorBody, "description": "the model is not loaded (yet)"},
    }

    @app.post("/recommendations", response_model=RecommendationResponse, tags=["recommendations"],
              responses={code: errors[code] for code in (404, 413, 503)})
    async def recommendations(body: RecommendationRequest, request: Request):
        """The top ``k`` eligible products for a known customer or for one given by features."""
        recommender = ready_recommender(request)
        filters = body.filters.model_dump(exclude_unset=True) if body.filters is not None else None
        customer = body.customer_id if body.customer_id is not None else body.features
        # Sub-millisecond numpy work: a thread hop would cost more than it saves. The body is
        # built here and sent as is; response_model above documents it in the OpenAPI schema.
        result = recommender.recommend(customer, k=body.k, filters=filters)
        if record_log is not None:
            # Recorded before it is shown: an fsync'd append, off the event loop.
            await anyio.to_thread.run_sync(record_log.append, record_of(result, recommender.model_version))
        return JSONResponse(_response(result))

    @app.get("/products", response_model=ProductsResponse, tags=["catalogue"], responses={503: errors[503]})
    async def products(request: Request):
        """The product catalogue, in model order, with the details shown in recommendations."""
        ready_recommender(request)
        items = request.app.state.products
        return {"count": len(items), "products": items}

    @app.get("/customers/{customer_id}", response_model=CustomerProfile, tags=["customers"],
             responses={404: errors[404], 503: errors[503]})
    async def customer(request: Request, customer_id: Annotated[str, PathParam(max_length=200)]):
        """A known customer's attributes and held products."""
        return ready_recommender(request).customer_profile(customer_id)

    @app.get("/health", response_model=Status, response_model_exclude_none=True, tags=["operations"])
    async def health():
        """The process is alive (always 200)."""
        return {"status": "ok"}

    @app.get("/ready", response_model=Status, response_model_exclude_none=True, tags=["operations"], responses={503: {"model": Status}})
    async def ready(request: Request):
        """200 once the model is loaded; 503 while it loads or after it failed to load."""
        state = request.app.state
        if state.recommender is not None:
            return {"status": "ready"}
        if state.load_error:
            return JSONResponse(status_code=503, content={"status": "failed", "detail": state.load_error})
        return JSONResponse(status_code=503, content={"status": "loading", "detail": NOT_LOADED})

    return app


class _NotReady(Exception):
    pass


def _response(result) -> dict[str, Any]:
    """``RecommendationResult.to_dict`` without its deep copies (the product dicts are shared, read-only)."""
    return {
        "customer_id": result.customer_id,
        "k": result.k,
        "eligible": result.eligible,
        "message": result.message,
        "filters": {name: getattr(result.filters, name) for name in FiltersOut.model_fields},
        "recommendations": [
            {"rank": item.rank, "product_id": item.product_id, "score": item.score, "product": item.product, "reason": item.reason}
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
    return create_app(os.environ["FINREC_SERVE_MODEL"], os.environ.get("FINREC_SERVE_DATA") or None,
                      records=os.environ.get("FINREC_SERVE_RECORDS") or None)


def run(model_dir: str | Path, data_dir: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
        workers: int = 1, records: str | Path | None = None) -> None:
    """Serve with uvicorn until interrupted; stops (and raises ``FinrecError``) if the model fails to load.
    ``workers`` > 1 starts that many processes (each loads the model), to use every core."""
    import uvicorn

    if workers > 1:
        from finrec.artifacts import read_manifest

        read_manifest(model_dir)  # fail fast, once, on a missing or damaged model
        os.environ["FINREC_SERVE_MODEL"] = str(model_dir)
        os.environ["FINREC_SERVE_DATA"] = str(data_dir or "")
        os.environ["FINREC_SERVE_RECORDS"] = str(records or "")
        uvicorn.run("finrec.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level="warning", access_log=False, **SERVER_LIMITS)
        return

    app = create_app(model_dir, data_dir, records=records)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                            **SERVER_LIMITS)
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    app.state.on_load_failure = stop
    server.run()
    error = getattr(app.state, "load_error", None)
    if error:
        raise FinrecError(error)
