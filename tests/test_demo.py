"""`make demo` end to end, and the README's demo table is what a fresh run of the demo prints."""
import os
import re

import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERCENT = re.compile(r"(\d+\.\d)%")


def test_the_readme_tables_are_the_demos_own(tmp_path, capsys):
    tables = demo.main(["--data_dir=%s" % (tmp_path / "toy_sop"), "--output_dir=%s" % (tmp_path / "out")])
    output = capsys.readouterr().out
    assert tables["README.md"] in output and "Next, on the demo's data" in output
    assert "data/prepare_folder.py --data_dir=my_images" in output
    assert os.path.isfile(tmp_path / "out" / "features.npy")
    for readme, table in tables.items():
        with open(os.path.join(ROOT, readme), encoding="utf-8") as page:
            published = demo.README_TABLE.search(page.read()).group(2)
        # The same rows; the same figures up to a tenth of a point, what another CPU's float rounding may move.
        assert PERCENT.sub("x", published) == PERCENT.sub("x", table), readme
        for shown, measured in zip(PERCENT.findall(published), PERCENT.findall(table)):
            assert abs(float(shown) - float(measured)) <= 0.1, (readme, published, table)
