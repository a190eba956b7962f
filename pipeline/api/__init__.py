"""The HTTP API (FastAPI). Only this package knows HTTP; it calls ``pipeline`` for the work."""
