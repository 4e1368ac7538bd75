"""The list parser under fuzzing: whatever the bytes, a correct parse or a ListFormatError naming file and line.

Three angles: lists generated from known records and rendered with the variations real files have (BOM, CRLF,
blank lines, tabs) must parse back to exactly those records; the same lists with one line broken must fail naming
that line; and arbitrary bytes, or lists spliced from awkward tokens, must never crash nor parse into records their
lines do not say.
"""
import os
import re

import pytest
from hypothesis import example, given, settings, strategies as st

import reader

HEADER = "image_id class_id super_class_id path"
DATA_ROOT = "/data"
FUZZ = settings(max_examples=100, deadline=None)


@pytest.fixture(scope="module")
def list_path(tmp_path_factory):
    return str(tmp_path_factory.mktemp("lists") / "Ebay_train.txt")


def parse(list_path, raw):
    with open(list_path, "wb") as list_file:
        list_file.write(raw)
    return reader.read_image_list(list_path, DATA_ROOT)


def assert_names_a_line(error, list_path, raw):
    """The message is one line, `file:line: problem`, with a line the file has."""
    message = str(error)
    match = re.match(re.escape(list_path) + r":(\d+): \S", message)
    assert match, message
    assert 1 <= int(match.group(1)) <= raw.count(b"\n") + 1, message
    assert "\n" not in message
    return int(match.group(1))


# ---------------------------------------------------------------- generated lists with known records

paths = st.from_regex(r"[a-z]{1,6}_final/[A-Za-z0-9_][A-Za-z0-9_.]{0,10}", fullmatch=True)
records = st.lists(st.integers(1, 10 ** 7), min_size=1, max_size=15, unique=True).flatmap(
    lambda image_ids: st.tuples(st.just(image_ids),
                                st.lists(st.tuples(st.integers(1, 23000), st.integers(1, 12), paths),
                                         min_size=len(image_ids), max_size=len(image_ids))))
layouts = st.fixed_dictionaries({
    "bom": st.booleans(),
    "newline": st.sampled_from(["\n", "\r\n"]),
    "separators": st.lists(st.sampled_from([" ", "\t", "  ", " \t "]), min_size=1),
    "blank_lines": st.lists(st.tuples(st.integers(0, 16), st.sampled_from(["", " ", "\t", "  \t"]))),
    "indent": st.sampled_from(["", " ", "\t"]),
    "final_newline": st.booleans(),
})


def render(header, rows, layout):
    """Writes a header and rows of fields as a list file would hold them; returns its bytes and each one's line."""
    separators = layout["separators"]
    lines, row_lines = [], []
    blanks = sorted(layout["blank_lines"])
    for index, fields in enumerate([header.split()] + rows):
        lines.extend(blank for position, blank in blanks if position == index)
        text = fields[0] + "".join(separators[i % len(separators)] + field for i, field in enumerate(fields[1:]))
        lines.append(layout["indent"] + text)
        row_lines.append(len(lines))
    lines.extend(blank for position, blank in blanks if position > len(rows))
    text = layout["newline"].join(lines) + (layout["newline"] if layout["final_newline"] else "")
    return (("\ufeff" if layout["bom"] else "") + text).encode("utf-8"), row_lines


def rows_of(image_ids, others):
    return [[str(image_id), str(class_id), str(super_id), path]
            for image_id, (class_id, super_id, path) in zip(image_ids, others)]


@FUZZ
@given(records, layouts)
def test_generated_lists_parse_back_to_their_records(list_path, records, layout):
    image_ids, others = records
    raw, _ = render(HEADER, rows_of(image_ids, others), layout)
    parsed = parse(list_path, raw)
    assert parsed.image_ids.tolist() == image_ids
    assert parsed.class_ids.tolist() == [class_id for class_id, _, _ in others]
    assert parsed.super_class_ids.tolist() == [super_id for _, super_id, _ in others]
    assert parsed.paths == [os.path.join(DATA_ROOT, path) for _, _, path in others]


def break_row(rows, index, breakage):
    """Applies one kind of damage to rows[index]; returns the words the error must contain."""
    row = rows[index]
    if breakage == "missing field":
        del row[2]
        return "expected 4 fields"
    if breakage == "extra field":
        row.append("extra")
        return "expected 4 fields"
    if breakage.startswith("id "):
        row[index % 3] = breakage[3:]
        return "must be integers"
    if breakage == "zero id":
        row[index % 3] = "0"
        return "1-based"
    if breakage == "duplicate image id":
        row[0] = rows[index - 1][0]
        return "repeats line"
    if breakage.startswith("path "):
        row[3] = breakage[5:]
        return "control character" if re.search(r"[\x00-\x1f]", row[3]) else "data root"
    raise AssertionError(breakage)


