"""Model-backed tools, each usable on its own from Python and as a step of the graph: text-to-image
(diffusers), the CLIP scorer (open_clip), the captioner (BLIP-2 / BLIP), phrase banks, the inversion
methods (`inversion/`: PEZ, PH2P, EDITOR) and the prompt-embedding regressor (`regressor/`), with
`inverters` naming them. Tools know nothing of graphs, brains or the history; what they need from
those arrives as arguments.

Import the modules directly (`arpo.tools.clip_scorer`, ...); this package imports nothing on its own,
so a light command never loads torch.
"""
