"""No module of ``pipeline`` or ``workers`` imports itself back through others. The import
contract (``lint-imports``) keeps layers one-way; this also covers modules of one package."""

import grimp


def test_no_import_cycles():
    graph = grimp.build_graph("pipeline", "workers")
    on_a_cycle = [
        (module, imported)
        for module in sorted(graph.modules)
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.chain_exists(importer=imported, imported=module)
    ]
    assert on_a_cycle == []
