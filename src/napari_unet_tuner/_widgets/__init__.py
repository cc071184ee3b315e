"""Thin napari widgets over the Qt-free core; one panel per file."""
