"""Built-in adapter: the Ta-Feng grocery data set (`recsys load --dataset tafeng PATH`).

Ta-Feng has purchase lines only. The catalogue is derived from them, a
heuristic written down here and in the README:
- category = PRODUCT_SUBCLASS (6 digits; the most frequent one per product),
- product_class = its first 4 digits, a coarser class, declared as an extra side feature,
- price = median unit price (SALES_PRICE / AMOUNT) over the product's lines,
- brand = the first 7 digits of an EAN-13 barcode (country + company prefix, a
  maker stand-in); products with other codes (8-digit, in-store) have no brand.
Baskets are (customer, day): timestamps have day resolution and there is no order id.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recsys.ingest.loaders.files import (
    LoadFrames, RejectCollector, as_text, blank, parse_number, quantity_out_of_range, read_table,
    reject_unreadable_rows,
    reject_duplicate_rows, require_columns,
)
from recsys.ingest.loaders.generic import _purchase_frame

COLUMNS = ["TRANSACTION_DT", "CUSTOMER_ID", "PRODUCT_SUBCLASS", "PRODUCT_ID", "AMOUNT", "SALES_PRICE"]
NOTES = [
    "Ta-Feng has no catalogue: items are derived from purchase lines "
    "(category = product sub-class, product_class = its first 4 digits, price = median unit price, "
    "brand = EAN-13 company prefix, a heuristic).",
    "Timestamps are days: each customer's purchases of one day form one basket.",
]


def read_frames(path: str | Path, *, encoding: str = "utf-8") -> LoadFrames:
    source = read_table(path, encoding=encoding)
    require_columns(source, COLUMNS, "Ta-Feng")
    f = source.frame
    rejects = RejectCollector(source, "purchase")
    reject_unreadable_rows(source, rejects)
    for name, code in [("CUSTOMER_ID", "missing_user_id"), ("PRODUCT_ID", "missing_item_id"),
                       ("PRODUCT_SUBCLASS", "missing_category")]:
        rejects.add(blank(f[name]), name, code, f"{name} is empty")
    day = pd.to_datetime(f["TRANSACTION_DT"].str.strip(), format="%m/%d/%Y", errors="coerce", utc=True)
    rejects.add(day.isna().to_numpy(), "TRANSACTION_DT", "invalid_timestamp",
                lambda pos: [f"TRANSACTION_DT {f['TRANSACTION_DT'].iloc[p]!r} is not a M/D/YYYY date" for p in pos])
    amount, amount_bad, amount_nan = parse_number(f["AMOUNT"])
    rejects.add(amount_bad | amount_nan | np.isnan(amount), "AMOUNT", "invalid_quantity", "AMOUNT is not a number")
    rejects.add(amount <= 0, "AMOUNT", "non_positive_quantity",
                lambda pos: [f"AMOUNT {amount[p]:g} is not positive" for p in pos])
    rejects.add(amount != np.round(amount), "AMOUNT", "invalid_quantity",
                lambda pos: [f"AMOUNT {amount[p]:g} is not a whole number" for p in pos])
    rejects.add(quantity_out_of_range(amount), "AMOUNT", "quantity_out_of_range",
                lambda pos: [f"AMOUNT {amount[p]:.0f} is out of range" for p in pos])
    sales, sales_bad, sales_nan = parse_number(f["SALES_PRICE"])
    rejects.add(sales_bad | sales_nan, "SALES_PRICE", "invalid_price", "SALES_PRICE is not a number")
    rejects.add(sales < 0, "SALES_PRICE", "negative_price",
                lambda pos: [f"SALES_PRICE {sales[p]:g} is negative" for p in pos])
    reject_duplicate_rows(source, rejects, list(f.columns))

    with np.errstate(divide="ignore", invalid="ignore"):
        unit_price = sales / amount
    no_order = pd.Series([None] * len(f), index=f.index, dtype=object)
    purchases = _purchase_frame(source, rejects, day, amount, unit_price, no_order,
                                user_id=as_text(f["CUSTOMER_ID"]), item_id=as_text(f["PRODUCT_ID"]))
    keep = ~rejects.rejected
    items = derive_items(purchases["item_id"], as_text(f["PRODUCT_SUBCLASS"])[keep].to_numpy(dtype=object),
                         purchases["unit_price"].to_numpy())
    return LoadFrames(source="tafeng", files=[source], items=items, purchases=purchases,
                      rejects=rejects.frame(), side_features=["product_class"], notes=list(NOTES))


def derive_items(item_ids: pd.Series, subclass: np.ndarray, unit_price: np.ndarray) -> pd.DataFrame:
    lines = pd.DataFrame({"item_id": item_ids.to_numpy(dtype=object), "subclass": subclass, "price": unit_price})
    # most frequent sub-class per product (ties: the smallest code, for determinism)
    counts = lines.groupby(["item_id", "subclass"], sort=True).size().rename("n").reset_index()
    counts = counts.sort_values(["item_id", "n", "subclass"], ascending=[True, False, True], kind="stable")
    category = counts.drop_duplicates("item_id").set_index("item_id")["subclass"]
    price = lines.groupby("item_id", sort=True)["price"].median()
    ids = price.index.to_numpy(dtype=object)
    codes = pd.Series(ids).astype(str)
    is_ean13 = codes.str.fullmatch(r"\d{13}")
    brand = codes.str[:7].where(is_ean13, None).astype(object)
    category = category.reindex(ids).to_numpy(dtype=object)
    product_class = pd.Series(category).astype(str).str[:4]
    attributes = ('{"product_class": "' + product_class + '"}').to_numpy(dtype=object)
    return pd.DataFrame({
        "item_id": ids, "category": category, "brand": brand.where(brand.notna(), None).to_numpy(dtype=object),
        "price": np.round(price.to_numpy(dtype=np.float64), 4), "title": None, "in_stock": True,
        "created_at": pd.NaT, "attributes": attributes,
    })
