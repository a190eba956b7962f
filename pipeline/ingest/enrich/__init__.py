"""Built-in enrichment processors (``vitrine.processors`` entry points): ``ocr``,
``image_quality``, ``phash`` and ``auto_tag``. Each declares in ``writes`` the document fields
it fills."""
