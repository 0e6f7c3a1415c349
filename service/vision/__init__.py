"""What the networks see: preprocessing, inference and postprocessing.

Nothing here knows about HTTP. Functions take decoded images and return
plain results; the ``api`` package turns those into JSON.
"""
