"""What the data-set converters share: reading annotation tables, checking images, writing SOP-style lists.

Each converter (prepare_cub200.py, prepare_cars196.py, prepare_inshop.py) reads an official release where it was
unpacked and writes list files into that same directory, in the format of Stanford Online Products'
`Ebay_train.txt` (header `image_id class_id super_class_id path`, paths relative to the directory), so every script
takes it with `--data_dir=<that directory>`. No image is copied or changed.
"""
import argparse
import collections
import os

import reader
import utility

ListEntry = collections.namedtuple("ListEntry", "image_id class_id super_class_id path source")


class DatasetError(Exception):
    """The release is not laid out as expected; the message names the file (and line) at fault."""


def read_table(path, num_fields, skip_lines=0):
    """Yields (line number, fields) of a whitespace-separated annotation file, blank lines skipped."""
    try:
        with open(path, encoding="utf-8") as table:
            lines = table.read().splitlines()
    except OSError as error:
        raise DatasetError("%s: cannot read: %s" % (path, error.strerror)) from None
    for line_number, line in enumerate(lines[skip_lines:], start=skip_lines + 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != num_fields:
            raise DatasetError("%s:%d: expected %d fields, got %d: %r"
                               % (path, line_number, num_fields, len(fields), line.strip()))
        yield line_number, fields


def parse_int(path, line_number, text):
    try:
        return int(text)
    except ValueError:
        raise DatasetError("%s:%d: expected an integer, got %r" % (path, line_number, text)) from None


def check_images(data_dir, entries, description):
    """Fails naming the first missing image (and where it was listed) when any listed image is not a file."""
    missing = []
    with utility.progress_bar(len(entries), description) as bar:
        for entry in entries:
            if not os.path.isfile(os.path.join(data_dir, entry.path)):
                missing.append(entry)
            bar.update(1)
    if missing:
        raise DatasetError("%d of %d listed images are missing under %s, the first: %s (listed at %s)"
                           % (len(missing), len(entries), data_dir, missing[0].path, missing[0].source))


def write_list(path, entries):
    """Writes one list file with the SOP header, through a temporary file renamed into place."""
    with open(path + ".writing", "w") as list_file:
        list_file.write(" ".join(reader.LIST_HEADER) + "\n")
        for entry in entries:
            list_file.write("%d %d %d %s\n" % (entry.image_id, entry.class_id, entry.super_class_id, entry.path))
    os.replace(path + ".writing", path)


def summary(name, entries):
    classes = {entry.class_id for entry in entries}
    return "%s: %d images of %d classes (class_id %d-%d)" % (name, len(entries), len(classes), min(classes),
                                                             max(classes))


def write_lists(data_dir, lists):
    """Checks every image of `lists` ({file name: entries}), then writes the files; returns one summary line each."""
    for name, entries in lists.items():
        if not entries:
            raise DatasetError("%s would be empty: no image of %s falls in its split" % (name, data_dir))
    everything = [entry for entries in lists.values() for entry in entries]
    for entry in everything:
        if len(entry.path.split()) != 1:  # list lines are split on whitespace
            raise DatasetError("%s: the image path %r contains whitespace, which the list format cannot hold"
                               % (entry.source, entry.path))
    check_images(data_dir, list({entry.path: entry for entry in everything}.values()), "checking images")
    for name, entries in lists.items():
        write_list(os.path.join(data_dir, name), entries)
    return [summary(name, entries) for name, entries in lists.items()]


def converter_parser(description, flags=()):
    """The converters' command line: `--data_dir` is the unpacked release; `flags` (utility.Flag) are the converter's
    own, passed to it by name."""
    parser = utility.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="Directory the official release was unpacked to; the "
                        "list files are written there.")
    parser.add_flags(flags)
    return parser


def run(convert, parser, argv):
    """Runs a converter with the command line `argv` parsed by `parser` (a `converter_parser`).

    A flag error exits with code 2, a release not laid out as expected with code 1; both print one line.
    """
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data_dir):
        utility.flag_error("data_dir", "%s is not a directory" % args.data_dir)
    with utility.exit_on(DatasetError):
        lines = convert(args.data_dir, **{name: getattr(args, name) for name in parser.flags})
    for line in lines:
        utility.log(line)
    return lines
