"""Training code, kept apart from the tools that use what it produces (open_clip's split of library
and training code).

A trained regressor or embedding-to-text inverter is a folder of weights that `arpo.tools` loads and
runs; how it was fitted (training loops, curricula, losses, dataset readers, corpus loading) lives
here. The import-linter layers put this package beside `arpo.eval`, under `arpo.app`: the `arpo
regressor train` and `adapt` commands import it, and nothing an inversion or an evaluation runs can.
"""
