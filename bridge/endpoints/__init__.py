"""Endpoints adapt a socket plus a codec to the router.

Every endpoint has: `name` (str), `counters` (bridge.stats.Counters),
`send_frames(channel, frames) -> int` (frames accepted; the rest counted as dropped),
`flush()` (called by the router once per loop pass when frames were queued), `close()`.
"""
