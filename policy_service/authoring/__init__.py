"""For the people who write policy: policy tests (``cases`` reads them, ``runner`` decides
them) and ``explain``.

Both decide with the service's own pipeline, so they sit above it; nothing on the request
path imports them.
"""
