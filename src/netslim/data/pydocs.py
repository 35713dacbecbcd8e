"""The Python documentation sources as a text corpus (Debian ``python3.11-doc``).

The corpus is every ``**/*.rst.txt`` file under ``/usr/share/doc/python3.11/html/_sources``
(or under the folder named by ``NETSLIM_TEXT``). It is English prose mixed with code and
reStructuredText markup: a fair stand-in for what small instruction-tuned LMs see.

Splits. Each file belongs to exactly one split, decided by the SHA-1 of its path relative
to the root (POSIX separators): the first 8 hex digits as an integer, modulo 100, map
``[0, 80)`` to "calibration", ``[80, 90)`` to "validation" and ``[90, 100)`` to "test".
Hashing the path (not the position in a listing) keeps a file in its split when other
files are added or removed, and on every machine; splitting by file, not by block, keeps
text of one document out of two splits. "calibration" is also the training split.

Nothing here is cached on disk: the corpus is ~12 MB and tokenises in seconds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from netslim.core.errors import NetslimError, bad_param, unknown_name
from netslim.data import files

DEFAULT_ROOT = "/usr/share/doc/python3.11/html/_sources"
ENV_VAR = "NETSLIM_TEXT"
PATTERN = "**/*.rst.txt"
SPLITS = ("calibration", "validation", "test")
_FROM_HASH_SPLIT = dict(zip(files.SPLITS, SPLITS))  # the hash rule's 80 / 10 / 10 buckets, named here


# --------------------------------------------------------------------------- files
def corpus_root(root: str | os.PathLike | None = None) -> Path:
    """The corpus folder: ``root``, else ``$NETSLIM_TEXT``, else the Debian default."""
    path = Path(root if root is not None else os.environ.get(ENV_VAR, DEFAULT_ROOT))
    if not path.is_dir():
        raise NetslimError(
            f"Text corpus folder {str(path)!r} not found. Install the Debian package python3.11-doc "
            f"(apt-get install python3.11-doc) or set {ENV_VAR} to a folder of *.rst.txt files."
        )
    return path


def split_of(relpath: str) -> str:
    """The split of a file, from the SHA-1 of its root-relative POSIX path (:func:`files.hash_split`)."""
    return _FROM_HASH_SPLIT[files.hash_split(relpath)]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise unknown_name("text split", split, SPLITS)


def list_files(split: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The files of ``split``, sorted by relative path (a deterministic order)."""
    _check_split(split)
    base = corpus_root(root)
    rel = sorted(p.relative_to(base).as_posix() for p in base.glob(PATTERN) if p.is_file())
    if not rel:
        raise NetslimError(f"Text corpus folder {str(base)!r} holds no {PATTERN} files.")
    return [base / r for r in rel if split_of(r) == split]


def read_text(path: str | os.PathLike) -> str:
    # A stray undecodable byte must not stop an evaluation: replace it.
    return Path(path).read_text(encoding="utf-8", errors="replace")


# ---------------------------------------------------------------------- token blocks
def token_blocks(
    tokenizer: Any,
    split: str,
    *,
    seq_len: int = 512,
    num_blocks: int | None = None,
    root: str | os.PathLike | None = None,
) -> torch.Tensor:
    """Documents of ``split`` joined with EOS and cut into ``(N, seq_len)`` int64 blocks.

    The tail shorter than ``seq_len`` is dropped. ``num_blocks`` keeps the first N blocks
    (and stops tokenising once they are full).
    """
    _check_split(split)
    if not isinstance(seq_len, int) or seq_len < 2:
        raise bad_param("token_blocks", "seq_len", "an int >= 2", seq_len)
    if num_blocks is not None and (not isinstance(num_blocks, int) or num_blocks < 1):
        raise bad_param("token_blocks", "num_blocks", "None or an int >= 1", num_blocks)
    documents = (read_text(p) for p in list_files(split, root))
    return files.token_blocks(
        tokenizer, documents, seq_len=seq_len, num_blocks=num_blocks, what=f"Text split {split!r}"
    )


