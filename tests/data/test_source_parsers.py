"""Source parsers on tiny hand-made inputs (no network)."""

from __future__ import annotations

import pytest

from fedlora.data.sources import shakespeare, spamassassin, wordnet
from fedlora.errors import DataError

PLAY = """\
A TINY PLAY

PERSONS REPRESENTED.
Ann, a lady.

ACT I.

Scene I. A room.

[Enter Ann and Bob.]

Ann.
One line here,
two lines here,
three lines here,
four lines here.

BOB
First of Bob,
second of Bob,
third of Bob.

[Exit Ann,
with haste.]

Bob talks on alone
and on again
and ends it here.
"""


def test_speech_segments_drop_tags_directions_and_headings() -> None:
    # Execute
    segments = shakespeare.speech_segments(PLAY)
    # Assert
    lines = PLAY.splitlines()
    texts = [seg for _, seg in segments]
    assert texts == [
        ["One line here,", "two lines here,", "three lines here,", "four lines here."],
        ["First of Bob,", "second of Bob,", "third of Bob."],
        ["Bob talks on alone", "and on again", "and ends it here."],
    ]
    for first, seg in segments:
        assert lines[first - 1] == seg[0]


def test_passages_are_non_overlapping_windows_within_speeches() -> None:
    # Execute
    windows = shakespeare.passages(PLAY, context_lines=2)
    # Assert: the four-line speech yields one window, its fourth line is left over
    assert [(ctx, nxt) for _, ctx, nxt in windows] == [
        (["One line here,", "two lines here,"], "three lines here,"),
        (["First of Bob,", "second of Bob,"], "third of Bob."),
        (["Bob talks on alone", "and on again"], "and ends it here."),
    ]


def test_text_without_acts_is_not_a_play() -> None:
    assert shakespeare.speech_segments("SONNET 1\n\nFrom fairest creatures\n") == []


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name + '/':<16}{'0':<12}{'0':<6}{'0':<6}{'100644':<8}{len(data):<10}`\n"
        out += header.encode("ascii") + data + (b"\n" if len(data) % 2 else b"")
    return out


def test_ar_members_reads_odd_and_even_sized_members() -> None:
    # Prepare
    members = {"debian-binary": b"2.0\n", "odd": b"abc", "data.tar.xz": b"xyzw"}
    # Execute / Assert
    assert wordnet.ar_members(_ar(members)) == members
    with pytest.raises(DataError):
        wordnet.ar_members(b"PK\x03\x04")


def test_wordnet_records_from_tiny_database() -> None:
    # Prepare: two synsets for "bank", an untagged word, a multiword lemma
    data_noun = (
        b"  1 licence header\n"
        b'00000030 17 n 01 bank 0 000 | sloping land beside water; "on the bank"\n'
    )
    second = len(data_noun)
    data_noun += b"00000099 17 n 01 bank 1 000 | a financial institution\n"
    index_noun = (
        b"  1 licence header\n"
        + f"bank n 2 1 @ 2 1 {second:08d} 00000030  \n".encode()
        + b"obscure n 1 0 1 0 00000030  \n"
        + b"river_bank n 1 0 1 1 00000030  \n"
    )
    # index offsets point at byte positions: the first listed sense is the financial one
    files = {"index.noun": index_noun, "data.noun": data_noun}
    for short in ("verb", "adj", "adv"):
        files[f"index.{short}"] = b""
        files[f"data.{short}"] = b""
    # Execute
    records = wordnet.records_from_db(files)
    # Assert
    assert records == [
        {"id": "bank.noun", "word": "bank", "pos": "noun", "gloss": "a financial institution"}
    ]


def test_gloss_drops_usage_examples() -> None:
    # Prepare
    data = b'00000000 00 v 01 run 0 000 | move fast by using one\'s feet; "Don\'t run!"; "he ran"\n'
    # Execute / Assert
    assert wordnet.gloss_at(data, 0) == "move fast by using one's feet"


MULTIPART = """\
From: a@example.com
Subject: =?iso-8859-1?q?Caf=E9?= offer
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="XX"

--XX
Content-Type: text/html; charset="us-ascii"

<html><body><p>Buy&nbsp;now</p>
<b>cheap</b></body></html>
--XX--
"""


def test_parse_email_decodes_subject_and_strips_html() -> None:
    # Execute
    subject, body = spamassassin.parse_email(MULTIPART)
    # Assert
    assert subject == "Café offer"
    assert body == "Buy now cheap"  # entities decoded, tags and runs of space collapsed


def test_parse_email_prefers_plain_text_and_caps_length() -> None:
    # Prepare
    raw = "Subject: hi\nContent-Type: text/plain\n\n" + "word " * 500
    # Execute
    subject, body = spamassassin.parse_email(raw)
    # Assert
    assert subject == "hi"
    assert len(body) == spamassassin.BODY_CHARS and body.startswith("word word")


def test_dedupe_keeps_first_of_equal_emails() -> None:
    # Prepare
    a = {"id": "g/1", "label": "ham", "subject": "s", "body": "b"}
    b = {"id": "g/2", "label": "ham", "subject": "s", "body": "b"}
    c = {"id": "g/3", "label": "ham", "subject": "s", "body": "other"}
    # Execute / Assert
    assert spamassassin.dedupe([a, b, c]) == [a, c]
