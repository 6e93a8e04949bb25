"""The `viking-mcp` command. With no arguments it is an MCP server on stdio.

    viking-mcp                                  MCP server on stdio (what a desktop host runs)
    viking-mcp serve [--transport http]         the same, or HTTP: /mcp and /api/v1
    viking-mcp session new|list|get|delete|add-message|commit|context|archive ...
    viking-mcp task get|list ...
    viking-mcp search QUERY                     everything remembered: messages, archives, memories
    viking-mcp export DIR / import DIR          the viking:// tree as plain files, and back
    viking-mcp migrate                          bring the store's schema up to date

Subcommands work on the data directory in this process (embedded), or against a running
server's HTTP API with `--url` (and `--api-key`). Each one is one engine method or one HTTP
endpoint: the embedded `Client` or `cli/remote.py`'s `RemoteClient`, which answer to the same
method names; this module only parses, dispatches and prints.

When serving over stdio, stdout belongs to the MCP protocol and everything meant for a
person goes to stderr (logging included). Subcommands print their result on stdout: for
people by default, the result object as JSON with `--json`. Errors are one line on stderr,
`viking-mcp: CODE: message`, exit status 1 (2 for a command line that does not parse).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import BaseModel

from viking_mcp import __version__
from viking_mcp.engine import Engine
from viking_mcp.engine.export_import import export_tree, import_tree
from viking_mcp.errors import FailedPrecondition, InvalidArgument, Unavailable, VikingError
from viking_mcp.memory import MEMORY_CATEGORIES
from viking_mcp.models import OPENVIKING_TOKEN_BUDGET, SEARCH_KINDS

logger = logging.getLogger("viking_mcp")

_TTY_HELP = """\
viking-mcp {version}: conversation memory for LLM agents (an MCP server).

It is now serving MCP on stdin/stdout, which is meant for an MCP client such as
Claude Desktop, Claude Code, Cursor or VS Code, not for typing into. To use it:

  Claude Code:     claude mcp add viking-mcp -- {command}
  Claude Desktop:  add to claude_desktop_config.json:
                   {{"mcpServers": {{"viking-mcp": {{"command": "{command}"}}}}}}

Data directory: {home}  (set VIKING_MCP_HOME to change it)
Press Ctrl-C to stop. `viking-mcp --help` lists the options.
"""

_EPILOG = """\
examples:
  viking-mcp session new --id demo
  echo "I moved to Lisbon in May." | viking-mcp session add-message demo --role user
  viking-mcp session commit demo --wait
  viking-mcp session context demo --budget 4000
  viking-mcp --url http://127.0.0.1:1933 --api-key KEY session list --json
  viking-mcp export ./backup && viking-mcp --home ./copy import ./backup
"""

if TYPE_CHECKING:
    from viking_mcp.cli.remote import RemoteClient
    from viking_mcp.client import Client
    from viking_mcp.config import Settings

    # What answers a subcommand: the engine on the data directory, or a server (--url).
    Backend = Client | RemoteClient
    # A subcommand that does more than one backend call with its options.
    Call = Callable[[Backend, dict[str, Any]], BaseModel]


# --- logging --------------------------------------------------------------------------------------


class _NoTraceback(logging.Formatter):
    """For subcommands: a log record is one line; tracebacks only at DEBUG."""

    def formatException(self, ei: tuple[type[BaseException], BaseException, TracebackType | None] | Any) -> str:
        return ""


def _configure_logging(level: str, one_line: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if one_line and level != "DEBUG":
        handler.setFormatter(_NoTraceback("viking-mcp: %(levelname)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# --- the command line -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A command line that does not parse: one line, exit status 2."""
        self.exit(2, f"viking-mcp: INVALID_ARGUMENT: {message} (see `{self.prog} --help`)\n")


