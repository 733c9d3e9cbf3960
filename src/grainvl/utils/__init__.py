"""The bottom layer: file I/O and distributed set-up, importable from every other package."""
