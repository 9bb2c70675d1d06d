"""UCI Online Retail as the two generic files a shop without an adapter would export.

    python bench/online_retail_generic.py OUT_DIR [--parquet ../shared/data/online_retail/online_retail.parquet]
    recsys load --items OUT_DIR/items.csv --purchases OUT_DIR/purchases.csv

items.csv: item_id = StockCode, category = the stock code without its
trailing letters (85123A -> 85123: the variants of one product; a code of
letters only keeps itself), price = the median unit price of its sales,
title = its most frequent description (an undeclared column: kept in
attributes, not a side feature), no brand. purchases.csv: every line as
exported (user_id = CustomerID, order_id = InvoiceNo, purchased_at = ISO
8601 UTC, quantity, unit_price): cancellations, lines without a customer
and non-positive quantities are left for `recsys load` to reject, with
their reasons.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "online_retail" / "online_retail.parquet"


def export(parquet: Path, out: Path) -> dict:
    raw = pd.read_parquet(parquet)
    out.mkdir(parents=True, exist_ok=True)
    code = raw["StockCode"].astype(str).str.strip()
    sold = raw[(raw["Quantity"] > 0) & (raw["UnitPrice"] > 0)]
    sold_code = sold["StockCode"].astype(str).str.strip()
    price = sold.groupby(sold_code)["UnitPrice"].median()
    title = (raw.assign(code=code).dropna(subset=["Description"]).groupby("code")["Description"]
             .agg(lambda s: s.value_counts().index[0]))
    codes = sorted(set(code))
    stem = [re.sub(r"[A-Za-z]+$", "", c) or c for c in codes]
    items = pd.DataFrame({"item_id": codes, "category": stem,
                          "price": [price.get(c) for c in codes], "title": [title.get(c) for c in codes]})
    items.to_csv(out / "items.csv", index=False)
    customer = raw["CustomerID"].map(lambda v: None if pd.isna(v) else str(int(v)))
    purchases = pd.DataFrame({"user_id": customer, "item_id": code, "order_id": raw["InvoiceNo"].astype(str),
                              "purchased_at": pd.to_datetime(raw["InvoiceDate"]).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                              "quantity": raw["Quantity"], "unit_price": raw["UnitPrice"]})
    purchases.to_csv(out / "purchases.csv", index=False)
    return {"items": len(items), "categories": len(set(stem)), "purchase_lines": len(purchases),
            "items_csv": str(out / "items.csv"), "purchases_csv": str(out / "purchases.csv")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--parquet", type=Path, default=DEFAULT)
    args = parser.parse_args()
    if not args.parquet.exists():
        sys.exit(f"{args.parquet} not found: pass --parquet PATH")
    print(json.dumps(export(args.parquet, args.out)))


if __name__ == "__main__":
    main()
