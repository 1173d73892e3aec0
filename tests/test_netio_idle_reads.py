"""Reads between requests (nodeproxy/netio.py ``IdleReads``) on real loopback TCP.

A connection whose client idles between requests parks before reading instead of
reading into ``EAGAIN`` first. Whatever it guesses, these hold: every byte is
delivered in order, end of stream reads as b"", a cancelled scope (drain, idle
timeout) stops a parked read, and a client that turns busy is read first again.
"""

from __future__ import annotations

import trio
import trio.testing

from nodeproxy.netio import IdleReads, receive_between_requests
from tests.test_netio import tcp_pair


def after_an_idle_spell() -> IdleReads:
    """A guess whose last read between requests found nothing: the next ones park first."""
    guess = IdleReads()
    guess.parks = True
    return guess


async def test_an_idle_client_makes_the_next_reads_park_first_and_still_get_every_byte(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tcp_pair() as (client, server):
        guess = IdleReads()
        got: list[bytes] = []

        async def reader() -> None:
            for _ in range(3):
                got.append(await receive_between_requests(server, 65536, guess))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for n in range(3):
                await trio.sleep(1)  # the client idles between its requests
                await client.send_all(b"GET /%d HTTP/1.1\r\n\r\n" % n)
                await trio.sleep(1)
                # Once a read has found nothing, the next reads park first.
                assert guess.parks
        assert got == [b"GET /%d HTTP/1.1\r\n\r\n" % n for n in range(3)]
        assert guess.streak == 2  # the first read read first; the next two parked first


async def test_a_busy_client_is_read_first_and_its_bytes_returned_at_once() -> None:
    async with tcp_pair() as (client, server):
        guess = IdleReads()
        for n in range(3):
            await client.send_all(b"req %d" % n)
            await trio.testing.wait_all_tasks_blocked()
            assert await receive_between_requests(server, 65536, guess) == b"req %d" % n
            assert not guess.parks


async def test_a_parked_guess_probes_again_and_learns_the_client_turned_busy() -> None:
    async with tcp_pair() as (client, server):
        guess = after_an_idle_spell()
        for n in range(IdleReads.PROBE_EVERY + 1):
            await client.send_all(b"%d;" % n)
            assert await receive_between_requests(server, 65536, guess) == b"%d;" % n
        # PROBE_EVERY reads parked first; the next read read first, found data at once.
        assert not guess.parks
        assert guess.streak == 0


async def test_end_of_stream_while_parked_first_reads_empty(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tcp_pair() as (client, server):
        guess = after_an_idle_spell()

        async def hang_up() -> None:
            await trio.sleep(1)
            await client.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hang_up)
            assert await receive_between_requests(server, 65536, guess) == b""


async def test_a_cancelled_scope_stops_a_parked_read_and_loses_no_byte(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tcp_pair() as (client, server):
        guess = after_an_idle_spell()
        with trio.move_on_after(5) as scope:  # as the sweeper's idle timeout or drain does
            await receive_between_requests(server, 65536, guess)
        assert scope.cancelled_caught
        await client.send_all(b"late request")
        assert await receive_between_requests(server, 65536, guess) == b"late request"
