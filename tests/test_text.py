"""Readable token text: byte pieces grouped into whole characters, on a byte-level BPE and a SentencePiece byte
fallback, and display cuts that never split a character."""

from __future__ import annotations

import pytest

from trl_masked_sft.text import (
    CONTINUATION,
    TokenText,
    clip_end,
    clip_start,
    glyph_shares,
    shown_alone,
    token_texts,
    visible,
    whole_text,
)

#: One sample per script and kind of character that a byte-level tokenizer splits.
SAMPLES = {
    "accents": "Ünïcödé — “quotes”",
    "cjk": "温度是多少？摄氏二十度。",
    "arabic": "مرحبا بالعالم",
    "hebrew": "שלום עולם",
    "emoji": "thumbs 👍🏽 ok",
    "zwj family": "family 👨\u200d👩\u200d👧 here",
    "flags": "flags 🇫🇷🇩🇪🇯🇵",
    "combining": "cafe\u0301 n\u0303o",
}


def test_a_character_split_over_three_tokens_is_shown_once_on_the_first():
    """`温` as three one-byte pieces: the first token shows it, the other two are marked as its continuation."""
    shares = glyph_shares([b"\xe6", b"\xb8", b"\xa9", b"!"])
    assert [s.text for s in shares] == ["温", "", "", "!"]
    assert [(s.part, s.parts, s.group) for s in shares[:3]] == [(1, 3, "温"), (2, 3, "温"), (3, 3, "温")]
    assert [s.continues for s in shares] == [False, True, True, False]


def test_a_token_holding_the_end_of_one_character_and_the_start_of_the_next_shows_the_next():
    """Pieces `e6 b8 | a9 e5 | ba a6` (温度): each character sits on the token holding its first byte."""
    shares = glyph_shares([b"\xe6\xb8", b"\xa9\xe5", b"\xba\xa6"])
    assert [s.text for s in shares] == ["温", "度", ""] and {s.group for s in shares} == {"温度"}


def test_bytes_that_can_never_be_utf8_and_a_cut_character_show_the_replacement_character():
    """A stray continuation byte stands alone as `�`; a special token ends a half character, which reads `�`."""
    assert [s.text for s in glyph_shares([b"\x80", b"a"])] == ["\ufffd", "a"]
    assert glyph_shares([b"\xe6\xb8", "<|eos|>"]) == [
        TokenText("\ufffd", "\ufffd", 1, 1),
        TokenText("<|eos|>", "<|eos|>"),
    ]
    assert [s.text for s in glyph_shares([b"\xe6", b"\xb8"])] == ["\ufffd", ""]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_byte_level_bpe_tokens_read_as_whole_characters(tokenizer, name):
    """On the byte-level BPE every token's share joins back to the text, with no `�`, while decoding each token
    alone (what the inspector did) shows `�`."""
    text = SAMPLES[name]
    ids = tokenizer(text)["input_ids"]
    shares = token_texts(tokenizer, ids)
    assert "".join(s.text for s in shares) == text
    assert all("\ufffd" not in s.text for s in shares)
    if name not in ("combining",):  # the others all hold characters of several bytes split by this tokenizer
        assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
        assert any(s.continues for s in shares)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sentencepiece_byte_fallback_tokens_read_as_whole_characters(byte_fallback_tokenizer, name):
    """On a SentencePiece byte fallback the `<0xE6>` pieces group into characters; `▁` reads as a space."""
    text = SAMPLES[name]
    ids = byte_fallback_tokenizer(text)["input_ids"]
    shares = token_texts(byte_fallback_tokenizer, ids)
    assert "".join(s.text for s in shares) == " " + text  # the first word's `▁`, which decode strips
    assert all("\ufffd" not in s.text for s in shares)
    assert any(byte_fallback_tokenizer.convert_ids_to_tokens(i).startswith("<0x") for i in ids)


def test_special_tokens_show_their_vocabulary_string(tokenizer):
    """A token in `special` stands alone with its name, e.g. the eos token after CJK text."""
    ids = tokenizer("温度")["input_ids"] + [tokenizer.eos_token_id]
    shares = token_texts(tokenizer, ids, {tokenizer.eos_token_id})
    assert shares[-1].text == "<|eos|>" and "".join(s.text for s in shares[:-1]) == "温度"


