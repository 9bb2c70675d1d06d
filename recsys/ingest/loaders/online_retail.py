"""Built-in adapter: UCI Online Retail (`recsys load --dataset online-retail PATH`).

Rejected, each with its own reason: cancellations (InvoiceNo starting with "C"),
lines without a customer, non-positive quantity, non-positive price, service
lines that are not products (postage, fees, manual adjustments), exact duplicates.

There is no category or brand. Derived, as a heuristic written down here and in the README:
- category = the product-type word of the description (its last word, singular-ish:
  "WHITE HANGING HEART T-LIGHT HOLDER" -> "holder"),
- colour = the first colour word of the description, an extra side feature,
- code_family = the first 3 characters of the stock code (codes were issued in
  ranges, so neighbours tend to share a collection), an extra side feature,
- price = median unit price, title = the most frequent description.
Invoice times carry no zone; they are stored as UTC.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.ingest.loaders.files import (
    LoadFrames, RejectCollector, as_text, blank, implausible_timestamps, parse_number, parse_timestamp,
    quantity_out_of_range, read_table, reject_unreadable_rows,
    reject_duplicate_rows, require_columns,
)
from recsys.ingest.loaders.generic import _purchase_frame

COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"]
SERVICE_CODES = {"POST", "DOT", "M", "D", "C2", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS", "S", "B",
                 "ADJUST", "ADJUST2", "TEST001", "TEST002"}
COLOURS = ["black", "white", "red", "pink", "blue", "green", "yellow", "purple", "orange", "ivory",
           "cream", "silver", "gold", "grey", "brown", "turquoise", "lilac", "natural"]
NOTES = [
    "Online Retail has no category or brand: category = the description's product-type word, "
    "colour and code_family are derived extra side features (a heuristic).",
    "Invoice times have no zone and are stored as UTC.",
]
_WORD = re.compile(r"[A-Za-z]+")


def read_frames(path: str | Path, *, encoding: str = "utf-8") -> LoadFrames:
    source = read_table(path, encoding=encoding)
    require_columns(source, COLUMNS, "Online Retail")
    f = source.frame
    rejects = RejectCollector(source, "purchase")
    reject_unreadable_rows(source, rejects)
    invoice = as_text(f["InvoiceNo"]).fillna("")
    rejects.add(invoice.str.upper().str.startswith("C").to_numpy(dtype=bool), "InvoiceNo", "cancellation",
                "a cancellation (InvoiceNo starts with C), not a purchase")
    rejects.add(blank(f["CustomerID"]), "CustomerID", "missing_customer", "no CustomerID: cannot attribute the line to a user")
    qty, qty_bad, qty_nan = parse_number(f["Quantity"])
    rejects.add(qty_bad | qty_nan | np.isnan(qty), "Quantity", "invalid_quantity", "Quantity is not a number")
    rejects.add(qty <= 0, "Quantity", "non_positive_quantity", lambda pos: [f"Quantity {qty[p]:g} is not positive" for p in pos])
    rejects.add(quantity_out_of_range(qty), "Quantity", "quantity_out_of_range",
                lambda pos: [f"Quantity {qty[p]:.0f} is out of range" for p in pos])
    price, price_bad, price_nan = parse_number(f["UnitPrice"])
    rejects.add(price_bad | price_nan | np.isnan(price), "UnitPrice", "invalid_price", "UnitPrice is not a number")
    rejects.add(price <= 0, "UnitPrice", "non_positive_price", lambda pos: [f"UnitPrice {price[p]:g} is not positive" for p in pos])
    code = as_text(f["StockCode"]).fillna("")
    rejects.add(blank(f["StockCode"]), "StockCode", "missing_item_id", "StockCode is empty")
    rejects.add(code.str.upper().isin(SERVICE_CODES).to_numpy(dtype=bool), "StockCode", "not_a_product",
                lambda pos: [f"StockCode {code.iloc[p]!r} is a service or fee line, not a product" for p in pos])
    ts, bad_ts = parse_timestamp(f["InvoiceDate"])
    rejects.add(bad_ts | blank(f["InvoiceDate"]), "InvoiceDate", "invalid_timestamp", "InvoiceDate is not a timestamp")
    implausible, implausible_detail = implausible_timestamps(ts)
    rejects.add(implausible, "InvoiceDate", "implausible_timestamp", lambda pos: implausible_detail(pos, "InvoiceDate"))
    reject_duplicate_rows(source, rejects, list(f.columns))

    customer = f["CustomerID"]
    if pd.api.types.is_float_dtype(customer):
        user = pd.Series(np.where(customer.isna(), None,
                                  customer.fillna(0).astype(np.int64).astype(str)), index=f.index, dtype=object)
    else:
        user = as_text(customer)
    purchases = _purchase_frame(source, rejects, ts, qty, price, invoice.astype(object), user_id=user, item_id=code)
    keep = ~rejects.rejected
    items = derive_items(purchases["item_id"], as_text(f["Description"])[keep].fillna("").to_numpy(dtype=object),
                         purchases["unit_price"].to_numpy())
    return LoadFrames(source="online-retail", files=[source], items=items, purchases=purchases,
                      rejects=rejects.frame(), side_features=["colour", "code_family"], notes=list(NOTES))


def product_type(description: str) -> str:
    words = _WORD.findall(description or "")
    if not words:
        return "unknown"
    word = words[-1].lower()
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return word


def colour_of(description: str) -> str | None:
    words = set(w.lower() for w in _WORD.findall(description or ""))
    for colour in COLOURS:
        if colour in words:
            return colour
    return None


def derive_items(item_ids: pd.Series, description: np.ndarray, unit_price: np.ndarray) -> pd.DataFrame:
    lines = pd.DataFrame({"item_id": item_ids.to_numpy(dtype=object), "description": description, "price": unit_price})
    counts = lines.groupby(["item_id", "description"], sort=True).size().rename("n").reset_index()
    counts = counts.sort_values(["item_id", "n", "description"], ascending=[True, False, True], kind="stable")
    title = counts.drop_duplicates("item_id").set_index("item_id")["description"]
    price = lines.groupby("item_id", sort=True)["price"].median()
    ids = price.index.to_numpy(dtype=object)
    titles = title.reindex(ids).fillna("").to_numpy(dtype=object)
    attributes = []
    for item_id, text in zip(ids, titles):
        attrs = {"code_family": str(item_id)[:3]}
        colour = colour_of(text)
        if colour:
            attrs["colour"] = colour
        attributes.append(json.dumps(attrs, sort_keys=True))
    return pd.DataFrame({
        "item_id": ids, "category": [product_type(t) for t in titles], "brand": None,
        "price": np.round(price.to_numpy(dtype=np.float64), 4), "title": [t or None for t in titles],
        "in_stock": True, "created_at": pd.NaT, "attributes": attributes,
    })
