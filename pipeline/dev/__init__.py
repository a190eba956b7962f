"""Local development and test tooling, not part of the shipped search path: the local
Elasticsearch and Redis installer (``services``), the sample catalogue (``samples``) and a
real worker process for demos and tests (``worker_process``)."""
