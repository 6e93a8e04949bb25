"""Export the store to plain files, and import them back (`viking-mcp export|import DIR`).

Both go through the store: export reads one consistent snapshot (`Store.export_tree`),
import writes everything in one transaction (`Store.import_tree`), so an import that
fails half-way (a damaged file, a session that already exists) changes nothing. Import
reads and checks every file first and asks for the store's write lock only then, so a
live server on the same data keeps answering while a large export is parsed.

Every file is written atomically (a temporary file, then a rename) and the manifest
last: a directory without it is an export that did not finish, and import refuses it.
Paths are never taken on trust, not even from validated ids: each one is checked to
stay inside DIR, and import opens only regular files (no links, pipes or devices) of at
most MAX_FILE_BYTES each. It reads every file and folder an export writes, and refuses
one it would not read (a linked session folder, a stray file) rather than pass it over.

Ids that differ only in case (`Trip`, `trip`) get names that differ by more (`trip~2`),
so that an export is the same on a case-insensitive filesystem (macOS's and Windows'
default); import takes each id from inside its files.

Nor are the files taken on trust one by one: before anything is written, import checks
that they agree with each other (a pending archive has its pending task, a task's session
and archive exist and have its owner, a memory's URI is the one its fields make, counts
are in range, times are times) and refuses an export that does not, naming the file.

The layout and each file's shape: `viking_mcp.engine.export_format`.
"""

from __future__ import annotations

import inspect
import json
import os
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from viking_mcp._version import __version__
from viking_mcp.engine import export_format as files
from viking_mcp.engine.export_format import (
    ArchiveMeta,
    ContextUsageLine,
    Manifest,
    MemoryFile,
    MessageLine,
    RelationsFile,
    Rendering,
    TaskLine,
    ToolFile,
    UsageLine,
)
from viking_mcp.engine.uris import render_memory
from viking_mcp.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from viking_mcp.memory.categories import SCOPES, memory_uri
from viking_mcp.models import (
    MAX_COUNT,
    Message,
    Owner,
    SessionInfo,
    StoredMemory,
    archive_id,
    archive_uri,
    message_text,
    normalize_time,
    parse_archive_id,
    utc_now,
    validate_id,
)
from viking_mcp.store.base import (
    ArchiveRow,
    ContextUsage,
    MemoryDump,
    OverviewRendering,
    SessionDump,
    SessionRow,
    StoredMessage,
    TaskRow,
    ToolRecord,
    UsageEntry,
)
from viking_mcp.tokens import MESSAGE_OVERHEAD_TOKENS, TokenCounter

if TYPE_CHECKING:
    from viking_mcp.engine.engine import Engine

Model = TypeVar("Model", bound=BaseModel)
Made = TypeVar("Made")

# The largest single file import reads: far beyond any real session, small enough to hold in memory.
MAX_FILE_BYTES = 256 * 1024 * 1024
# What an export writes in a session's folder, in an archive's, and at its top for memories.
_SESSION_FILES = (files.META, files.MESSAGES, files.ABSTRACT, files.OVERVIEW, files.RELATIONS)
_ARCHIVE_FILES = (files.META, files.MESSAGES, files.ABSTRACT, files.OVERVIEW, files.MEMORY_DIFF, files.DONE)
_SCOPE_FOLDERS = ("user", "agent")
_UNFINISHED = ("pending", "running")


class TransferResult(BaseModel):
    """What an export wrote or an import restored."""

    directory: str
    sessions: int
    messages: int
    archives: int
    tool_records: int
    tasks: int
    memories: int
    context_usage: int


# --- paths inside DIR ---------------------------------------------------------------------------


