"""``bench serve``: a local web app for interactive search over an evaluated gallery.

One file per job: :mod:`.config` (the server's options), :mod:`.gallery` (the encoded gallery
and what the page shows of each image), :mod:`.encoding_cache` (the gallery's encodings on
disk), :mod:`.loading` (model and gallery through the suite's checkpoint store),
:mod:`.search` (one search's state and history, and its transcript line), :mod:`.engine`
(search, score refreshing and LLM-guided rounds through :mod:`benchmark.feedback`),
:mod:`.thumbnails` (image bytes, only from inside the data root), :mod:`.app` (the FastAPI
routes) and :mod:`.server` (binding and running uvicorn).
"""
