"""The monitoring baseline: request-feature statistics of a held-out split (RequestBaseline)."""
