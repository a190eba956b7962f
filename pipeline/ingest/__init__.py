"""Ingest: the processor chain that turns product images into documents (``processors``, the
plugin API), the per-process ``Ingestor`` that writes them, and catalogue files in
(``catalogue`` reads and validates them, ``importer`` turns them into jobs)."""
