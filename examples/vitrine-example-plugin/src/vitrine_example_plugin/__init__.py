"""Example Vitrine plugin (docs/plugins.md): ``example_colour`` (processor) and
``example_histogram`` (image-only encoder)."""
