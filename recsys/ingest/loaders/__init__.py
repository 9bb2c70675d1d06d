"""File readers: CSV/Parquet parsing and row validation (`files`), the generic items/purchases layout
(`generic`) and the built-in adapters for Ta-Feng and UCI Online Retail."""
