"""Loopback benchmark: the gateway vs nginx+nchan vs the naive design (``python -m bench``)."""
