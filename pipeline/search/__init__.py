"""Search: request bodies, one per stored template (``query``), the plan of ranked lists
(``plan``), fusion and facets (``fusion``), and the ``Searcher`` that runs them (``searcher``)."""
