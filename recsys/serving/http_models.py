"""The JSON shapes of the HTTP API (`recsys serve`): request bodies, responses, errors.

Pydantic models: they validate the request bodies and they are the OpenAPI
schema. Responses are built as plain dicts of these shapes (a query answers
in well under a millisecond; validating its own output would double that).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

MAX_K = 1000  # neighbours per query
MAX_BATCH = 1000  # item ids per batch request


def _id_text(value):
    """Item ids are text; a JSON number (12345) is taken as its decimal text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


ItemId = Annotated[str, BeforeValidator(_id_text)]


class Filters(BaseModel):
    """The client's filters (`Client.similar`). Under a filter, k results still come back
    when k items match."""

    model_config = ConfigDict(extra="forbid")

    exclude: list[ItemId] = Field(default_factory=list, description="Never return these item ids.")
    in_stock_only: bool = Field(False, description="Only items in stock.")
    same_category: bool | None = Field(None, description="true: same category as the query item; false: "
                                                         "another category; absent/null: any.")
    same_brand: bool | None = Field(None, description="true: same brand; false: another brand; absent/null: any.")
    min_price: float | None = Field(None, ge=0, allow_inf_nan=False, description="Lowest price.")
    max_price: float | None = Field(None, ge=0, allow_inf_nan=False, description="Highest price.")
    price_ratio: tuple[float, float] | None = Field(
        None, description="[lo, hi]: price between lo and hi times the query item's price, e.g. [0.5, 2.0].")

    def client_filters(self) -> dict:
        return {"exclude": self.exclude, "in_stock_only": self.in_stock_only, "same_category": self.same_category,
                "same_brand": self.same_brand, "min_price": self.min_price, "max_price": self.max_price,
                "price_ratio": self.price_ratio}


def _blank(value):
    return None if value == "" else value  # `?in_stock_only=&k=`: an empty value is no value


def _ratio(value):
    """`lo,hi` (or lo:hi) as a pair of numbers."""
    if value == "" or value is None:
        return None
    if isinstance(value, str):
        parts = value.replace(":", ",").split(",")
        if len(parts) != 2:
            raise ValueError(f"price_ratio must be lo,hi such as 0.5,2 (got {value!r})")
        return tuple(p.strip() for p in parts)
    return value


class SimilarQuery(BaseModel):
    """The query parameters of GET /v1/items/{item_id}/similar (all optional; empty values are absent)."""

    model_config = ConfigDict(extra="forbid")

    k: Annotated[int, BeforeValidator(lambda v: 10 if v == "" else v)] = Field(
        10, ge=1, le=MAX_K, description="How many neighbours; k come back under filters whenever k items match.")
    in_stock_only: Annotated[bool | None, BeforeValidator(_blank)] = Field(None, description="Only items in stock.")
    same_category: Annotated[bool | None, BeforeValidator(_blank)] = Field(
        None, description="true: the query item's category only; false: other categories only.")
    same_brand: Annotated[bool | None, BeforeValidator(_blank)] = Field(
        None, description="true: the query item's brand only; false: other brands only.")
    min_price: Annotated[float | None, BeforeValidator(_blank)] = Field(
        None, ge=0, allow_inf_nan=False, description="Lowest price.")
    max_price: Annotated[float | None, BeforeValidator(_blank)] = Field(
        None, ge=0, allow_inf_nan=False, description="Highest price.")
    price_ratio: Annotated[tuple[float, float] | None, BeforeValidator(_ratio),
                           WithJsonSchema({"type": "string", "examples": ["0.5,2"]})] = Field(
        None, description="lo,hi: a price within lo..hi times the query item's price, e.g. 0.5,2.")
    exclude: list[str] = Field(default_factory=list, description="Item ids never returned: repeat the parameter "
                                                                 "or separate ids by commas.")

    def client_filters(self) -> dict:
        return {"exclude": [part for value in self.exclude for part in value.split(",") if part],
                "in_stock_only": bool(self.in_stock_only), "same_category": self.same_category,
                "same_brand": self.same_brand, "min_price": self.min_price, "max_price": self.max_price,
                "price_ratio": self.price_ratio}

    @classmethod
    def openapi_parameters(cls) -> list[dict]:
        """The OpenAPI `parameters` of these fields (the schema documents what validates them)."""
        properties = cls.model_json_schema()["properties"]
        out = []
        for name, prop in properties.items():
            prop = {key: value for key, value in prop.items() if key != "title"}
            param = {"name": name, "in": "query", "required": False, "schema": prop}
            if "description" in prop:
                param["description"] = prop.pop("description")
            if name == "exclude":
                param.update(style="form", explode=True)
            out.append(param)
        return out


