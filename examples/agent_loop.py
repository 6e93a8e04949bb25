"""An agent loop that keeps its memory in viking-mcp.

Run it from the repository root (no LLM, no network, no API key needed):

    python examples/agent_loop.py                  # data in a temporary directory
    python examples/agent_loop.py --home ./memory  # keep the data to look at afterwards
                                                   # (e.g. `viking-mcp export`)

What it shows, in the order an agent would do it:

1. Spawn the real server (`python -m viking_mcp`) over stdio with the MCP client.
2. Record every turn with `add_message`. A scripted conversation stands in for the
   model: Maya plans a two-week trip to Japan over 60 turns, with names, dates,
   bookings and a few changes of mind.
3. After each exchange, read `get_session` and watch `pending_tokens` (the tokens of
   the messages not yet archived). Past a threshold, `commit(keep_recent_count=4)`:
   the older messages move into an archive at once (Phase 1), and the server
   summarises that archive in the background (Phase 2).
4. Wait for Phase 2 by polling `get_task` (`commit(wait=true)` would block instead),
   then rebuild the context window with `get_context(token_budget=...)`: the latest
   archive's overview, the abstracts of earlier archives, and the live messages, all
   within the budget. That, not the whole transcript, is what the model sees next.
5. At the end, `expand_archive` reads the first archive back (its summaries, then its raw
   messages a page at a time): nothing that was summarised away is lost.

The summaries here come from the server's built-in offline summariser. A real agent can
pass its own `abstract` and `overview` to `commit`: the host model summarises better, at
no extra cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

# Commit when the live messages pass this many tokens. Small, so that a 60-turn demo
# commits a few times; a real agent would use a fraction of its model's window.
COMMIT_THRESHOLD_TOKENS = 600
# Keep the last exchanges live after a commit, so the model still sees them verbatim.
KEEP_RECENT = 4
# What the agent spends on rebuilt context (overview + abstracts + live messages).
CONTEXT_BUDGET_TOKENS = 1_000
PHASE2_TIMEOUT_SECONDS = 30.0

# The conversation the "model" has: (user, assistant) exchanges, in order.
CONVERSATION: list[tuple[str, str]] = [
    (
        "Hi! I'm Maya. My partner Tomas and I want to plan a two-week trip to Japan in April 2025. "
        "We've never been. Can you help me put together an itinerary?",
        "Happy to help, Maya. Two weeks is a great length for a first visit. Do you have fixed dates yet, "
        "and where are you flying from? A classic first route is Tokyo, Hakone, Kyoto, Hiroshima and Osaka.",
    ),
    (
        "We fly out of Berlin. Tomas has to be back at work on Monday 28 April, so we were thinking 12 to 26 April.",
        "12 to 26 April works well: you'll catch the late cherry blossom in Kyoto and Hakone. From Berlin "
        "the best connection is usually Finnair via Helsinki. Shall I look at flights on 12 April?",
    ),
    (
        "Yes please. We'd rather not arrive completely exhausted, so an overnight flight would be best.",
        "Finnair AY1432 leaves Berlin at 16:40 on 12 April, connecting to AY73 from Helsinki at 19:00 and "
        "landing at Tokyo Haneda at 15:55 on 13 April. Economy is about 1,150 euros each, return. The return "
        "flight AY74 leaves Haneda on 26 April at 10:25.",
    ),
    (
        "That's pricier than I hoped. Our total budget is 6,000 euros for the two of us, everything included.",
        "Then flights take 2,300 of the 6,000 euros, leaving 3,700 for 13 nights: about 285 euros a day for "
        "two. That's comfortable if we mix business hotels with one special ryokan night. Book the flights "
        "soon; April fares climb.",
    ),
    (
        "OK, let's book the Finnair flights. Two things you should know: Tomas is vegetarian, and I'm "
        "allergic to shellfish, so food matters a lot for us.",
        "Booked. Noted: Tomas is vegetarian and Maya has a shellfish allergy. Dashi often contains fish, so "
        "I'll suggest shojin ryori (Buddhist temple cuisine) and we'll print an allergy card in Japanese.",
    ),
    (
        "Great. Where should we stay in Tokyo? We land on the 13th and I think four nights there.",
        "For 13 to 17 April, Shinjuku is convenient: Hotel Gracery Shinjuku is about 160 euros a night. If "
        "you prefer quiet, Asakusa has the Richmond Hotel Premier at about 140 euros.",
    ),
    (
        "Asakusa sounds nicer, we like quiet. Book Richmond Hotel Premier Asakusa for 13 to 17 April.",
        "Richmond Hotel Premier Asakusa is booked for 13 to 17 April: four nights at 140 euros, 560 euros "
        "with breakfast. It's five minutes from Senso-ji, which is lovely early in the morning.",
    ),
    (
        "What should we do in Tokyo? Tomas loves design and architecture, I'm more into food markets "
        "and old neighbourhoods.",
        "Day one: Senso-ji at dawn, then the old streets of Yanaka. Day two: Tsukiji outer market (careful at "
        "the shellfish stalls), then teamLab Planets. Day three: Omotesando for architecture and the "
        "21_21 Design Sight museum.",
    ),
    (
        "Love it. Is the JR Pass still worth it? Friends told us to get one.",
        "Since the October 2023 price rise the 7-day JR Pass costs 50,000 yen, and your route in single "
        "Shinkansen tickets comes to about 38,000 yen each. Skip the pass and buy tickets in the SmartEX app.",
    ),
    (
        "Skip it then. After Tokyo we'd like a night somewhere with hot springs before Kyoto.",
        "Hakone is perfect, 85 minutes from Shinjuku on the Romancecar. Stay the night of 17 April at Hakone "
        "Ginyu, a ryokan with private open-air baths: the splurge night, about 480 euros with a kaiseki dinner.",
    ),
    (
        "480 is a lot but it's the special night. Book Hakone Ginyu for 17 April and ask for a vegetarian, "
        "shellfish-free kaiseki.",
        "Hakone Ginyu is booked for 17 April, with a vegetarian kaiseki for Tomas and no shellfish for Maya. "
        "Check-in is from 15:00, so take a morning Romancecar from Shinjuku.",
    ),
    (
        "Then Kyoto. How many nights? And Tomas turns 35 on 20 April, I'd love to do something special.",
        "Four nights in Kyoto, 18 to 22 April, covers his birthday. For 20 April I suggest Shigetsu, the "
        "shojin ryori restaurant inside Tenryu-ji in Arashiyama: all plant-based, so you both eat without worry.",
    ),
    (
        "Shigetsu is perfect! Where do we stay in Kyoto?",
        "Near Gion, Hotel Kanra Kyoto is modern with a wooden design interior Tomas may enjoy, about 190 euros "
        "a night, so 760 euros for four nights. Sakura Terrace near the station is 120 euros a night.",
    ),
    (
        "Kanra, definitely. Tomas will love it. Please book it for 18 to 22 April.",
        "Hotel Kanra Kyoto is booked for 18 to 22 April. Shigetsu only serves lunch, so I reserved 20 April at "
        "12:00: a birthday lunch, then dinner in Pontocho.",
    ),
    (
        "Ah, lunch is fine. What else in Kyoto?",
        "Fushimi Inari at 7:00 before the crowds, the Philosopher's Path under the cherry trees, Nishiki "
        "market, and Kiyomizu-dera in the evening. For architecture: Kyoto Station by Hiroshi Hara.",
    ),
    (
        "My sister Lena might join us for the Osaka part. She lives in Seoul, so it's a short flight for her.",
        "Lovely. If Lena flies from Seoul Incheon to Osaka Kansai on 22 April, you can all meet in Osaka. "
        "I'd plan the Hiroshima and Miyajima day trip from there.",
    ),
    (
        "From Osaka then. Lena confirmed: she lands at Kansai on 22 April at 11:30 on Korean Air KE723.",
        "Then on 22 April you take the Shinkansen from Kyoto to Shin-Osaka (15 minutes) and meet Lena. For "
        "three people, a Mimaru apartment in Namba sleeps four, about 210 euros a night.",
    ),
    (
        "Perfect, book Mimaru Osaka Namba for 22 to 25 April.",
        "Mimaru Osaka Namba is booked for 22 to 25 April: 630 euros, and Lena pays her third. Dotonbori street "
        "food is right there. Takoyaki is octopus, a mollusc: check whether your allergy covers it.",
    ),
    (
        "Good point. My allergist said molluscs are fine, only crustaceans. Shrimp and crab are the problem.",
        "Updated: Maya's allergy is to crustaceans (shrimp, crab, lobster); octopus and squid are fine. The "
        "Japanese allergy card now says crustacean allergy.",
    ),
    (
        "What's the plan for the Hiroshima day?",
        "On 23 April: Shinkansen from Shin-Osaka at 8:00 (about 1h25), the Peace Memorial Park and museum in "
        "the morning, then the ferry to Miyajima for the floating torii. Back in Osaka by 21:00.",
    ),
    (
        "Wait, our flight home on the 26th leaves from Haneda. How do we get there from Osaka?",
        "AY74 leaves Haneda at 10:25 on 26 April, too early to come from Osaka that morning. You need the "
        "last night in Tokyo.",
    ),
    (
        "Can we keep Osaka 22 to 25 and do one night in Tokyo on the 25th?",
        "Yes: Osaka 22 to 25 April as booked, the Nozomi to Shinagawa on 25 April (2h30), and one night at "
        "Villa Fontaine Grand Haneda Airport, 150 euros, inside terminal 3. Lena flies home from Kansai on 25 April.",
    ),
    (
        "Book the Villa Fontaine for 25 April. What's our total so far?",
        "Flights 2,300, Richmond Asakusa 560, Hakone Ginyu 480, Hotel Kanra 760, Mimaru 420 (your two "
        "thirds), Villa Fontaine 150: 4,670 euros. Trains about 600 for two, leaving roughly 730 for food.",
    ),
    (
        "That's tight for food. Can we save somewhere?",
        "Two easy savings: swap Hotel Kanra for Sakura Terrace (saves 280 euros), or trade Hakone Ginyu for a "
        "simpler ryokan like Hakone Yuryo (saves 250). Kanra was chosen for Tomas's birthday, so I'd keep it.",
    ),
    (
        "Let's keep Kanra and downgrade Hakone to Yuryo. Honestly the onsen matters more than the fancy dinner.",
        "Done: Hakone Ginyu cancelled (free until 10 April) and Hakone Yuryo booked for 17 April at 230 euros "
        "with a private bath. Dinner isn't included. That leaves about 980 euros for food and sights.",
    ),
    (
        "Should we get a Suica card?",
        "Yes: add a Suica to your phone's wallet before you go. It works on trains, buses, convenience stores "
        "and lockers in Tokyo, Kyoto and Osaka. Shinkansen tickets stay in SmartEX.",
    ),
    (
        "What do I need to pack for April weather?",
        "April in Tokyo and Kyoto is 10 to 20 degrees, with a couple of rainy days. Pack layers, a light "
        "waterproof jacket and shoes you can slip off for temples and ryokans. Hakone nights drop to 6 degrees.",
    ),
    (
        "Can you summarise the final itinerary so I can send it to Tomas and Lena?",
        "12 Apr: AY1432/AY73 Berlin to Haneda. 13-17: Richmond Asakusa, Tokyo. 17: Hakone Yuryo. 18-22: Hotel "
        "Kanra Kyoto (20 Apr: Tomas's 35th, lunch at Shigetsu). 22-25: Mimaru Osaka Namba with Lena (23 Apr: "
        "Hiroshima and Miyajima). 25: Villa Fontaine Haneda. 26 Apr: AY74 home.",
    ),
    (
        "Thank you! One more question: Tomas asked whether we could see a sumo tournament.",
        "There's no tournament in April: the Tokyo tournaments are in January, May and September. But you can "
        "watch morning practice (asageiko) at a stable in Ryogoku, near your hotel, for about 40 euros each.",
    ),
    (
        "Book the asageiko for the morning of 15 April for the two of us. That's everything, thanks so much!",
        "Booked: asageiko in Ryogoku on 15 April at 7:30 for Maya and Tomas. Have a wonderful trip, and happy "
        "early birthday to Tomas!",
    ),
]


# --- talking to the server ----------------------------------------------------------------


class ToolFailed(RuntimeError):
    """A tool answered with an error; its text starts with a code such as NOT_FOUND."""


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call one tool and return its structured result, or raise ToolFailed with its text."""
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        text = "".join(getattr(block, "text", "") for block in result.content)
        raise ToolFailed(text)
    structured: dict[str, Any] | None = result.structured_content
    if structured is None:
        raise ToolFailed(f"{tool} returned no structured result")
    return structured