class _Folder:
    """DIR, and paths in it that are checked to stay in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real = root.resolve()

    def path(self, *names: str) -> Path:
        for name in names:
            if not name or name in (".", "..") or any(c in name for c in ("/", "\\", "\x00")):
                raise InvalidArgument(f"{name[:60]!r} cannot be a file name in an export")
        path = self.root.joinpath(*names)
        if not path.resolve().is_relative_to(self.real):
            raise InvalidArgument(f"{'/'.join(names)[:160]} leads outside {self.root}; links out of DIR are refused")
        return path

    def listing(self, *names: str) -> tuple[list[str], list[str]]:
        """The folders and the regular files in DIR/names (none if it is missing), each sorted.

        Anything else there is refused, naming it: import follows no link (into DIR or out of
        it) and opens no pipe or device, and what it passed over without a word would make an
        import look whole when it was not (a linked session folder once imported as nothing)."""
        path = self.path(*names)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            raise _io_error(exc, "read") from exc
        if not stat.S_ISDIR(info.st_mode):
            raise InvalidArgument(f"{_shown(names)} is not a folder (a link or a file); an export has a folder there")
        folders: list[str] = []
        regular: list[str] = []
        try:
            with os.scandir(path) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.name)
                    elif entry.is_file(follow_symlinks=False):
                        regular.append(entry.name)
                    else:
                        self.path(*names, entry.name)  # a link out of DIR says so
                        raise InvalidArgument(
                            f"{_shown((*names, entry.name))} is not a regular file or folder (a link, pipe or "
                            "device); an export holds only regular files and folders: put the files themselves there"
                        )
        except OSError as exc:
            raise _io_error(exc, "read") from exc
        return folders, regular

    def only(self, names: tuple[str, ...], files: Iterable[str] = (), folders: Iterable[str] = ()) -> list[str]:
        """Refuse anything in DIR/names but the `files` and `folders` an export writes there (hidden
        files aside: a desktop's .DS_Store is no part of an export); the folders that are there."""
        found, regular = self.listing(*names)
        expected = set(folders)
        for name in found:
            if name not in expected:
                raise InvalidArgument(_left_behind((*names, name), "folder", expected))
        expected = set(files)
        for name in regular:
            if name not in expected and not name.startswith("."):
                raise InvalidArgument(_left_behind((*names, name), "file", expected))
        return found

    def subfolders(self, *names: str) -> list[str]:
        """The folders in DIR/names (none if it is missing), sorted; a file there is refused."""
        found, regular = self.listing(*names)
        if stray := [name for name in regular if not name.startswith(".")]:
            raise InvalidArgument(_left_behind((*names, stray[0]), "file", ()))
        return found


def _copy(target: Callable[..., Made], source: object, **values: Any) -> Made:
    """A `target` made of the fields of `source` that `target` has by the same name, and `values`."""
    names = inspect.signature(target).parameters
    return target(**{name: getattr(source, name) for name in names if hasattr(source, name)} | values)


def _shown(names: tuple[str, ...]) -> str:
    return "/".join(names)


def _left_behind(names: tuple[str, ...], kind: str, expected: Iterable[str]) -> str:
    listed = ", ".join(sorted(expected)) or "none"
    return (
        f"{_shown(names)}: import does not read this {kind}, and would leave it behind; an export has only "
        f"these {kind}s there: {listed}. Remove it, or put what it holds where the export has it"
    )


def _archive_id(number: int | None) -> str | None:
    return None if number is None else archive_id(number)


def _archive_number(name: str | None) -> int | None:
    return None if name is None else parse_archive_id(name)


def _io_error(exc: OSError, doing: str) -> Unavailable:
    where = exc.filename or "a file"
    return Unavailable(f"cannot {doing} {where}: {exc.strerror or exc}")


# --- writing ------------------------------------------------------------------------------------


@contextmanager
def atomic_file(path: Path, durable: bool = False) -> Iterator[IO[str]]:
    """A file that appears whole, under its name, or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temporary.open("x", encoding="utf-8", newline="") as file:
            yield file
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"


class _CaseSafeNames:
    """Paths that no two ids share on a case-insensitive filesystem (macOS's and Windows'
    default), where sessions `Trip` and `trip` would be one folder, one's files written over the
    other's. The first id to take a name keeps it (so almost every export is the viking:// tree
    as it is); another that differs from it only in case is written as `trip~2`, `trip~3`...
    (`~` is in no id), and import reads each id from inside its files, not from their names."""

    def __init__(self) -> None:
        self.taken: dict[tuple[str, ...], tuple[str, ...]] = {}  # the path in lower case -> as written

    def path(self, names: tuple[str, ...]) -> tuple[str, ...]:
        written: tuple[str, ...] = ()
        for name in names:
            candidate, number = name, 1
            while True:
                path = (*written, candidate)
                if self.taken.setdefault(_folded(path), path) == path:
                    break
                number += 1
                # A memory file keeps its .md (import reads *.md); a folder's name is an id.
                candidate = f"{name[:-3]}~{number}.md" if name.endswith(".md") else f"{name}~{number}"
            written = path
        return written


def _folded(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name.lower() for name in names)  # ids are ASCII: lower() is the filesystem's folding


def _unsuffixed(name: str) -> str:
    """The id a folder or file name was written for: without the `~2` _CaseSafeNames adds."""
    stem, tilde, number = name.rpartition("~")
    return stem if tilde and number.isdigit() else name


class _Writer:
    def __init__(self, folder: _Folder, engine: Engine) -> None:
        self.folder = folder
        self.engine = engine
        self.names = _CaseSafeNames()
        self.counts = {name: 0 for name in TransferResult.model_fields if name != "directory"}

    def path(self, names: tuple[str, ...]) -> Path:
        return self.folder.path(*self.names.path(names))

    def text(self, names: tuple[str, ...], text: str) -> None:
        with atomic_file(self.path(names)) as file:
            file.write(text)

    def jsonl(self, names: tuple[str, ...], lines: Iterable[BaseModel]) -> int:
        """Write one JSON object a line; how many."""
        written = 0
        with atomic_file(self.path(names)) as file:
            for line in lines:
                file.write(line.model_dump_json() + "\n")
                written += 1
        return written

    def session(self, dump: SessionDump) -> None:
        session_id = validate_id(dump.session.session_id)
        base = (files.SESSIONS, session_id)
        # The tree's .meta.json: the session as get_session shows it (owner and counters included).
        self.text((*base, files.META), _dumps(self.engine.session_info(dump.session).model_dump(mode="json")))
        archived_through = dump.archives[-1].last_seq if dump.archives else 0
        self.messages((*base, files.MESSAGES), [m for m in dump.messages if m.seq > archived_through])
        latest = next((a for a in reversed(dump.archives) if a.status == "completed"), None)
        self.text((*base, files.ABSTRACT), latest.abstract if latest else "")
        self.text((*base, files.OVERVIEW), latest.overview if latest else "")
        relations = RelationsFile(
            contexts=[u.uri for u in dump.usage if u.kind == "context"],
            skills=[u.payload for u in dump.usage if u.kind == "skill"],
            records=[_copy(UsageLine, u, archive_id=_archive_id(u.archive_number)) for u in dump.usage],
        )
        self.text((*base, files.RELATIONS), _dumps(relations.model_dump(mode="json")))
        for tool in dump.tools:
            self.text((*base, files.TOOLS, tool.tool_id, files.TOOL), _dumps(asdict(tool)))
        for archive in dump.archives:
            self.archive(base, dump, archive)
        self.counts["sessions"] += 1
        self.counts["messages"] += len(dump.messages)
        self.counts["archives"] += len(dump.archives)
        self.counts["tool_records"] += len(dump.tools)

    def archive(self, base: tuple[str, ...], dump: SessionDump, archive: ArchiveRow) -> None:
        name = archive_id(archive.number)
        where = (*base, files.HISTORY, name)
        renderings = archive.overview_renderings
        # .overview.md is one of the renderings (the longest, unless the agent or an LLM wrote it)
        at = next((i for i, r in enumerate(renderings) if r.text == archive.overview), 0)
        meta = _copy(
            ArchiveMeta,
            archive,
            archive_id=name,
            uri=archive_uri(dump.session.session_id, archive.number),
            overview_tokens=renderings[at].tokens if renderings else None,
            longer_overviews=[Rendering(tokens=r.tokens, text=r.text) for r in renderings[:at]],
            shorter_overviews=[Rendering(tokens=r.tokens, text=r.text) for r in renderings[at + 1 :]],
        )
        self.text((*where, files.META), _dumps(meta.model_dump(mode="json")))
        self.messages(
            (*where, files.MESSAGES), [m for m in dump.messages if archive.first_seq <= m.seq <= archive.last_seq]
        )
        self.text((*where, files.ABSTRACT), archive.abstract)
        self.text((*where, files.OVERVIEW), archive.overview)
        if archive.memory_diff is not None:
            self.text((*where, files.MEMORY_DIFF), _dumps(archive.memory_diff))
        if archive.status == "completed" and archive.done_at is not None:
            self.text((*where, files.DONE), archive.done_at)

    def messages(self, names: tuple[str, ...], stored: list[StoredMessage]) -> None:
        self.jsonl(names, (MessageLine(**m.message.model_dump(), tokens=m.tokens) for m in stored))

    def memory(self, dump: MemoryDump) -> None:
        memory = dump.memory
        prefix = () if dump.account_id == files.DEFAULT_ACCOUNT else (files.ACCOUNTS, dump.account_id)
        if not memory.uri.startswith("viking://"):
            raise InvalidArgument(f"memory URI {memory.uri[:80]!r} is not a viking:// URI")
        names = (*prefix, *memory.uri[len("viking://") :].split("/"))
        front = MemoryFile(account_id=dump.account_id, source=dump.source, **asdict(memory))
        self.text(names, render_memory(memory, front.model_dump()))
        self.counts["memories"] += 1


def export_tree(engine: Engine, directory: str | os.PathLike[str]) -> TransferResult:
    """Write everything the store holds into `directory`, which must be new or empty."""
    root = Path(directory).expanduser()
    try:
        if root.exists() and not root.is_dir():
            raise FailedPrecondition(f"{root} is a file; export into a new or empty directory")
        if root.is_dir() and any(root.iterdir()):
            raise FailedPrecondition(f"{root} is not empty; export into a new or empty directory")
        root.mkdir(parents=True, exist_ok=True)
        writer = _Writer(_Folder(root), engine)
        with engine.store.export_tree() as records:
            for dump in records.sessions():
                writer.session(dump)
            tasks = records.tasks()
            writer.counts["tasks"] = writer.jsonl(
                (files.TASKS,),
                (_copy(TaskLine, t, resource_id=t.session_id, archive_id=_archive_id(t.archive_number)) for t in tasks),
            )
            for memory in records.memories():
                writer.memory(memory)
            usage = (ContextUsageLine(**asdict(r)) for r in records.context_usage())
            writer.counts["context_usage"] = writer.jsonl((files.CONTEXT_USAGE,), usage)
        manifest = Manifest(
            viking_mcp_version=__version__,
            exported_at=utc_now(),
            encoding=engine.tokens.encoding_name,
            counts=writer.counts,
        )
        with atomic_file(writer.path((files.MANIFEST,)), durable=True) as file:
            file.write(_dumps(manifest.model_dump(mode="json")))
    except OSError as exc:
        raise _io_error(exc, "write") from exc
    return TransferResult(directory=str(root), **writer.counts)


# --- reading ------------------------------------------------------------------------------------


def _describe(exc: ValidationError) -> str:
    problems = [f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:3]]
    return "; ".join(problems)


@dataclass
class _ReadTree:
    """An export, read whole and checked: what the store then writes in one short transaction."""

    session_dumps: list[SessionDump]
    task_rows: list[TaskRow]
    memory_dumps: list[MemoryDump]
    usage: list[ContextUsage]

    def sessions(self) -> Iterator[SessionDump]:
        return iter(self.session_dumps)

    def tasks(self) -> Iterator[TaskRow]:
        return iter(self.task_rows)

    def memories(self) -> Iterator[MemoryDump]:
        return iter(self.memory_dumps)

    def context_usage(self) -> Iterator[ContextUsage]:
        return iter(self.usage)


class _FileRecords:
    """An export directory as the store's `TreeRecords`: `read()` reads and checks it all."""

    def __init__(self, folder: _Folder, tokens: TokenCounter) -> None:
        self.folder = folder
        self.tokens = tokens
        # filled by outline(): the tasks, each session's folder, and its owner and archive numbers
        self.task_lines: list[tuple[tuple[str, ...], TaskLine]] = []
        self.session_folders: dict[str, str] = {}
        self.outlines: dict[str, tuple[tuple[str, str], set[int]]] = {}

    def read(self) -> _ReadTree:
        """Everything the export holds, checked against itself, before the store is asked to
        write any of it: parsing a large export takes a while, and the store's write lock is
        not held meanwhile (a live server on the same data keeps answering)."""
        self.outline()
        return _ReadTree(list(self.sessions()), list(self.tasks()), list(self.memories()), list(self.context_usage()))

    # reading one file

    def exists(self, names: tuple[str, ...]) -> bool:
        return os.path.lexists(self.folder.path(*names))

    def text(self, names: tuple[str, ...], default: str | None = None) -> str:
        """A regular file's text. Nothing else is opened: a pipe would hang the import, a
        device or a link is not what an export writes."""
        path = self.folder.path(*names)
        shown = _shown(names)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            if default is not None:
                return default
            raise InvalidArgument(f"{shown} is missing from the export") from None
        except OSError as exc:
            raise _io_error(exc, "read") from exc
        self.regular(shown, info.st_mode, info.st_size)
        try:
            # O_NONBLOCK: should a pipe take the file's place after the check, opening it does not wait.
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            with os.fdopen(os.open(path, flags), "rb") as file:
                info = os.fstat(file.fileno())
                self.regular(shown, info.st_mode, info.st_size)
                raw = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise _io_error(exc, "read") from exc
        self.regular(shown, stat.S_IFREG, len(raw))  # it may have grown since
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{shown} is not UTF-8 text") from None

    def regular(self, shown: str, mode: int, size: int) -> None:
        """Refuse what is not a regular file of at most MAX_FILE_BYTES."""
        if not stat.S_ISREG(mode):
            raise InvalidArgument(
                f"{shown} is not a regular file (a link, folder, pipe or device); an export holds only regular files"
            )
        if size > MAX_FILE_BYTES:
            raise ResourceExhausted(
                f"{shown} is larger than {MAX_FILE_BYTES / (1024 * 1024):g} MiB, the most import reads from one file"
            )

    def time(self, names: tuple[str, ...], field: str, value: str) -> str:
        """An ISO 8601 timestamp in the store's UTC form, or INVALID_ARGUMENT naming the file."""
        try:
            return normalize_time(value)
        except InvalidArgument:
            raise InvalidArgument(
                f"{_shown(names)}: {field} {str(value)[:40]!r} is not an ISO 8601 timestamp with a year from 1 to 9999"
            ) from None

    def times(self, names: tuple[str, ...], source: object, *fields: str) -> dict[str, str | None]:
        """`source`'s `fields` as `time` makes them (None stays None)."""
        return {f: None if (v := getattr(source, f)) is None else self.time(names, f, v) for f in fields}

    def model(self, kind: type[Model], names: tuple[str, ...], text: str | None = None) -> Model:
        try:
            return kind.model_validate_json(self.text(names) if text is None else text)
        except ValidationError as exc:
            raise InvalidArgument(f"{_shown(names)}: {_describe(exc)}") from None

    def lines(self, kind: type[Model], names: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Model]]:
        """Each non-blank line as `kind`, with the names that show where it is (`file line N`)."""
        for number, line in enumerate(self.text(names, default="").split("\n"), start=1):
            if line.strip():
                where = (*names[:-1], f"{names[-1]} line {number}")
                yield where, self.model(kind, where, line)

    def stored_messages(self, names: tuple[str, ...], first_seq: int) -> list[StoredMessage]:
        stored: list[StoredMessage] = []
        for where, line in self.lines(MessageLine, names):
            created_at = self.time(where, "created_at", line.created_at)
            message = Message(id=line.id, role=line.role, parts=line.parts, created_at=created_at)
            tokens = line.tokens
            if tokens is None:  # hand-written: count as add_message would
                tokens = self.tokens.count(message_text(message)) + MESSAGE_OVERHEAD_TOKENS
            stored.append(StoredMessage(seq=first_seq + len(stored), message=message, tokens=tokens))
        return stored

    def count(self, text: str, stored: int | None) -> int:
        return self.tokens.count(text) if stored is None else stored

    # Before the store reads anything: what the files say of each other

    def outline(self) -> None:
        """Read tasks.jsonl, and each session's owner and archives, so that every record can be
        checked against the others (sessions are read first, tasks after); and refuse any file
        or folder that import would not read."""
        self.folder.only(
            (),
            files=(files.MANIFEST, files.TASKS, files.CONTEXT_USAGE),
            folders=(files.SESSIONS, files.ACCOUNTS, *_SCOPE_FOLDERS),
        )
        self.task_lines = []
        seen: dict[str, str] = {}
        for where, line in self.lines(TaskLine, (files.TASKS,)):
            shown = _shown(where)
            validate_id(line.task_id, "task_id")
            if line.task_id in seen:
                raise InvalidArgument(f"{shown}: task {line.task_id} is also on {seen[line.task_id]}")
            seen[line.task_id] = shown
            self.task_lines.append((where, line))
        self.session_folders, self.outlines = {}, {}
        for name in self.folder.subfolders(files.SESSIONS):
            base = (files.SESSIONS, name)
            session_id = validate_id(_unsuffixed(name))
            if session_id in self.session_folders:
                raise InvalidArgument(
                    f"{_shown(base)} and {files.SESSIONS}/{self.session_folders[session_id]} are both session "
                    f"{session_id}; an export holds each session once"
                )
            self.session_folders[session_id] = name
            self.folder.only(base, files=_SESSION_FILES, folders=(files.HISTORY, files.TOOLS))
            for tool in self.folder.subfolders(*base, files.TOOLS):
                self.folder.only((*base, files.TOOLS, tool), files=(files.TOOL,))
            for archive in self.folder.subfolders(*base, files.HISTORY):
                self.folder.only((*base, files.HISTORY, archive), files=_ARCHIVE_FILES)
            info = self.model(SessionInfo, (*base, files.META))
            numbers = {parse_archive_id(a) for a in self.folder.subfolders(*base, files.HISTORY)}
            self.outlines[session_id] = ((info.user.account_id, info.user.user_id), numbers)

    # TreeRecords

    def sessions(self) -> Iterator[SessionDump]:
        for session_id, name in self.session_folders.items():
            yield self.session(session_id, (files.SESSIONS, name))

    def session(self, session_id: str, base: tuple[str, ...]) -> SessionDump:
        meta_names = (*base, files.META)
        info = self.model(SessionInfo, meta_names)
        if info.session_id != session_id:
            raise InvalidArgument(f"{_shown(meta_names)} is session {info.session_id[:80]!r}")
        llm = info.llm_token_usage
        counters = {"commit_count": info.commit_count, "llm_token_usage.prompt": llm.prompt}
        counters |= {"llm_token_usage.completion": llm.completion, "contexts_used": info.contexts_used}
        counters |= {"skills_used": info.skills_used}
        counters |= {f"memories_extracted.{k}": v for k, v in info.memories_extracted.items()}
        counters |= {"memories_extracted (all categories)": sum(info.memories_extracted.values())}
        for field, value in counters.items():
            if not 0 <= value <= MAX_COUNT:
                raise InvalidArgument(f"{_shown(meta_names)}: {field} is {str(value)[:30]}; counts run from 0 to 2**53")
        numbers = sorted(parse_archive_id(name) for name in self.folder.subfolders(*base, files.HISTORY))
        if numbers != list(range(1, len(numbers) + 1)) or len(numbers) != info.commit_count:
            raise InvalidArgument(
                f"{_shown(base)}: history/ has archives {numbers[:5]}..., but the session had "
                f"{info.commit_count} commits; archives run from archive_001 without gaps"
            )
        messages: list[StoredMessage] = []
        archives = [self.archive(session_id, base, number, messages) for number in numbers]
        live = self.stored_messages((*base, files.MESSAGES), len(messages) + 1)
        messages += live
        if (tokens := sum(m.tokens for m in messages)) > MAX_COUNT:
            raise InvalidArgument(
                f"{_shown(base)}: the messages' token counts add up to {tokens}, past 2**53; a session's "
                "tokens are counted on add_message: drop the `tokens` fields to have them counted again"
            )
        if (info.total_message_count, info.message_count) != (len(messages), len(live)):
            raise InvalidArgument(
                f"{_shown(meta_names)} counts {info.total_message_count} messages "
                f"({info.message_count} live), but the files hold {len(messages)} ({len(live)} live)"
            )
        message_ids = {m.message.id for m in messages}
        if len(message_ids) != len(messages):
            raise InvalidArgument(f"{_shown(base)}: two messages have the same id")
        relations_names = (*base, files.RELATIONS)
        relations = self.model(RelationsFile, relations_names, self.text(relations_names, "{}"))
        tools = []
        for folder in self.folder.subfolders(*base, files.TOOLS):
            tool_names = (*base, files.TOOLS, folder, files.TOOL)
            tool = self.model(ToolFile, tool_names)
            if tool.tool_id != _unsuffixed(folder):
                raise InvalidArgument(f"{_shown((*base, files.TOOLS, folder))} holds {tool.tool_id!r}")
            if tool.message_id not in message_ids:
                raise InvalidArgument(
                    f"{_shown(tool_names)}: message_id {tool.message_id[:80]!r} is not a message of "
                    f"session {session_id}"
                )
            tools.append(ToolRecord(**tool.model_dump() | self.times(tool_names, tool, "created_at", "updated_at")))
        row = _copy(
            SessionRow,
            info,  # metadata, commit_count, contexts_used and skills_used as they are
            owner=Owner(**{name: validate_id(value, name) for name, value in info.user.model_dump().items()}),
            **self.times(meta_names, info, "created_at", "updated_at", "last_commit_at"),
            total_message_count=len(messages),
            live_message_count=len(live),
            pending_tokens=sum(m.tokens for m in live),
            llm_prompt_tokens=info.llm_token_usage.prompt,
            llm_completion_tokens=info.llm_token_usage.completion,
            memories_extracted={k: v for k, v in info.memories_extracted.items() if k != "total"},
        )
        usage = []
        for index, record in enumerate(relations.records):
            number = _archive_number(record.archive_id)
            if number is not None and number not in numbers:
                raise InvalidArgument(
                    f"{_shown(relations_names)}: records[{index}] names {record.archive_id}, "
                    f"which session {session_id} does not have"
                )
            created_at = self.time(relations_names, f"records[{index}].created_at", record.created_at)
            usage.append(UsageEntry(record.kind, record.uri, record.payload, created_at, number))
        return SessionDump(session=row, messages=messages, archives=archives, tools=tools, usage=usage)

    def archive(self, session_id: str, base: tuple[str, ...], number: int, messages: list[StoredMessage]) -> ArchiveRow:
        """One archive; its messages are appended to `messages`, numbered after them."""
        where = (*base, files.HISTORY, archive_id(number))
        meta_names = (*where, files.META)
        meta = self.model(ArchiveMeta, meta_names)
        if meta.archive_id != archive_id(number):
            raise InvalidArgument(f"{_shown(meta_names)} is {meta.archive_id[:40]!r}")
        runs = ("session_commit", session_id, archive_id(number))
        if meta.status == "pending" and not any(
            (t.task_type, t.resource_id, t.archive_id) == runs and t.status in _UNFINISHED for _, t in self.task_lines
        ):
            raise InvalidArgument(
                f"{_shown(meta_names)}: the archive is pending, but {files.TASKS} has no pending or "
                f"running session_commit task for {session_id}/{archive_id(number)}; nothing would ever finish it"
            )
        stored = self.stored_messages((*where, files.MESSAGES), len(messages) + 1)
        if len(stored) != meta.message_count or not stored:
            raise InvalidArgument(
                f"{_shown(where)}: .meta.json counts {meta.message_count} messages, messages.jsonl holds {len(stored)}"
            )
        messages += stored
        abstract = self.text((*where, files.ABSTRACT), "")
        overview = self.text((*where, files.OVERVIEW), "")
        renderings = [OverviewRendering(self.count(r.text, r.tokens), r.text) for r in meta.longer_overviews]
        if overview or meta.overview_tokens is not None:
            renderings.append(OverviewRendering(tokens=self.count(overview, meta.overview_tokens), text=overview))
        renderings += [OverviewRendering(self.count(r.text, r.tokens), r.text) for r in meta.shorter_overviews]
        renderings.sort(key=lambda r: -r.tokens)  # get_context takes the first that fits
        memory_diff: dict[str, Any] | None = None
        if self.exists((*where, files.MEMORY_DIFF)):
            diff = self.text((*where, files.MEMORY_DIFF))
            try:
                memory_diff = json.loads(diff)
            except ValueError:
                raise InvalidArgument(f"{_shown((*where, files.MEMORY_DIFF))} is not JSON") from None
            if not isinstance(memory_diff, dict):
                raise InvalidArgument(f"{_shown((*where, files.MEMORY_DIFF))} is not a JSON object")
        return _copy(
            ArchiveRow,
            meta,  # status, supplied, error and task_id as they are
            session_id=session_id,
            number=number,
            first_seq=stored[0].seq,
            last_seq=stored[-1].seq,
            message_count=len(stored),
            tokens=sum(m.tokens for m in stored),
            **self.times(meta_names, meta, "created_at", "done_at"),
            abstract=abstract,
            abstract_tokens=self.count(abstract, meta.abstract_tokens),
            overview=overview,
            overview_renderings=renderings,
            memory_diff=memory_diff,
        )

    def tasks(self) -> Iterator[TaskRow]:
        for where, line in self.task_lines:
            shown = _shown(where)
            session_id = validate_id(line.resource_id, "resource_id")
            number = _archive_number(line.archive_id)
            if line.account_id is None or line.user_id is None:
                raise InvalidArgument(f"{shown}: task {line.task_id} has no account_id and user_id (whose it is)")
            owner = (validate_id(line.account_id, "account_id"), validate_id(line.user_id, "user_id"))
            outline = self.outlines.get(session_id)
            if outline is None:
                # A deleted session's finished tasks stay (as they do in a store); nothing runs them.
                if line.status in _UNFINISHED:
                    raise InvalidArgument(
                        f"{shown}: task {line.task_id} is {line.status}, but its session {session_id} is not in "
                        "the export"
                    )
            else:
                session_owner, numbers = outline
                if owner != session_owner:
                    raise InvalidArgument(
                        f"{shown}: task {line.task_id} belongs to {'/'.join(owner)}, but session {session_id} "
                        f"to {'/'.join(session_owner)}"
                    )
                if number is not None and number not in numbers:
                    raise InvalidArgument(
                        f"{shown}: task {line.task_id} names {line.archive_id}, which session {session_id} "
                        "does not have"
                    )
            if line.task_type == "session_commit" and line.status in _UNFINISHED and number is None:
                raise InvalidArgument(f"{shown}: task {line.task_id} is {line.status} but names no archive_id")
            yield _copy(
                TaskRow,
                line,
                session_id=session_id,
                archive_number=number,
                **self.times(where, line, "created_at", "updated_at"),
            )

    def memory_files(self) -> Iterator[tuple[str, ...]]:
        """Every .md file under {user,agent}/{id}/memories/, also below accounts/{account_id}/."""
        bases: list[tuple[str, ...]] = [()]
        for account in self.folder.subfolders(files.ACCOUNTS):
            validate_id(_unsuffixed(account), "account_id")
            bases.append((files.ACCOUNTS, account))
            self.folder.only(bases[-1], folders=_SCOPE_FOLDERS)
        for base in bases:
            for scope in _SCOPE_FOLDERS:
                for owner in self.folder.subfolders(*base, scope):
                    self.folder.only((*base, scope, owner), folders=("memories",))
                    yield from self.markdown_files((*base, scope, owner, "memories"))

    def markdown_files(self, names: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        """The .md files in DIR/names and the folders below it, sorted (the files first)."""
        folders, regular = self.folder.listing(*names)
        for name in regular:
            if name.endswith(".md"):
                yield (*names, name)
            elif not name.startswith("."):
                raise InvalidArgument(_left_behind((*names, name), "file", ("*.md",)))
        for folder in folders:
            yield from self.markdown_files((*names, folder))

    def memories(self) -> Iterator[MemoryDump]:
        seen: dict[tuple[str, str], str] = {}
        for names in self.memory_files():
            shown = _shown(names)
            try:
                front = MemoryFile.model_validate(self.front_matter(names, self.text(names)))
            except ValidationError as exc:
                raise InvalidArgument(f"{shown}: {_describe(exc)}") from None
            owner_id = validate_id(front.owner_id, "owner_id")
            key = validate_id(front.key, "key")
            expected = memory_uri(front.scope, owner_id, front.category, key)
            if SCOPES[front.category] != front.scope or front.uri != expected:
                raise InvalidArgument(
                    f"{shown}: uri {front.uri[:120]!r} is not the one its scope, owner_id, category and key "
                    f"make ({expected[:120]!r})"
                )
            account_id = validate_id(front.account_id, "account_id")
            if (account_id, front.uri) in seen:
                raise InvalidArgument(
                    f"{shown} and {seen[account_id, front.uri]} are the same memory ({front.uri}); "
                    "an export holds each memory once"
                )
            seen[account_id, front.uri] = shown
            values = front.model_dump(exclude={"account_id", "source"}) | self.times(
                names, front, "created_at", "updated_at"
            )
            yield MemoryDump(account_id=account_id, memory=StoredMemory(**values), source=front.source)

    def front_matter(self, names: tuple[str, ...], text: str) -> dict[str, Any]:
        end = text.find("\n---", 3)
        if not text.startswith("---\n") or end < 0:
            raise InvalidArgument(f"{_shown(names)} has no front matter (--- ... ---)")
        found: dict[str, Any] = {}
        for line in text[4:end].split("\n"):
            if not line.strip():
                continue
            name, _, value = line.partition(": ")
            try:
                found[name.strip()] = json.loads(value)
            except ValueError:
                raise InvalidArgument(f"{_shown(names)}: {name.strip()[:40]} is not a JSON value") from None
        return found

    def context_usage(self) -> Iterator[ContextUsage]:
        for where, line in self.lines(ContextUsageLine, (files.CONTEXT_USAGE,)):
            last_used_at = self.time(where, "last_used_at", line.last_used_at) if line.last_used_at else None
            yield ContextUsage(validate_id(line.account_id, "account_id"), line.uri, line.active_count, last_used_at)


def import_tree(engine: Engine, directory: str | os.PathLike[str], replace: bool = False) -> TransferResult:
    """Restore an export into this store, all of it or nothing.

    Sessions, tasks and memories that already exist are ALREADY_EXISTS unless `replace`;
    context-usage counts add up to what is here (with `replace`, the export's win)."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise NotFound(f"{root} is not a directory; give the folder `viking-mcp export` wrote")
    folder = _Folder(root)
    records = _FileRecords(folder, engine.tokens)
    if not records.exists((files.MANIFEST,)):
        raise FailedPrecondition(
            f"{root} has no {files.MANIFEST}: it is not a viking-mcp export, or its export did not finish"
        )
    manifest = records.model(Manifest, (files.MANIFEST,))
    if manifest.format_version > files.FORMAT_VERSION:
        raise FailedPrecondition(
            f"{root} is export format {manifest.format_version}, newer than this viking-mcp reads "
            f"({files.FORMAT_VERSION}); upgrade viking-mcp"
        )
    if manifest.format_version != files.FORMAT_VERSION:
        raise InvalidArgument(
            f"{files.MANIFEST}: format_version {manifest.format_version} is not one this viking-mcp reads "
            f"({files.FORMAT_VERSION})"
        )
    try:
        tree = records.read()  # every file, before the store's write lock is taken
    except OSError as exc:
        raise _io_error(exc, "read") from exc
    counts = engine.store.import_tree(tree, replace, utc_now())
    return TransferResult(directory=str(root), **asdict(counts))
