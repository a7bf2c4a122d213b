"""Reading corpora (JSON lines, CSV, TSV), the torch datasets, batching by length, the download."""
