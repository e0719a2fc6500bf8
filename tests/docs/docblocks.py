"""The code of the documentation: fenced blocks of docs/*.md and the example programs.

A small reader of the documentation conventions (docs/conf.py builds the site; the
conventions are in the docstring of ``test_docs_examples``): it finds the fenced
blocks of every page, the ``literalinclude`` of every page (MyST fences and reST
directives), the ``text`` block shown after an included program, and sorts the
programs of docs/examples into servers, clients and the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_RST_INCLUDE = re.compile(r"^\s*\.\.\s+literalinclude::\s+(?P<target>\S+)\s*$")
# Directives whose content is code, not Markdown that could hold further fences.
_CODE_DIRECTIVES = {"{code-block}", "{code}", "{sourcecode}", "{literalinclude}", "{toctree}"}

PORT_LINE = re.compile(r"^PORT = \d+$", re.MULTILINE)
SOCKET_PATH_LINE = re.compile(r"^SOCKET_PATH = \"[^\"]*\"$", re.MULTILINE)
_SERVER_IMPORT = re.compile(r"^from (?P<family>\w+)_server import ", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    info: str  # the fence's info string: "text", "{literalinclude} examples/x.py"
    text: str  # the content, without the fences and the fence's indentation

    @property
    def kind(self) -> str:
        """The first word of the info string: ``pycon``, ``{literalinclude}``..."""
        words = self.info.split(maxsplit=1)
        return words[0].lower() if words else ""

    @property
    def argument(self) -> str:
        """What follows the kind on the fence line (a directive's argument)."""
        words = self.info.split(maxsplit=1)
        return words[1].strip() if len(words) > 1 else ""

    @property
    def where(self) -> str:
        """``page.md:LINE``, to name the block in a test id or a failure."""
        return f"{self.page.relative_to(DOCS)}:{self.line}"


def _is_closing(line: str, fence: str) -> bool:
    stripped = line.strip()
    return (
        len(stripped) >= len(fence)
        and set(stripped) == {fence[0]}
        and stripped.startswith(fence[0] * len(fence))
    )


def _dedent(line: str, indent: int) -> str:
    prefix = len(line) - len(line.lstrip(" "))
    return line[min(prefix, indent) :]


def parse_blocks(page: Path, lines: list[str], first_line: int = 1) -> list[Block]:
    """The fenced blocks of ``lines`` (page lines from ``first_line``), nested ones included.

    A fence is three or more backticks or tildes; it closes on a line of at least as
    many of the same character.  The content of a MyST directive that holds Markdown
    (``{note}``, ``{admonition}``...) is searched for further blocks.
    """
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening or (opening["fence"][0] == "`" and "`" in opening["info"]):
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"].expandtabs())
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and not _is_closing(lines[index], fence):
            body.append(_dedent(lines[index], indent))
            index += 1
        index += 1  # past the closing fence (or the end of the page)
        block = Block(page, first_line + start, opening["info"].strip(), "\n".join(body))
        blocks.append(block)
        if block.kind.startswith("{") and block.kind not in _CODE_DIRECTIVES:
            blocks.extend(parse_blocks(page, body, first_line + start + 1))
    return sorted(blocks, key=lambda b: b.line)


def pages() -> list[Path]:
    """Every Markdown page of the documentation."""
    return sorted(DOCS.glob("*.md"))


def blocks(kind: str | None = None) -> list[Block]:
    """The fenced blocks of every page, of one kind if ``kind`` is given."""
    found = [b for page in pages() for b in parse_blocks(page, page.read_text().splitlines())]
    return [b for b in found if kind is None or b.kind == kind]


@dataclass(frozen=True)
class Include:
    """One ``literalinclude`` of a page, and the ``text`` block shown right after it."""

    page: Path
    line: int
    target: str  # as written, relative to the page
    output: Block | None

    @property
    def path(self) -> Path:
        return (self.page.parent / self.target).resolve()

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(DOCS)}:{self.line}"


def includes() -> list[Include]:
    """Every ``literalinclude`` of the documentation (Markdown pages and reST files)."""
    found = []
    for page in pages():
        page_blocks = parse_blocks(page, page.read_text().splitlines())
        for position, block in enumerate(page_blocks):
            if block.kind != "{literalinclude}":
                continue
            following = page_blocks[position + 1 : position + 2]
            output = following[0] if following and following[0].kind == "text" else None
            found.append(Include(page, block.line, block.argument, output))
    for page in sorted(DOCS.glob("*.rst")):
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            match = _RST_INCLUDE.match(line)
            if match:
                found.append(Include(page, number, match["target"], None))
    return found


# -- example programs ------------------------------------------------------------------------


def example_programs() -> list[Path]:
    """The Python programs of docs/examples."""
    return sorted(EXAMPLES.glob("*.py"))


def is_client(program: Path) -> bool:
    """A client is ``NAME_client.py``, run against ``NAME_server.py``."""
    return program.name.endswith("_client.py")


def is_server(program: Path) -> bool:
    """A server has a ``PORT = <int>`` or ``SOCKET_PATH = "..."`` line and is no client."""
    text = program.read_text()
    return not is_client(program) and bool(PORT_LINE.search(text) or SOCKET_PATH_LINE.search(text))


def client_for(server: Path) -> Path | None:
    """The client that exercises ``server``.

    ``NAME_client.py`` for ``NAME_server.py``; failing that, a server that imports
    its handler ``from OTHER_server import ...`` speaks the same protocol and is
    exercised by ``OTHER_client.py``.
    """
    own = server.with_name(server.name.removesuffix("_server.py") + "_client.py")
    if server.name.endswith("_server.py") and own.is_file():
        return own
    for match in _SERVER_IMPORT.finditer(server.read_text()):
        borrowed = server.with_name(f"{match['family']}_client.py")
        if borrowed.is_file():
            return borrowed
    return None


def expected_outputs(program: Path) -> list[Include]:
    """The inclusions of ``program`` that a ``text`` block follows: its output, as shown."""
    return [inc for inc in includes() if inc.path == program.resolve() and inc.output]
