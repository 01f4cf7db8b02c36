"""The history of runs, and the one door to it: `arpo.storage.history.History`.

Callers ask the history for what they need: runs and their iterations, images by content hash
(`open_image`, `image_path`), brain calls, session turns, renders, `batches` and `evaluations`. The
database engine, the tables (`models`) and the image files' layout (`image_store`) stay behind it.
"""