BREAKAGES = ["missing field", "extra field", "zero id", "duplicate image id", "id x", "id 1.5", "id +1", "id 1_0",
             "id -3", "id 0x1", "id \u0661", "id \uff11", "id 1e3", "path a_final/x\x0cy.jpg", "path a\x00.jpg",
             "path a_final/\x0bb.jpg", "path ../outside.jpg", "path /etc/passwd", "path a_final/../../x.jpg", "path ."]


@FUZZ
@given(records, layouts, st.sampled_from(BREAKAGES), st.data())
def test_a_broken_line_is_named(list_path, records, layout, breakage, data):
    image_ids, others = records
    rows = rows_of(image_ids, others)
    first = 1 if breakage == "duplicate image id" else 0
    if len(rows) <= first:
        rows = rows + rows_of([max(image_ids) + 1], others[:1])
    index = data.draw(st.integers(first, len(rows) - 1))
    words = break_row(rows, index, breakage)
    raw, row_lines = render(HEADER, rows, layout)
    with pytest.raises(reader.ListFormatError) as caught:
        parse(list_path, raw)
    assert assert_names_a_line(caught.value, list_path, raw) == row_lines[1 + index]
    assert words in str(caught.value)


@FUZZ
@given(records, layouts, st.sampled_from(["", "image_id class_id path", "image_id class_id super_class_id path x",
                                          "IMAGE_ID class_id super_class_id path", "1 1 1 a_final/x.jpg"]))
def test_a_missing_or_wrong_header_is_named(list_path, records, layout, header):
    raw, row_lines = render(header or "1 1 1 a_final/first.jpg", rows_of(*records), layout)
    with pytest.raises(reader.ListFormatError) as caught:
        parse(list_path, raw)
    assert assert_names_a_line(caught.value, list_path, raw) == row_lines[0]
    assert "expected the header" in str(caught.value)


# ---------------------------------------------------------------- arbitrary bytes

def what_the_lines_say(raw):
    """The records a parsed list must hold: one per non-blank line after the header, its fields verbatim."""
    lines = [line[:-1] if line.endswith("\r") else line for line in raw.decode("utf-8-sig").split("\n")]
    rows = [re.split(r"[ \t]+", line.strip(" \t")) for line in lines if line.strip(" \t")]
    return rows[1:]


def check_any_outcome(list_path, raw):
    try:
        parsed = parse(list_path, raw)
    except reader.ListFormatError as error:
        assert_names_a_line(error, list_path, raw)
        return
    rows = what_the_lines_say(raw)
    assert len(rows) == len(parsed.paths)
    for row, image_id, class_id, super_id, path in zip(rows, parsed.image_ids, parsed.class_ids,
                                                       parsed.super_class_ids, parsed.paths):
        assert [int(field) for field in row[:3]] == [image_id, class_id, super_id]
        assert all(field.isascii() and field.isdigit() for field in row[:3])
        assert path == os.path.join(DATA_ROOT, os.path.normpath(row[3]))
        assert path.startswith(DATA_ROOT + os.sep) and not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", path)
    assert len(set(parsed.image_ids.tolist())) == len(parsed.image_ids)


@FUZZ
@given(st.binary(max_size=300), st.booleans())
@example(b"", False)
@example(b"\xef\xbb\xbf", False)
@example(b"\n\n \t\n", False)
@example(b"\r\n", True)
@example(HEADER.encode("utf-16"), False)
@example(b"1 1 1 a.jpg\xff\n", True)
def test_any_bytes_parse_or_fail_naming_a_line(list_path, tail, with_header):
    check_any_outcome(list_path, (HEADER + "\n").encode() * with_header + tail)


TOKENS = [b"1", b"2", b"17", b"0", b"-1", b"+1", b"1_0", "\u0661".encode(), b" ", b"\t", b"\r", b"\n", b"\r\n",
          b"\x0b", b"\x0c", b"\x00", b"\x1c", "\u00a0".encode(), "\u2028".encode(), "\u0085".encode(), b"\xef\xbb\xbf",
          b"\xff", b"a_final/x.jpg", b"b_final/y.JPG", b"..", b"/", b".", b"path", b"image_id", b"class_id",
          b"super_class_id"]


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_lists_spliced_from_awkward_tokens_parse_or_fail_naming_a_line(list_path, tokens):
    check_any_outcome(list_path, (HEADER + "\n").encode() + b"".join(tokens))
