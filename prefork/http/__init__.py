"""HTTP/1.1 for WSGI applications: head parsing, request bodies, responses and the WSGI adapter.

Layer three of four (``core`` < ``engine`` < ``http`` < ``ops``): its server
is a :class:`prefork.core.server.TCPServer`, and under the engine its
connections are parked between requests by :mod:`prefork.engine.keepalive`.
"""