def _json_value(kind: type, example: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not JSON ({exc}); e.g. {example}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(
                f"must be a JSON {kind.__name__.replace('dict', 'object')}; e.g. {example}"
            )
        return value

    return parse


def _whole(least: int, most: int) -> Callable[[str], int]:
    """A whole number in least..most (checked here when no engine call checks it)."""

    def parse(text: str) -> int:
        value = int(text) if text.strip().isdigit() and len(text) < 20 else -1
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number from {least} to {most}")
        return value

    return parse


def _common(defaults: bool) -> _Parser:
    """Options every command takes, before or after its name (`viking-mcp --json session list`
    and `viking-mcp session list --json` are the same)."""
    parent = _Parser(add_help=False, argument_default=None if defaults else argparse.SUPPRESS)
    group = parent.add_argument_group("global options")
    group.add_argument("--home", help="data directory (default: $VIKING_MCP_HOME or the user data directory)")
    group.add_argument(
        "--store",
        help="'sqlite' (the embedded store in the data directory) or a postgresql:// URL shared by several "
        "server instances (default: $VIKING_MCP_STORE, else sqlite)",
    )
    group.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    group.add_argument("--url", help="talk to a running server's HTTP API (default: $VIKING_MCP_URL)")
    group.add_argument("--api-key", help="its API key (default: $VIKING_MCP_API_KEY)")
    return parent


def _parser() -> argparse.ArgumentParser:
    from viking_mcp.cli import render

    common = _common(defaults=False)
    parser = _Parser(
        prog="viking-mcp",
        description="Conversation memory for LLM agents. With no command: an MCP server on stdio.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"viking-mcp {__version__}")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging on stderr (default: $VIKING_MCP_LOG_LEVEL, else INFO when serving, WARNING otherwise)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server: MCP on stdio (the default), or HTTP")
    serve.add_argument(
        "--transport",
        choices=["stdio", "http"],
        default="stdio",
        help="stdio: MCP for one local host (default); http: MCP at /mcp and the OpenViking API at /api/v1",
    )
    serve.add_argument("--host", default="127.0.0.1", help="HTTP: address to listen on (default loopback)")
    serve.add_argument("--port", type=_whole(0, 65535), default=1933, help="HTTP: port (default 1933)")

    def command(group: Any, name: str, help: str, call: str | Call, show: Callable[[Any], str]) -> _Parser:
        """A subcommand: one backend call (a method name, or a function), and how to show its result.
        The options added to it are the call's keyword arguments: each one's dest is a parameter name."""
        sub: _Parser = group.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(call=call, render=show)
        return sub

    # sessions
    session = commands.add_parser("session", help="sessions: new, list, get, delete, add-message, commit, ...")
    sessions = session.add_subparsers(dest="action", metavar="ACTION", required=True)
    new = command(sessions, "new", "create a session", "create_session", render.session_created)
    new.add_argument("--id", dest="session_id", metavar="ID", help="its id (default: a new random one)")
    new.add_argument("--metadata", type=_json_value(dict, '\'{"project": "x"}\''), help="a JSON object")
    listing = command(sessions, "list", "list sessions, newest first", "list_sessions", render.session_page)
    listing.add_argument("--limit", type=int, default=50, help="sessions per page (1..500, default 50)")
    listing.add_argument("--cursor", help="next page: the cursor the previous page printed")
    get = command(sessions, "get", "show a session's counters and metadata", "get_session", render.session_info)
    get.add_argument("session_id", metavar="ID", help="the session's id")
    delete = command(
        sessions, "delete", "delete a session (its extracted memories stay)", "delete_session", render.session_deleted
    )
    delete.add_argument("session_id", metavar="ID", help="the session's id")
    add = command(
        sessions, "add-message", "add a message (creates the session if needed)", _add_message, render.message_added
    )
    add.add_argument("session_id", metavar="ID", help="the session's id")
    add.add_argument("--role", choices=["user", "assistant"], required=True)
    text = add.add_mutually_exclusive_group()
    text.add_argument("--content", help="the text (default: read from stdin)")
    text.add_argument(
        "--parts", type=_json_value(list, '\'[{"type": "text", "text": "hi"}]\''), help="parts as a JSON list"
    )
    add.add_argument("--created-at", help="when it was said (ISO 8601; default now)")
    add.add_argument("--message-id", help="its id; adding the same id again stores it once")
    commit = command(
        sessions, "commit", "archive the live messages; summaries and memories follow", _commit, render.commit_result
    )
    commit.add_argument("session_id", metavar="ID", help="the session's id")
    commit.add_argument(
        "--keep-recent",
        "--keep-recent-count",
        dest="keep_recent_count",
        type=int,
        default=0,
        metavar="N",
        help="leave the newest N messages live (default 0)",
    )
    commit.add_argument("--wait", action="store_true", help="wait for the summary and memories (Phase 2)")
    commit.add_argument("--abstract", help="your own one-line summary of what is archived")
    commit.add_argument("--overview", help="your own markdown overview of it")
    context = command(sessions, "context", "the context an agent would get back", "get_session_context", render.context)
    context.add_argument("session_id", metavar="ID", help="the session's id")
    context.add_argument("--query", help="the task at hand: archived messages relevant to it get part of the budget")
    context.add_argument(
        "--budget",
        dest="token_budget",
        type=int,
        default=OPENVIKING_TOKEN_BUDGET,
        metavar="N",
        help=f"token budget for archive summaries (default {OPENVIKING_TOKEN_BUDGET})",
    )
    archive = command(
        sessions, "archive", "one archive: status, summaries and messages", "get_session_archive", render.archive
    )
    archive.add_argument("session_id", metavar="ID", help="the session's id")
    archive.add_argument("archive_id", metavar="ARCHIVE_ID", help="e.g. archive_001")

    # tasks
    task = commands.add_parser("task", help="background tasks: get, list")
    tasks = task.add_subparsers(dest="action", metavar="ACTION", required=True)
    task_get = command(tasks, "get", "show a task", "get_task", render.task)
    task_get.add_argument("task_id", metavar="ID", help="the task_id a commit printed")
    task_list = command(tasks, "list", "list tasks, newest first", "list_tasks", render.task_list)
    task_list.add_argument("--type", dest="task_type", choices=["session_commit", "session_extract"])
    task_list.add_argument("--status", choices=["pending", "running", "completed", "failed"])
    task_list.add_argument("--session", dest="resource_id", metavar="ID", help="only this session's tasks")
    task_list.add_argument("--limit", type=int, default=50, help="at most this many (1..500, default 50)")

    # memories and files
    search = command(
        commands,
        "search",
        "search messages (archived too), archive summaries and long-term memories",
        _search,
        render.search,
    )
    search.add_argument("query", metavar="QUERY", help="words to look for")
    search.add_argument("--session", dest="session_id", metavar="ID", help="only this session")
    search.add_argument(
        "--kinds",
        type=_kinds,
        metavar="KINDS",
        help="comma-separated: message, archive, memory (default all; with --session, message,archive)",
    )
    search.add_argument("--since", metavar="WHEN", help="only what was said at or after (ISO 8601)")
    search.add_argument("--until", metavar="WHEN", help="only what was said at or before (ISO 8601)")
    search.add_argument("--budget", dest="token_budget", type=int, metavar="N", help="passages within N tokens")
    search.add_argument(
        "--category", choices=MEMORY_CATEGORIES, help="search only memories of this category (relative scores)"
    )
    search.add_argument("--limit", type=int, default=10, help="at most this many (1..100, default 10)")
    export = command(
        commands, "export", "write the data directory as plain files (JSONL and markdown)", _export, render.exported
    )
    export.add_argument("directory", metavar="DIR", help="a new or empty directory")
    load = command(commands, "import", "read an export back into the data directory", _import, render.imported)
    load.add_argument("directory", metavar="DIR", help="a directory `viking-mcp export` wrote")
    load.add_argument("--replace", action="store_true", help="overwrite sessions, tasks and memories that exist")
    migrate = commands.add_parser(
        "migrate",
        help="apply the store's schema migrations and print its schema version",
        description="Apply the store's schema migrations (servers also do this when they start) and print its "
        "schema version. Run it once before starting several instances of a new version on one database.",
        parents=[common],
    )
    migrate.set_defaults(call=None, render=None)
    return parser


# --- commands that do more than pass their arguments on ------------------------------------------------


def _add_message(backend: Backend, arguments: dict[str, Any]) -> BaseModel:
    if arguments["content"] is None and arguments["parts"] is None:
        arguments["content"] = _stdin_text()
    return backend.add_message(**arguments)


def _kinds(value: str) -> list[str]:
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SEARCH_KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"{value!r}: comma-separated, of {', '.join(SEARCH_KINDS)}")
    return kinds


