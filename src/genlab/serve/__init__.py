"""``genlab serve``: a local explorer page where a person draws, corrupts and walks, and every loaded model
answers. ``explorer`` computes (no web framework), ``app`` serves it (Starlette on uvicorn, the optional
extra ``serve``), ``preprocess`` turns a drawing into an MNIST-style input, ``static/`` is the page."""
