"""README.md, README_cn.md and docs/*.md against the code: every relative link resolves (file and heading anchor),
every flag they name exists in one of the suite's parsers, and every flag of the main scripts is documented."""
import glob
import os
import re

import pytest

import eval as eval_script
import demo
import export_model
import infer
import search
import train_elem
import train_pair
from bench_tools import ROOT, load_bench
from data import (make_toy_sop, prepare_cars196, prepare_cub200, prepare_folder, prepare_inshop,
                  split_query_gallery)

PAGES = ["README.md", "README_cn.md"] + sorted(os.path.relpath(path, ROOT)
                                               for path in glob.glob(os.path.join(ROOT, "docs", "*.md")))
# Flags of other programs the pages show: Paddle's distributed launcher and VisualDL's server.
FOREIGN_FLAGS = {"--gpus", "--nproc_per_node", "--ips", "--master", "--nnodes", "--logdir", "--port"}
BENCHMARKS = ("amp_recall", "chaos", "eval_speed", "loss_recall", "loss_speed", "reader_throughput", "search_speed",
              "train_throughput")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][A-Za-z0-9_]*")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = ("http://", "https://", "ftp://", "mailto:")


def suite_parsers():
    """{script: parser} of every command the pages can talk about."""
    modules = {"train_elem.py": train_elem, "train_pair.py": train_pair, "eval.py": eval_script, "infer.py": infer,
               "export_model.py": export_model, "demo.py": demo, "data/make_toy_sop.py": make_toy_sop,
               "data/prepare_cub200.py": prepare_cub200, "data/prepare_cars196.py": prepare_cars196,
               "data/prepare_inshop.py": prepare_inshop, "data/prepare_folder.py": prepare_folder,
               "data/split_query_gallery.py": split_query_gallery}
    parsers = {script: module.make_parser() for script, module in modules.items()}
    search_parser, commands = search.make_parser()
    parsers.update({"search.py": search_parser}, **{"search.py %s" % name: sub for name, sub in commands.items()})
    for name in BENCHMARKS:
        parsers["bench/%s.py" % name] = load_bench(name).make_parser()
    return parsers


def option_strings(parser):
    return {option for option in parser._option_string_actions if option.startswith("--")}


def read_lines(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as page_file:
        return page_file.read().split("\n")


def prose_lines(lines, keep_code_spans=False):
    """(line number, line) outside fenced code blocks, by default with inline code spans removed: where links are
    links. Headings keep their code spans, whose text is part of the anchor."""
    in_code = False
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code:
            yield number, line if keep_code_spans else re.sub(r"`[^`]*`", "", line)


def slug(heading):
    """GitHub's anchor of a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(lines):
    """The anchors of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen = {}
    for _, line in prose_lines(lines, keep_code_spans=True):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            yield base if base not in seen else "%s-%d" % (base, seen[base])
            seen[base] = seen.get(base, 0) + 1


def bad_links(page, lines):
    """'page:line: target (why)' for each relative link of `page` that does not resolve."""
    problems = []
    for number, line in prose_lines(lines):
        for target in LINK.findall(line):
            if target.startswith(EXTERNAL):
                continue
            path, _, anchor = target.partition("#")
            target_page = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if path and not os.path.exists(os.path.join(ROOT, target_page)):
                problems.append("%s:%d: %s (no file %s)" % (page, number, target, target_page))
            elif anchor and anchor not in set(anchors(read_lines(target_page) if path else lines)):
                problems.append("%s:%d: %s (no heading #%s in %s)" % (page, number, target, anchor, target_page))
    return problems


def unknown_flags(page, lines, known):
    return ["%s:%d: %s" % (page, number, flag) for number, line in enumerate(lines, 1)
            for flag in FLAG.findall(line) if flag not in known and flag not in FOREIGN_FLAGS]


def test_every_relative_link_resolves_to_a_file_and_heading():
    problems = [problem for page in PAGES for problem in bad_links(page, read_lines(page))]
    assert not problems, "links that do not resolve:\n" + "\n".join(problems)


def test_every_flag_named_exists_in_a_parser_of_the_suite():
    known = set().union(*(option_strings(parser) for parser in suite_parsers().values()))
    problems = [problem for page in PAGES for problem in unknown_flags(page, read_lines(page), known)]
    assert not problems, "flags no parser of the suite has (or add a foreign one to FOREIGN_FLAGS):\n" + \
        "\n".join(problems)


@pytest.mark.parametrize("script, page", [
    ("train_elem.py", "docs/training.md"), ("train_pair.py", "docs/training.md"), ("eval.py", "docs/evaluation.md"),
    ("infer.py", "docs/evaluation.md"), ("export_model.py", "docs/evaluation.md"),
    ("search.py build", "docs/search.md"), ("search.py add", "docs/search.md"), ("search.py query", "docs/search.md")])
def test_every_flag_of_a_script_is_in_its_reference_page(script, page):
    documented = set(FLAG.findall("\n".join(read_lines(page))))
    missing = sorted(option_strings(suite_parsers()[script]) - documented - {"--help"})
    assert not missing, "%s flags missing from %s: %s" % (script, page, ", ".join(missing))


def test_the_checks_report_what_is_wrong(tmp_path, monkeypatch):
    """The checks above on a page with good and bad links and flags: only the bad ones are reported."""
    monkeypatch.setitem(globals(), "ROOT", str(tmp_path))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## Two runs, one `directory`\n\n## Flags\n\n"
                                                "## Flags\n")
    page = ["# Title", "[ok](other.md#two-runs-one-directory) [ok](#title) [ok](other.md#flags-1)",
            "[missing file](nowhere.md) [missing anchor](other.md#flags-2) [web](https://example.com/x.md)",
            "```", "[not a link in code](nowhere.md) --model --nproc_per_node --no_such_flag", "```"]
    assert bad_links("docs/page.md", page) == [
        "docs/page.md:3: nowhere.md (no file docs/nowhere.md)",
        "docs/page.md:3: other.md#flags-2 (no heading #flags-2 in docs/other.md)"]
    assert unknown_flags("docs/page.md", page, {"--model"}) == ["docs/page.md:5: --no_such_flag"]


def test_slug_is_githubs():
    assert slug("core/, the library") == "core-the-library"
    assert slug("Why not Paddle's own switch") == "why-not-paddles-own-switch"
    assert slug("Training and feature-extraction speed") == "training-and-feature-extraction-speed"
    assert slug("与原项目的差异") == "与原项目的差异"
    assert slug("The `--checkpoint` flag") == "the---checkpoint-flag"
