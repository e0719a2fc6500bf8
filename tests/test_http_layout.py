"""prefork.http: its public names, where they import from, and what each module loads."""

from __future__ import annotations

import subprocess
import sys

import prefork.http
import prefork.http.wsgi
import prefork.wsgi

PUBLIC = ("WSGIServer", "WSGIRequestHandler", "FileWrapper", "make_server")


def test_old_and_package_import_paths_give_the_same_objects() -> None:
    """``prefork.wsgi`` (the path before the layout) and ``prefork.http`` re-export the adapter."""
    from prefork.http import WSGIServer as PackageServer
    from prefork.wsgi import WSGIRequestHandler, WSGIServer

    assert WSGIServer is prefork.http.wsgi.WSGIServer
    assert WSGIRequestHandler is prefork.http.wsgi.WSGIRequestHandler
    assert PackageServer is prefork.http.wsgi.WSGIServer
    for name in PUBLIC:
        assert getattr(prefork.http, name) is getattr(prefork.http.wsgi, name), name
    assert set(prefork.http.__all__) == set(PUBLIC)
    assert set(prefork.http.wsgi.__all__) <= set(prefork.wsgi.__all__)
    for name in prefork.wsgi.__all__:
        assert getattr(prefork.wsgi, name) is getattr(prefork.http.wsgi, name), name


def test_the_parser_loads_neither_the_adapter_nor_the_response_nor_ops() -> None:
    """``import prefork.http.parser`` leaves the rest of the layer out (lazy ``prefork.http``)."""
    probe = (
        "import sys, prefork.http.parser\n"
        "loaded = {m for m in sys.modules if m.startswith('prefork.')}\n"
        "assert 'prefork.http.wsgi' not in loaded, loaded\n"
        "assert 'prefork.http.response' not in loaded, loaded\n"
        "import prefork.http.wsgi\n"
        "assert not [m for m in sys.modules if m.startswith('prefork.ops')], sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
