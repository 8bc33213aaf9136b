"""Token text a person can read: byte pieces grouped into whole characters, cuts made between characters.

A byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) or a SentencePiece byte fallback (`<0xE6>` pieces) splits one
character over several tokens, and each of those tokens decoded alone reads `�`. `token_texts` gives every token
its share of the text instead: consecutive tokens' bytes are grouped until they form whole UTF-8 characters
(`glyph_shares`, a pure function of the bytes), and within a group each character is shown on the token that holds
its first byte. A token that holds only the rest of a character gets the empty text; where tokens are drawn one by
one, it is shown as `CONTINUATION` (`⋯`), so `温` split over three tokens reads `温` `⋯` `⋯`: the character once,
the three token boundaries kept.

`whole_text` decodes a run of ids and drops the partial characters a cut (truncation) leaves at either end;
`clip_start`/`clip_end` shorten display text with `…` at a character boundary, never inside an accent, an emoji
sequence or a flag.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CONTINUATION",
    "TokenText",
    "clip_end",
    "clip_start",
    "glyph_shares",
    "shown_alone",
    "token_pieces",
    "token_texts",
    "visible",
    "whole_text",
]

#: How a token that holds only the rest of a character is drawn where tokens are shown one by one.
CONTINUATION = "⋯"
#: Shown under a combining mark that starts a token, as type specimens do, so the mark has something to sit on.
_BASE = "◌"
_ZWJ = "\u200d"
# Bidi embeddings, overrides and isolates: they reorder the text around them, so token text shows them as escapes.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))
_CONTINUATION_SINGLES = frozenset(bytes([b]) for b in _CONTINUATION_BYTES)
#: The tokens read by their bytes at each end of a cut run: enough for a character of four one-byte tokens.
_EDGE = 8
_HEX_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class TokenText:
    """One token's share of the text.

    `text`: the characters whose first byte the token holds ("" when it holds only the rest of one); `group`: the
    whole text of the tokens whose bytes make up those characters together; `part` of `parts`: the token's place
    in that group (`1` of `1` for a token that holds whole characters alone).
    """

    text: str
    group: str
    part: int = 1
    parts: int = 1

    @property
    def continues(self) -> bool:
        """True for a token that holds only the rest of a character started by an earlier token."""
        return self.parts > 1 and not self.text


def _is_continuation_byte(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def _close(pieces: Sequence[bytes]) -> list[TokenText]:
    """The shares of one group of byte pieces (whole characters, or a run cut short by its end)."""
    data = b"".join(pieces)
    # Where each token's first character starts: the first byte in its range that is not a continuation byte.
    firsts: list[int | None] = []
    offset = 0
    for piece in pieces:
        first = next(
            (offset + k for k in range(len(piece)) if offset + k == 0 or not _is_continuation_byte(piece[k])), None
        )
        firsts.append(first)
        offset += len(piece)
    group = data.decode("utf-8", "replace")
    out = []
    for j, first in enumerate(firsts):
        if first is None:
            text = ""
        else:
            end = next((f for f in firsts[j + 1 :] if f is not None), len(data))
            text = data[first:end].decode("utf-8", "replace")
        out.append(TokenText(text, group, j + 1, len(pieces)))
    return out


def glyph_shares(pieces: Sequence[bytes | str]) -> list[TokenText]:
    """Each token's share of the text, from each token's bytes (a `str` for a token shown as-is: a special token).

    Consecutive byte pieces are grouped until the group ends on a character boundary (bytes that can never be valid
    UTF-8 end a group too, shown as `�`). A `str` piece stands alone and ends the group before it; a group the
    pieces end in the middle of a character shows the partial character as `�`.
    """
    out: list[TokenText] = []
    group: list[bytes] = []
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    for piece in pieces:
        if isinstance(piece, str):
            if group:
                out += _close(group)
                group, decoder = [], codecs.getincrementaldecoder("utf-8")("replace")
            out.append(TokenText(piece, piece))
            continue
        group.append(bytes(piece))
        decoder.decode(piece)
        if not decoder.getstate()[0]:  # nothing pending: the group ends on a character boundary
            out += _close(group)
            group = []
    if group:
        out += _close(group)
    return out


def _byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): the printable character that stands for each of the 256 bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTE_LEVEL = _byte_decoder()


def _bytes_of(token: str, alone: str) -> bytes:
    """The bytes a token stands for: read from its vocabulary string (a `<0xE6>` byte piece, a byte-level BPE
    string, a SentencePiece `▁` word), trusted only when it decodes to what the tokenizer decodes the token to alone;
    else the tokenizer's own text of it."""
    candidates = []
    if match := _HEX_BYTE.fullmatch(token):
        candidates.append(bytes([int(match.group(1), 16)]))
    if token and all(ch in _BYTE_LEVEL for ch in token):
        candidates.append(bytes(_BYTE_LEVEL[ch] for ch in token))
    candidates.append(token.replace("▁", " ").encode("utf-8"))
    for candidate in candidates:
        text = candidate.decode("utf-8", "replace")
        if text == alone or text.lstrip(" ") == alone:  # SentencePiece drops a leading space decoded alone
            return candidate
    return alone.encode("utf-8")


def token_pieces(tokenizer, ids: Sequence[int], special: set[int] | frozenset[int] = frozenset()) -> list[bytes | str]:
    """Each token's bytes; the vocabulary string (`str`) of a token in `special`, shown as it is."""
    ids = [int(i) for i in ids]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    alone = tokenizer.batch_decode([[i] for i in ids]) if ids else []
    return [
        str(token) if i in special or token is None else _bytes_of(token, text)
        for i, token, text in zip(ids, tokens, alone, strict=True)
    ]