def _search(backend: Backend, arguments: dict[str, Any]) -> BaseModel:
    """search: everything remembered; with --category, only memories (search_memories, as before)."""
    category = arguments.pop("category")
    if category is None:
        return backend.search(**arguments)
    others = [flag for name, flag in _RECALL_ONLY.items() if arguments.get(name) is not None]
    if others:
        raise InvalidArgument(f"--category searches memories only; drop {', '.join(others)} or --category")
    return backend.search_memories(query=arguments["query"], category=category, limit=arguments["limit"])


# The options of search that --category (memories only) does not take: dest, flag.
_RECALL_ONLY = {
    "session_id": "--session",
    "kinds": "--kinds",
    "since": "--since",
    "until": "--until",
    "token_budget": "--budget",
}


def _engine(backend: Backend, verb: str) -> Engine:
    """The engine on the data directory: export and import read and write it as files."""
    if not isinstance(engine := getattr(backend, "engine", None), Engine):
        raise FailedPrecondition(
            f"{verb} works on a data directory, not over HTTP: run it without --url where the data lives"
        )
    return engine


def _export(backend: Backend, arguments: dict[str, Any]) -> BaseModel:
    return export_tree(_engine(backend, "export"), **arguments)


def _import(backend: Backend, arguments: dict[str, Any]) -> BaseModel:
    return import_tree(_engine(backend, "import"), **arguments)


