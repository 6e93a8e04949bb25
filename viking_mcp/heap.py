"""Keeping the cyclic garbage collector's full collections out of request latency.

A full (generation 2) collection walks every container object in the process, and in a
viking-mcp server almost all of them are made at start-up and kept for the process's life
(the modules of the MCP SDK, pydantic and FastAPI, the validators and schemas of the models
and tools, the tokenizer's table of 100,000 entries). One such walk took 50-70 ms, and a
get_context call paid for one about once in 20 to 130 calls, so its p99 was 10-40 times
its p50 (benchmarks/README.md, "Tail latency", has the measurements; tail_probe.py shows them).

`settle()` collects once, then moves every object still alive into the permanent
generation (`gc.freeze`), which later collections skip: a full collection then takes about
a millisecond. Frozen objects are still freed by reference counting; only a reference
cycle among them that becomes garbage later is never reclaimed. So it is called where what
exists is what the process keeps: a little after a server has started (engine open, tools
registered, first requests answered), and once the tokenizer is loaded (on first use). The
servers do both (`settle_later`); a library user of `Engine` may call `settle` after its
own start-up.
"""

from __future__ import annotations

import gc
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from viking_mcp.engine import Engine

# Long enough after start that a host's initialize and tools/list are answered first (the
# collection holds the interpreter for as long as a full one takes, once).
SETTLE_DELAY_SECONDS = 2.0


def settle() -> None:
    """Collect now, then leave everything alive out of every later collection."""
    gc.collect()
    gc.freeze()


def settle_later(engine: Engine, delay: float = SETTLE_DELAY_SECONDS) -> None:
    """For a server process: settle `delay` seconds from now, on a thread of its own, and
    again once `engine` has loaded its tokenizer (in the call that loads it, which waits
    for the tokenizer a few hundred milliseconds anyway)."""
    engine.tokens.on_load = settle
    timer = threading.Timer(delay, settle)
    timer.name, timer.daemon = "viking-settle", True
    timer.start()
