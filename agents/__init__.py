"""The brains of arpo: role objects (describer, comparer, differ, proposers) over one chat backend.

Import the modules directly (`arpo.agents.roles`, `arpo.agents.brains`, ...); this package imports
nothing on its own so that offline runs never load the `openai` SDK.
"""
