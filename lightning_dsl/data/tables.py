"""Delimited text files (TSV, CSV) with a header line: the texts and integer labels of one column each.

What :class:`~lightning_dsl.data.text.TextDataModule` reads; every error names the file, the line and
what was expected there.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

DELIMITERS = {"\t": "tab", ",": "comma"}


def read_table(
    path: Path, text_column: str, label_column: str, delimiter: str
) -> tuple[list[str], list[int], list[int]]:
    r"""Read the texts and integer labels of a delimited file with a header line.

    Tab-separated files are read without quote handling (``csv.QUOTE_NONE``: SST-2's sentences contain quotes);
    comma-separated files with the usual CSV quoting. Blank lines are skipped.

    Args:
        path: the file.
        text_column: header name of the text column.
        label_column: header name of the label column.
        delimiter: ``"\t"`` or ``","``.

    Returns:
        The texts, the labels and the line number of each row in the file (the header is line 1).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file has no header or no data rows, a column is missing, a row has too few fields, or a
            label is not an integer >= 0.
    """
    quoting: Literal[0, 1, 2, 3] = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    texts: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = next((row for row in reader if row), None)
        if header is None:
            raise ValueError(f"{path} is empty: expected a header line and at least one data row.")
        header = [name.strip() for name in header]
        for name in (text_column, label_column):
            if name not in header:
                raise ValueError(
                    f"{path}: column {name!r} not found; the header has the columns {header}"
                    f" (read with the delimiter {DELIMITERS[delimiter]} {delimiter!r})."
                )
        i_text, i_label = header.index(text_column), header.index(label_column)
        for row in reader:
            if not row:
                continue
            if len(row) <= max(i_text, i_label):
                raise ValueError(
                    f"{path}, line {reader.line_num}: expected {len(header)} fields ({header}), but the row has"
                    f" {len(row)}: {row!r}."
                )
            value = row[i_label].strip()
            try:
                label = int(value)
            except ValueError:
                label = -1
            if label < 0:
                raise ValueError(
                    f"{path}, line {reader.line_num}: expected an integer label >= 0 in column {label_column!r},"
                    f" but got {value!r}."
                )
            texts.append(row[i_text])
            labels.append(label)
            lines.append(reader.line_num)
    if not texts:
        raise ValueError(f"{path} has no data rows: only the header line {header}.")
    return texts, labels, lines


__all__ = ["DELIMITERS", "read_table"]