async def wait_for_phase2(client: Client, task_id: str) -> dict[str, Any]:
    """Poll get_task until the commit's background work ends (completed or failed)."""
    with anyio.fail_after(PHASE2_TIMEOUT_SECONDS):
        while True:
            task = await call(client, "get_task", task_id=task_id)
            if task["status"] in ("completed", "failed"):
                return task
            await anyio.sleep(0.05)


# --- what the agent does with the answers --------------------------------------------------


def show(text: str, indent: str = "  | ", max_lines: int | None = None) -> None:
    """Print text wrapped and indented, at most `max_lines` lines of it."""
    lines: list[str] = []
    for paragraph in text.strip().split("\n"):
        lines.extend(textwrap.wrap(paragraph, width=100 - len(indent)) or [""])
    if max_lines is not None and len(lines) > max_lines:
        lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more lines)"]
    for line in lines:
        print(f"{indent}{line}".rstrip())


def show_context(context: dict[str, Any], budget: int, max_lines: int | None = None) -> None:
    """Print what the model would now see in its window: get_context's text, as it reads it
    (the latest archive's overview, abstracts of archives the overview does not cover, the
    messages not yet summarised)."""
    print(f"[context] rebuilt within {budget} tokens: estimatedTokens={context['estimatedTokens']}")
    show(context["context"], max_lines=max_lines)


