"""Elasticsearch: the client, pure builders of every index and template body (``mappings``), and
the writes (``indexing``). The JSON in ``es_mappings/`` is the source of the bodies."""
