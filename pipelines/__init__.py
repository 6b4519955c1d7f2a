"""Batch jobs over the event log and catalogs (Ray jobs + DuckDB)."""