# ------------------------------------------------------------------------ sentences
# Directives whose indented body is code or markup, not prose.
_CODE_DIRECTIVES = {
    "code-block",
    "code",
    "sourcecode",
    "doctest",
    "testcode",
    "testoutput",
    "testsetup",
    "productionlist",
    "literalinclude",
    "highlight",
    "csv-table",
    "list-table",
    "table",
    "toctree",
    "index",
    "raw",
    "include",
    "only",
    "impl-detail",
    "audit-event-table",
}
_ROLE = re.compile(r":[\w:.+-]+:`([^`]*)`")
_LINK = re.compile(r"`([^`<]*?)\s*<[^>]*>`_{1,2}")
_TITLE_TARGET = re.compile(r"^(.*?)\s*<[^>]*>$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+<>_:.])\1{2,}\s*$")


def _clean_inline(text: str) -> str:
    """Plain text of one paragraph: roles, links, literals and emphasis unwrapped."""

    def role(m: re.Match) -> str:
        inner = m.group(1).lstrip("!")
        t = _TITLE_TARGET.match(inner)
        if t:
            return t.group(1)
        return inner[1:].rsplit(".", 1)[-1] if inner.startswith("~") else inner  # "~a.b" shows as "b"

    text = _ROLE.sub(role, text)
    text = _LINK.sub(r"\1", text)
    text = re.sub(r"\[#?[\w-]*\]_", "", text)  # footnote references
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`]+)`_{0,2}", r"\1", text)
    text = re.sub(r"\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*", lambda m: m.group(1) or m.group(2), text)
    text = text.replace("\\ ", "").replace("\\", "")
    return re.sub(r"\s+", " ", text).strip()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _prose_paragraphs(text: str) -> Iterator[str]:
    """Paragraphs of running text: no code blocks, directives, tables, headings or lists of options."""
    skip_deeper_than: int | None = None  # body of a literal block or code directive
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [ln.expandtabs() for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        indent = _indent(lines[0])
        if skip_deeper_than is not None:
            if indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        first = lines[0].strip()
        if first.startswith(".. "):
            name = first[3:].split("::", 1)[0].strip()
            if "::" in first and name in _CODE_DIRECTIVES:
                skip_deeper_than = indent
            continue
        if lines[-1].rstrip().endswith("::"):
            skip_deeper_than = indent  # "Example::" introduces an indented literal block
        if any(_UNDERLINE.match(ln.strip()) for ln in lines) or first.startswith((">>>", "|", "+-", ":", "$ ")):
            continue
        if len({_indent(ln) for ln in lines}) > 1 and not first.startswith(("* ", "- ")):
            continue  # definition lists and hanging code: not one paragraph of prose
        yield _clean_inline(" ".join(ln.strip() for ln in lines).lstrip("*- ").removesuffix("::") + ".")


def sentences(
    split: str,
    *,
    min_chars: int = 40,
    max_chars: int = 300,
    limit: int | None = None,
    root: str | os.PathLike | None = None,
) -> list[str]:
    """Distinct English sentences of ``split``, in corpus order (deterministic).

    A sentence qualifies if it has ``min_chars..max_chars`` characters, at least six words,
    starts with a capital letter and is mostly letters (so code fragments that slipped past
    the markup filter are dropped). ``limit`` keeps the first N.
    """
    _check_split(split)
    if not 0 < min_chars <= max_chars:
        raise bad_param("sentences", "min_chars", f"an int in [1, max_chars={max_chars}]", min_chars)
    out: list[str] = []
    seen: set[str] = set()
    for path in list_files(split, root):
        for para in _prose_paragraphs(read_text(path)):
            for s in _SENTENCE_END.split(para):
                s = s.rstrip(".") + "." if s.endswith("..") else s
                if not _is_sentence(s, min_chars, max_chars) or s in seen:
                    continue
                seen.add(s)
                out.append(s)
                if limit is not None and len(out) >= limit:
                    return out
    return out


def _is_sentence(s: str, min_chars: int, max_chars: int) -> bool:
    if not (min_chars <= len(s) <= max_chars) or not s[0].isupper() or s[-1] not in ".?!":
        return False
    letters = sum(c.isalpha() or c == " " for c in s)
    return len(s.split()) >= 6 and letters >= 0.85 * len(s)