# --- the loop ------------------------------------------------------------------------------


async def agent_loop(home: Path) -> None:
    # The server is the real one, spawned the way a desktop host would spawn it.
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "viking_mcp"],
        env={**os.environ, "VIKING_MCP_HOME": str(home), "VIKING_MCP_LOG_LEVEL": "WARNING"},
    )
    session_id = f"trip-{uuid.uuid4().hex[:8]}"
    print(f"viking-mcp data in {home}; session {session_id}\n")

    async with Client(server) as client:
        commits: list[dict[str, Any]] = []
        for turn, (user_text, assistant_text) in enumerate(CONVERSATION, start=1):
            # 1. Record both sides of the exchange. A message_id makes a retried call safe:
            #    sending the same id twice stores the message once.
            for role, text in (("user", user_text), ("assistant", assistant_text)):
                added = await call(
                    client,
                    "add_message",
                    session_id=session_id,
                    role=role,
                    content=text,
                    message_id=f"turn-{turn:03d}-{role}",
                )
                if added["session_created"]:
                    print(f"[session] {session_id} created by the first add_message")

            # 2. Is the window filling up?
            info = await call(client, "get_session", session_id=session_id)
            pending = info["pending_tokens"]
            print(f"turn {turn:2d}: {info['message_count']:2d} live messages, pending_tokens={pending}")
            if pending < COMMIT_THRESHOLD_TOKENS:
                continue

            # 3. Commit: Phase 1 archives everything but the last KEEP_RECENT messages, now.
            commit = await call(client, "commit", session_id=session_id, keep_recent_count=KEEP_RECENT)
            commits.append(commit)
            print(
                f"[commit] {commit['archive_id']}: {commit['archived_messages']} messages archived, "
                f"{KEEP_RECENT} kept live; summarising in the background (task {commit['task_id'][:8]})"
            )

            # 4. Wait for Phase 2, then rebuild the context window from the server.
            task = await wait_for_phase2(client, commit["task_id"])
            print(f"[task] {task['task_type']} {task['status']}" + (f": {task['error']}" if task["error"] else ""))
            context = await call(client, "get_context", session_id=session_id, token_budget=CONTEXT_BUDGET_TOKENS)
            show_context(context, CONTEXT_BUDGET_TOKENS, max_lines=12)
            print()

        # What a fresh model instance would get if the conversation resumed now.
        print("\n=== Final context window ===")
        context = await call(client, "get_context", session_id=session_id, token_budget=CONTEXT_BUDGET_TOKENS)
        show_context(context, CONTEXT_BUDGET_TOKENS)

        info = await call(client, "get_session", session_id=session_id)
        print(
            f"\n[session] {info['total_message_count']} messages recorded, {info['commit_count']} commits, "
            f"{info['message_count']} live"
        )

        # 5. Summaries are lossy; the archives are not. Read the first one back in full.
        if commits:
            first = commits[0]["archive_id"]
            archive = await call(client, "expand_archive", session_id=session_id, archive_id=first, limit=3)
            print(f"\n=== expand_archive {first}, its first 3 messages (next_offset={archive['next_offset']}) ===")
            show(archive["archive"], max_lines=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An agent loop whose memory is viking-mcp (scripted, no LLM).")
    parser.add_argument("--home", type=Path, help="data directory for the server (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.home is not None:
        args.home.mkdir(parents=True, exist_ok=True)
        anyio.run(agent_loop, args.home.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="viking-agent-") as home:
            anyio.run(agent_loop, Path(home))
    return 0


if __name__ == "__main__":
    sys.exit(main())
