"""The one list of CPython tests skipped when the suites run against prefork.

Only tests that check a CPython-private detail (not behaviour of the
``socketserver`` API) may be listed here.  A test that fails because prefork
behaves differently is a prefork bug and must NOT be listed.

Keys are full unittest ids (``test.<module>.<Class>.<method>``); values are the
reason, shown as the skip message.  The list is applied only with
``run_suite.py --impl prefork``; an entry that matches no loaded test is an
error (stale list).
"""

from __future__ import annotations

SKIPS: dict[str, str] = {
    "test.test_socketserver.MiscTestCase.test_all": (
        "CPython-private: builds the expected __all__ from public names whose "
        "__module__ == 'socketserver', i.e. it checks the literal module name the "
        "classes were defined in. prefork's classes are defined in 'prefork' "
        "modules, so 'expected' is empty for any reimplementation. The API part "
        "(every stdlib socketserver.__all__ name exported) is checked by "
        "test_conformance.test_public_names_cover_stdlib."
    ),
}
