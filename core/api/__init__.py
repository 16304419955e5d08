"""The REST API: Litestar controllers over the engine."""
