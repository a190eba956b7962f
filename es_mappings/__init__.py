"""Elasticsearch and Kibana definitions as data files; read them with ``pipeline.es.mappings``."""
