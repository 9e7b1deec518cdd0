"""Bytes results as metabridge.Buffer (connect(..., buffers=True)): read in
place from the service's payload pool, viewed by memoryview and numpy
without a copy, never changed by later calls, released explicitly or by
collection, and copies past the process's cap on lent bytes."""

import gc
import signal

import numpy as np
import pytest

import metabridge as meta
from test_processes import rust_service

MIB = 1 << 20


def pattern(n, seed):
    return (np.arange(n, dtype=np.uint32) * 31 + seed).astype(np.uint8).tobytes()


@pytest.fixture
def forms():
    handle = meta.run("forms")
    yield handle
    handle.stop()


def test_bytes_stay_the_default_result(forms):
    with meta.connect("forms") as c:
        back = c.echo(b"x" * (4 * MIB))
        assert type(back) is bytes and back == b"x" * (4 * MIB)


def test_a_large_result_is_read_in_place_and_never_overwritten(forms):
    with meta.connect("forms", buffers=True) as c:
        assert c._transport == "shm"
        kept = []
        for i in range(5):
            data = pattern(3 * MIB + i * 4099, i)
            b = c.echo(data)
            assert isinstance(b, meta.Buffer)
            assert b.lent, "a 3 MiB result through shared memory was copied"
            assert len(b) == len(data) and bytes(b) == data
            kept.append((b, data))
            # Later calls write their results elsewhere in the service's pool.
            for j, (old, want) in enumerate(kept):
                assert memoryview(old) == want, f"call {i}: kept result {j} changed"
        # Small results are Buffers too, owning their bytes.
        small = c.echo(b"abc")
        assert isinstance(small, meta.Buffer) and not small.lent and bytes(small) == b"abc"


def test_numpy_views_the_pool_block_without_a_copy(forms):
    arr = np.arange(16 * MIB // 8, dtype=np.float64)
    with meta.connect("forms", buffers=True) as c:
        b = c.echo(arr)
        assert b.lent
        back = np.frombuffer(b, dtype=np.float64)
        assert not back.flags.owndata and not back.flags.writeable
        assert np.array_equal(back, arr)
        # The array's memory is the Buffer's: a second view shares it.
        again = np.frombuffer(b, dtype=np.float64)
        assert np.shares_memory(back, again)
        with pytest.raises(BufferError):
            b.release()  # arrays still look at it
        with memoryview(b) as m:
            assert m.readonly
            with pytest.raises(TypeError):
                m[0:1] = b"x"
        del back, again
        gc.collect()
        b.release()
        assert len(b) == 0 and not b.lent
        with pytest.raises(ValueError):
            bytes(b)


def test_an_endpoint_can_take_its_bytes_arguments_as_buffers(forms):
    with meta.connect("forms") as c:
        assert c._transport == "shm"
        sent = [pattern(3 * MIB + i * 4099, i) for i in range(4)]
        for i, data in enumerate(sent):
            keep = c.keep if i % 2 == 0 else c.keep_later
            assert keep(data) == ["Buffer", True, len(data)], f"argument {i}"
        # The client placed each later argument around the blocks the
        # service keeps: all four arrived, and are still, intact.
        assert c.kept_bytes() == sent
        # Small ones are Buffers owning their bytes; other endpoints still
        # get bytes.
        assert c.keep(b"small") == ["Buffer", False, 5]
        assert c.echo(b"y" * MIB) == b"y" * MIB


def test_a_rust_service_lends_too_and_a_dropped_buffer_gives_its_block_back(home):
    p = rust_service(home, "rusty-buffers")
    try:
        with meta.connect("rusty-buffers", "py:", 3, buffers=True) as c:
            data = pattern(8 * MIB, 7)
            want = bytes((x + 1) & 0xFF for x in data[:64])
            b = c.bump_blob(data)
            assert b.lent and bytes(b)[:64] == want
            del b
            gc.collect()
            # Given back: the service can place the next result at its
            # pool's start again, and the result is right.
            b = c.bump_blob(data)
            assert b.lent and bytes(b)[:64] == want
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)


def test_past_the_cap_on_lent_bytes_results_are_copies(forms, home):
    """The process holds at most 256 MiB lent (metabridge_shm::LENT_CAP),
    over all its channels: then results are copies (Buffers all the
    same), and lending resumes once blocks are released. (A service keeps
    at most 256 MiB of pools and buffers too, so the blocks come from two
    services.)"""
    size = 48 * MIB
    data = pattern(size, 3)
    bumped = bytes((x + 1) & 0xFF for x in data[:64])
    gc.collect()  # no Buffer of an earlier test still holds a block
    p = rust_service(home, "rusty-cap")
    a = meta.connect("forms", buffers=True, timeout=60)
    b = meta.connect("rusty-cap", "py:", 3, buffers=True, timeout=60)
    try:
        held = [a.echo(data) for _ in range(3)]  # 144 MiB of forms's pool
        assert [x.lent for x in held] == [True] * 3
        held += [b.bump_blob(data) for _ in range(2)]  # 240 MiB in all
        assert [x.lent for x in held] == [True] * 5
        over = b.bump_blob(data)  # 288 MiB: past the cap, though b's pool has room
        assert not over.lent and bytes(over)[:64] == bumped
        for x in held[:3]:
            assert memoryview(x) == data
        for x in held:
            x.release()
        again = b.bump_blob(data)
        assert again.lent and bytes(again)[:64] == bumped
    finally:
        a.close()
        b.close()
        p.send_signal(signal.SIGTERM)
        p.wait(10)
