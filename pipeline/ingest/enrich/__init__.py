"""Built-in enrichment processors (``vitrine.processors`` entry points): ``ocr``,
``image_quality``, ``phash`` and ``auto_tag``. Each lists in ``writes`` the document fields it
fills; unlike a plugin's ``fields`` (extra fields with their own mappings), these are Vitrine's
own fields, declared in ``pipeline.documents.ImageFields`` and the index template."""