class BatchRequest(Filters):
    item_ids: list[ItemId] = Field(..., max_length=MAX_BATCH, description=f"Up to {MAX_BATCH} item ids.")
    k: int = Field(10, ge=1, le=MAX_K, description="Neighbours per item.")
    unknown: Literal["error", "omit"] = Field(
        "error", description="An id the version does not know: `error` answers 404 listing them; `omit` answers "
                             "the known ids and lists the others in `unknown_item_ids`.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"item_ids": ["4710088620156", "4710908131589"], "k": 10, "in_stock_only": True}]})


class NewItemRequest(Filters):
    item: dict[str, Any] = Field(..., description=(
        "The new product as a catalogue row: category, brand, price, any declared extra side feature "
        "(by name, or inside `attributes`). Fields this version does not use (title, in_stock, ...) are "
        "ignored and listed in `query.ignored_fields`; values it never saw in `query.unknown_values`."))
    k: int = Field(10, ge=1, le=MAX_K)
    strict: bool = Field(False, description="Answer 422 instead of ignoring fields that are not side features.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"item": {"category": "100205", "brand": "4710088", "price": 35.0, "title": "oolong tea"}, "k": 10}]})


class Neighbor(BaseModel):
    item_id: str
    score: float = Field(..., description="The shipped ranking's score (higher is more similar).")
    rank: int = Field(..., description="1-based.")
    category: str | None
    brand: str | None
    price: float | None
    in_stock: bool
    shared: list[str] = Field(..., description="Side features the neighbour shares with the query.")


class QueryInfo(BaseModel):
    """How the query was answered (the client's `why`, without the per-neighbour part)."""

    model_config = ConfigDict(extra="allow")

    query: str | None = Field(None, description="'trained item vector', or side features for items without "
                                                "purchases at training time and new items.")
    query_attention: dict[str, float] | None = Field(None, description="Attention weight per component.")
    ignored_fields: list[str] | None = None
    unknown_values: dict[str, Any] | None = None
    note: str | None = None


class SimilarResponse(BaseModel):
    version: str = Field(..., description="The version that answered.")
    item_id: str
    k: int
    neighbors: list[Neighbor]
    query: QueryInfo
    reason: str | None = Field(None, description="Why fewer than k neighbours came back (null otherwise).")


class BatchResult(BaseModel):
    item_id: str
    neighbors: list[Neighbor]
    query: QueryInfo
    reason: str | None = None


class BatchResponse(BaseModel):
    version: str
    k: int
    results: list[BatchResult] = Field(..., description="One per known item id, in the order asked.")
    unknown_item_ids: list[str] = Field(default_factory=list, description="With unknown=omit: ids not answered.")


class NewItemResponse(BaseModel):
    version: str
    k: int
    neighbors: list[Neighbor]
    query: QueryInfo
    reason: str | None = None


class VersionResponse(BaseModel):
    version: str
    alias: str | None = Field(..., description="The registry alias followed (null when serving a bundle folder).")
    trained_at: str | None = Field(..., description="When the version was published (ISO 8601, UTC).")
    kind: str | None = Field(None, description="'full', or 'patch' (new catalogue items folded in).")
    parent_version: str | None = None
    format_version: int | None = None
    data_watermark: dict[str, Any] = Field(default_factory=dict)
    row_counts: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(..., description=(
        "Offline evaluation summary: the shipped row per segment (recall, hit_rate, coverage at K, mrr, "
        "n_queries) and every row's Recall@20 beside it."))
    serving_since: str = Field(..., description="When this server process loaded the version (or first "
                                                "answered with it, after an alias move).")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    version: str | None = None
    detail: str | None = Field(None, description="Why not ready, or the last failed reload while still serving.")


class ErrorDetail(BaseModel):
    status: int
    code: str = Field(..., description="unknown_item, bad_parameters, cannot_answer, no_version, not_ready, "
                                       "unauthorized, not_found, method_not_allowed, internal_error")
    message: str
    hint: str | None = None
    details: list[dict[str, Any]] | None = Field(None, description="Per-parameter problems of a 422.")
    unknown_item_ids: list[str] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