def test_whole_text_drops_the_half_characters_a_cut_leaves_at_either_end(tokenizer, byte_fallback_tokenizer):
    """Truncation in the middle of `温` leaves no `�` at the end, nor at the start when the cut is on the left."""
    for tok in (tokenizer, byte_fallback_tokenizer):
        ids = tok("abc温度")["input_ids"]
        assert tok.decode(ids[:-1]).endswith("\ufffd")
        assert whole_text(tok, ids[:-1]).strip() == "abc温"
        assert tok.decode(ids[-2:]).startswith("\ufffd")
        assert "\ufffd" not in whole_text(tok, ids[-2:])
    assert whole_text(tokenizer, tokenizer("a\ufffdb")["input_ids"]) == "a\ufffdb"  # a real U+FFFD stays


def _clusters(text: str) -> list[str]:
    regex = pytest.importorskip("regex")
    return regex.findall(r"\X", text)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_clipping_cuts_between_user_perceived_characters(name):
    """At every limit, `clip_end`/`clip_start` keep whole grapheme clusters (checked against `regex`'s `\\X`):
    never half a flag, an emoji sequence or a letter and its accent."""
    text = SAMPLES[name]
    clusters = _clusters(text)
    suffixes = {"".join(clusters[k:]) for k in range(len(clusters) + 1)}
    prefixes = {"".join(clusters[:k]) for k in range(len(clusters) + 1)}
    for limit in range(len(text) + 1):
        end, start = clip_end(text, limit), clip_start(text, limit)
        assert end.removeprefix("…") in suffixes and len(end.removeprefix("…")) <= limit
        assert start.removesuffix("…") in prefixes and len(start.removesuffix("…")) <= limit
        assert end.startswith("…") == (limit < len(text)) == start.endswith("…")


def test_text_shown_alone_never_hides_a_mark_or_reorders_its_neighbours():
    """A lone combining mark sits on `◌`, a lone joiner shows as an escape, a bidi override can't act."""
    assert shown_alone("\u0301") == "◌\u0301"
    assert shown_alone("\u200d") == "\\u200d"
    assert shown_alone("a\u202eb") == "a\\u202eb" == visible("a\u202eb")
    assert visible("\x1b[31mred\n") == "\\x1b[31mred\n"
    assert CONTINUATION not in "".join(SAMPLES.values())


def test_row_ends_in_collator_and_batch_messages_read_whole_characters(tokenizer):
    """The collator's `Row text (end)` and `validate_batch`'s row ends show a row cut inside `少` as whole
    characters, where decoding it showed `�`."""
    import torch

    from trl_masked_sft import AllMaskedBatchError, DataCollatorForCompletionOnlyLM, MaskedSFTWarning, validate_batch

    ids = tokenizer("温度是多少")["input_ids"][:-1]
    assert tokenizer.decode(ids).endswith("\ufffd")
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tokenizer)
    with pytest.warns(MaskedSFTWarning, match="Row text \\(end\\): '温度是多'"):
        collator([{"input_ids": ids}])
    batch = {"input_ids": torch.tensor([ids]), "labels": torch.full((1, len(ids)), -100)}
    with pytest.raises(AllMaskedBatchError, match="row 0: ...'温度是多'"):
        validate_batch(batch, tokenizer=tokenizer)


def test_whole_text_reads_a_special_token_beside_a_cut_character(tokenizer):
    """A special token (read as its string, not bytes) among the last tokens: the cut character at the end is still
    dropped, the special token kept (TRL's tool-call rows crashed here with a bytes/str TypeError)."""
    ids = tokenizer.encode("hello " + tokenizer.eos_token + " world")
    assert whole_text(tokenizer, ids) == tokenizer.decode(ids)
    cut = tokenizer.encode(tokenizer.eos_token + " 温")[:-1]  # the eos, then the first bytes of 温 only
    text = whole_text(tokenizer, cut)
    assert text.startswith(tokenizer.eos_token) and "\ufffd" not in text


def test_a_fully_masked_row_with_a_special_token_in_its_prompt_is_reported_not_crashed(tokenizer, tmp_path):
    """The audit reads the prompt's end of the first unsupervised rows; a special token there is no crash."""
    from trl_masked_sft import MaskedSFTConfig
    from trl_masked_sft.audit import audit_dataset

    rows = [{"prompt": "tool " + tokenizer.eos_token + " 温" * 40, "completion": " done"}] * 2
    report = audit_dataset(rows, tokenizer, MaskedSFTConfig(output_dir=str(tmp_path), max_length=8))
    assert report.rows == 2 and report.rows_fully_masked == 2 and report.policy_error is not None
