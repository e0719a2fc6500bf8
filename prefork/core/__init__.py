"""The ``socketserver``-compatible API: servers, request handlers, mixins and their helpers.

Layer one of four (``core`` < ``engine`` < ``http`` < ``ops``): it imports
nothing else of prefork, and :mod:`prefork` re-exports its documented names,
so ``import prefork as socketserver`` loads only this layer.
"""
