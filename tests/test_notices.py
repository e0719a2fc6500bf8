"""prefork.engine.process: the one-line notices a worker writes to the master's pipe."""

from __future__ import annotations

from prefork.engine.process import Notice, decode_notices, encode_notice


def test_notices_round_trip_with_a_partial_line_kept_for_later() -> None:
    stream = (
        encode_notice(Notice.READY, 0)
        + encode_notice(Notice.BOOT_FAILED, 12, "ImportError: no module\nnamed 'app'")
        + encode_notice(Notice.SERVED_MAX_REQUESTS, 3)
    )
    cut = len(stream) - 2  # the last notice arrives in two reads
    notices, rest = decode_notices(stream[:cut])
    assert notices == [
        (Notice.READY, 0, ""),
        (Notice.BOOT_FAILED, 12, "ImportError: no module named 'app'"),
    ]
    notices, rest = decode_notices(rest + stream[cut:])
    assert notices == [(Notice.SERVED_MAX_REQUESTS, 3, "")] and rest == b""


def test_a_line_that_is_not_a_notice_is_skipped() -> None:
    notices, rest = decode_notices(b"X 1\nR\nR x\n\xff\xfe 2\nR 4\n")
    assert notices == [(Notice.READY, 4, "")] and rest == b""


def test_a_long_detail_stays_within_one_atomic_pipe_write() -> None:
    line = encode_notice(Notice.BOOT_FAILED, 1, "x" * 10_000)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and len(line) <= 512