def token_texts(tokenizer, ids: Sequence[int], special: set[int] | frozenset[int] = frozenset()) -> list[TokenText]:
    """Each token's share of the text of `ids` (see `glyph_shares`); tokens in `special` show their vocabulary
    string (`<|im_end|>`)."""
    return glyph_shares(token_pieces(tokenizer, ids, special))


def _partial_end(data: bytes) -> int:
    """How many bytes at the end of `data` start a character that `data` does not finish."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if not _is_continuation_byte(byte):
            need = 2 if 0xC2 <= byte <= 0xDF else 3 if 0xE0 <= byte <= 0xEF else 4 if 0xF0 <= byte <= 0xF4 else 1
            return back if back < need else 0
    return 0


def _whole(data: bytes) -> str:
    """`data` without the continuation bytes it starts with and the character it starts but does not end."""
    data = data.lstrip(_CONTINUATION_BYTES)
    return data[: len(data) - _partial_end(data)].decode("utf-8", "replace")


def whole_text(tokenizer, ids: Sequence[int]) -> str:
    """`tokenizer.decode(ids)` without the partial characters a cut (truncation) leaves at either end: the `�` of
    half a `温`. The tokens of a cut character are read by their bytes (a SentencePiece byte fallback would garble
    the whole characters beside them too), the rest decoded by the tokenizer."""
    ids = [int(i) for i in ids]
    special = set(getattr(tokenizer, "all_special_ids", ()))
    front, back = token_pieces(tokenizer, ids[:_EDGE], special), token_pieces(tokenizer, ids[-_EDGE:], special)
    head = 0  # leading tokens that start inside a character
    while head < len(front) and isinstance(front[head], bytes) and front[head][:1] in _CONTINUATION_SINGLES:
        head += 1
    tail = 0  # trailing tokens of a character the run does not finish
    while (
        tail < len(back) and isinstance(back[-tail - 1], bytes) and _partial_end(_byte_run(back[: len(back) - tail]))
    ):
        tail += 1
    if not head and not tail:
        return tokenizer.decode(ids)
    if head + tail >= len(ids):  # nothing but pieces of characters (at most 2 × _EDGE tokens): read their bytes
        return _whole(b"".join(p for p in token_pieces(tokenizer, ids, special) if isinstance(p, bytes)))
    start, end = _whole(b"".join(front[:head])), _whole(b"".join(back[len(back) - tail :]))
    return start + tokenizer.decode(ids[head : len(ids) - tail]) + end


def _byte_run(pieces: Sequence[bytes | str]) -> bytes:
    """The bytes of the trailing run of byte pieces: a piece read as text (a special token) ends every character
    before it, so only the pieces after it can hold the start of an unfinished one."""
    run: list[bytes] = []
    for piece in reversed(pieces):
        if not isinstance(piece, bytes):
            break
        run.append(piece)
    return b"".join(reversed(run))


def _starts_character(text: str, i: int) -> bool:
    """Whether a cut before `text[i]` falls between user-perceived characters: not before a combining mark, a
    joiner or what a joiner joins, a variation selector, a skin-tone modifier or emoji tag, nor inside a flag."""
    if i <= 0 or i >= len(text):
        return True
    ch, before = text[i], text[i - 1]
    code = ord(ch)
    if unicodedata.category(ch).startswith("M") or ch == _ZWJ or before == _ZWJ:
        return False
    if (
        0xFE00 <= code <= 0xFE0F
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
    ):
        return False
    if before == "\r" and ch == "\n":
        return False
    if 0x1F1E6 <= code <= 0x1F1FF:  # regional indicators pair up into flags, counted from the run's start
        run = 0
        while i - run - 1 >= 0 and 0x1F1E6 <= ord(text[i - run - 1]) <= 0x1F1FF:
            run += 1
        return run % 2 == 0
    return True


def clip_end(text: str, limit: int, mark: str = "…") -> str:
    """The end of `text`, at most `limit` characters after `mark`, cut at a character boundary (whole when short)."""
    if len(text) <= limit:
        return text
    cut = len(text) - max(0, limit)
    while cut < len(text) and not _starts_character(text, cut):
        cut += 1
    return mark + text[cut:]


def clip_start(text: str, limit: int, mark: str = "…") -> str:
    """The start of `text`, at most `limit` characters before `mark`, cut at a character boundary."""
    if len(text) <= limit:
        return text
    cut = max(0, limit)
    while cut > 0 and not _starts_character(text, cut):
        cut -= 1
    return text[:cut] + mark


def visible(text: str) -> str:
    """Control characters and bidi overrides shown as escapes (`\\x1b`, `\\u202e`), so text from the data can't
    drive a terminal or reorder what surrounds it; newlines and tabs kept."""
    return "".join(
        repr(ch)[1:-1] if (unicodedata.category(ch) == "Cc" and ch not in "\n\t") or ch in _BIDI_CONTROLS else ch
        for ch in text
    )


def shown_alone(text: str) -> str:
    """Token text as drawn on its own (an HTML token box, the start of a terminal span): `visible`, a combining mark
    that starts it set on `◌`, and text made only of invisible format characters (a lone zero-width joiner) shown
    as escapes, so no token is drawn empty."""
    if text and all(unicodedata.category(ch) == "Cf" for ch in text):
        return "".join(f"\\u{ord(ch):04x}" for ch in text)
    text = visible(text)
    if text and unicodedata.category(text[0]).startswith("M"):
        return _BASE + text
    return text
