"""Upstream side: keep-alive connection pools per endpoint (bookkeeping apart from I/O)."""
