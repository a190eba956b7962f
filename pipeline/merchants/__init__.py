"""Merchants: what the upload API does without HTTP (``uploads``), API keys (``apikeys``) and
the per-key write rate limit (``ratelimit``)."""
