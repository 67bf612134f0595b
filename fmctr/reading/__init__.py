"""Schema and reading: which column is what, and raw bytes or Parquet in as chunks of rows."""
