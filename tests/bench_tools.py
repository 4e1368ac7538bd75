"""Helpers for the benchmark smoke tests: load a bench/ script as a module, read its Markdown tables."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(output, columns, first_header_cell):
    """The cells of every Markdown row with `columns` cells, the header and separator rows left out."""
    rows = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == columns and cells[0] not in (first_header_cell, "---"):
            rows.append(cells)
    return rows
