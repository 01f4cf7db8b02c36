"""The front doors: the `arpo` command line (`cli`, `commands/`), the terminal session and the web UI.

Everything here calls downwards (graphs, storage, eval, core); nothing below imports it.
"""