def _stdin_text() -> str:
    if sys.stdin is None:
        raise InvalidArgument("give the message with --content or --parts, or on stdin")
    if sys.stdin.isatty():
        sys.stderr.write("Type the message; end it with Ctrl-D.\n")
        sys.stderr.flush()
    text = sys.stdin.read()
    if text.endswith("\n"):  # what `echo` adds is not part of the message
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    return text


def _commit(backend: Backend, arguments: dict[str, Any]) -> BaseModel:
    from viking_mcp.cli.progress import Progress

    if not arguments["wait"]:
        return backend.commit_session(**arguments)
    with Progress(sys.stderr, f"committing {arguments['session_id']} and waiting for its summary") as progress:
        return backend.commit_session(**arguments, on_progress=progress.update)


# --- running a subcommand ---------------------------------------------------------------------------


def _backend(args: argparse.Namespace) -> Backend:
    url = args.url or os.environ.get("VIKING_MCP_URL")
    if url:
        from viking_mcp.cli.remote import RemoteClient

        return RemoteClient(url, args.api_key or os.environ.get("VIKING_MCP_API_KEY"))
    from viking_mcp.client import Client

    try:
        # No background worker: `commit --wait` runs Phase 2 in this process while it waits.
        # Without --wait, the task stays queued for a server on the same data directory.
        return Client(settings=_settings(args), background=False)
    except OSError as exc:
        raise Unavailable(
            f"cannot use the data directory {_settings(args).home}: {exc.strerror or exc}; "
            "set VIKING_MCP_HOME or --home"
        ) from exc


def _settings(args: argparse.Namespace) -> Settings:
    """The environment's settings, with --home and --store applied."""
    from viking_mcp.config import settings_from_env

    settings = settings_from_env()
    if getattr(args, "home", None):
        settings = settings.with_home(args.home)
    if getattr(args, "store", None):
        settings = settings.with_store(args.store)
    return settings


def _migrate(args: argparse.Namespace) -> int:
    """Open the store (which applies any pending migration) and say where it stands."""
    from viking_mcp.store import open_store

    try:
        if args.url or os.environ.get("VIKING_MCP_URL"):
            raise InvalidArgument("migrate works on a store, not through a server: drop --url / VIKING_MCP_URL")
        settings = _settings(args)
        store = open_store(settings)
        try:
            version = store.schema_version()
        finally:
            store.close()
    except VikingError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"UNAVAILABLE: cannot use the data directory: {exc}; set VIKING_MCP_HOME or --home")
    kind = "sqlite" if settings.store is None else "postgresql"
    if args.json:
        sys.stdout.write(
            json.dumps({"store": kind, "location": settings.store_label, "schema_version": version}) + "\n"
        )
    else:
        sys.stdout.write(f"{kind} store at {settings.store_label}: schema version {version} (up to date)\n")
    sys.stdout.flush()
    return 0


def _fail(message: str) -> int:
    sys.stderr.write(f"viking-mcp: {message}\n")
    sys.stderr.flush()
    return 1


# The parsed command line's entries that are not a subcommand's own options.
_NOT_ARGUMENTS = frozenset(
    {"command", "action", "call", "render", "log_level", "home", "store", "json", "url", "api_key"}
)


def _run(args: argparse.Namespace) -> int:
    try:
        backend = _backend(args)
        try:
            arguments = {k: v for k, v in vars(args).items() if k not in _NOT_ARGUMENTS}
            call = args.call
            result = getattr(backend, call)(**arguments) if isinstance(call, str) else call(backend, arguments)
        finally:
            backend.close()
        output = result.model_dump_json(indent=2) if args.json else args.render(result)
        try:
            sys.stdout.write(output + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # `viking-mcp ... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except VikingError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        sys.stderr.write("viking-mcp: interrupted\n")
        return 130
    except Exception as exc:  # a bug: still one line (the traceback with --log-level DEBUG)
        logger.debug("unexpected error", exc_info=True)
        return _fail(f"INTERNAL: {type(exc).__name__}: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else list(argv))
    level = args.log_level or os.environ.get("VIKING_MCP_LOG_LEVEL", "").upper() or None
    if args.command not in (None, "serve"):
        _configure_logging(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "WARNING", one_line=True)
        return _migrate(args) if args.command == "migrate" else _run(args)
    _configure_logging(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")
    settings: Settings | None = None
    try:
        settings = _settings(args)
        if args.command == "serve" and args.transport == "http":
            from viking_mcp.api.app import serve_http

            serve_http(settings, args.host, args.port)
            return 0
        return _serve_stdio(settings)
    except (VikingError, OSError, BaseExceptionGroup) as exc:
        # The store is opened by the server's lifespan; its errors may arrive in a group.
        cause = _first_cause(exc)
        if cause is None:
            raise
        from viking_mcp.mcp.server import describe_open_error

        message = describe_open_error(cause, settings) if settings is not None else str(cause)
        sys.stderr.write(f"viking-mcp: {message}\n")
        return 2
    except KeyboardInterrupt:
        return 130


def _arguments(argv: list[str]) -> argparse.Namespace:
    """The parsed command line. With no arguments, what a desktop host runs (the stdio
    server), the parser is not built: its 17 subcommands are 5 ms of the server's start."""
    if not argv:
        return argparse.Namespace(command=None, log_level=None, home=None, store=None)
    return _parser().parse_args(argv)


def _first_cause(exc: BaseException) -> VikingError | OSError | None:
    if isinstance(exc, VikingError | OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _first_cause(inner)) is not None:
                return found
    return None


def _stop_on_signal(signum: int, _frame: object) -> None:
    """Ctrl-C or SIGTERM: leave at once. The stdin reader thread cannot be interrupted, so a
    graceful shutdown could hang; nothing is lost by not waiting, since every acknowledged
    write is already committed and unfinished Phase 2 work resumes at the next start."""
    sys.stderr.write(f"viking-mcp: stopping ({signal.Signals(signum).name})\n")
    sys.stderr.flush()
    os._exit(0)


def _serve_stdio(settings: Settings) -> int:
    import anyio

    from viking_mcp.mcp.server import build_server
    from viking_mcp.mcp.stdio import serve_stdio

    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    if sys.stdin.isatty():
        command = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "viking-mcp"
        sys.stderr.write(_TTY_HELP.format(version=__version__, command=command, home=settings.home))
        sys.stderr.flush()
    # A store that cannot be opened ends the server's lifespan: main() says why, in one line.
    anyio.run(serve_stdio, build_server(settings, settle_heap=True))
    return 0
