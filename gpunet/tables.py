"""Reading tables from files: a data file as numeric features and, optionally, a target column.

Formats, by the file's extension:

- ``.csv`` (comma), ``.tsv`` (tab), ``.txt`` (delimiter sniffed among ``, tab ; | space``,
  else comma): read by ``pandas.read_csv`` when pandas is installed, else by the standard
  library's ``csv`` module; both give the same columns, names and errors. UTF-8 text.
- ``.npy``: one 2-D numeric array; columns are chosen by index.
- ``.npz``: an array named ``X`` (or the archive's only 2-D array) is the table; the target is
  one of its columns by index, or another array of the archive by name (``X`` and ``y``).
- ``.parquet``: needs pandas and pyarrow (``pip install 'gpunet[parquet]'``).

NumPy files are loaded with ``allow_pickle=False``: an object array or a pickle is refused,
never unpickled.

Header: the first row of a text file is a header when it has text where the next row has a
number (or nothing). A file without a header gets the positional names ``column_0``,
``column_1``, ... and its columns are chosen by index (negative counts from the end: -1 is
the last). With a header (and in Parquet) a column is chosen by name; an integer that is not
a column name is taken as an index. Header names are stripped of surrounding spaces; an
empty one is named by position. NumPy files have no names.

Missing values are empty fields and pandas' default markers (``NA``, ``NaN``, ``null``,
``N/A``, ...); infinities count with them. Rows are numbered as the user sees them: ``row 1``
is the first data row, and in a text file its line number is given too.

Every problem is a ValueError naming the file, and the column and rows where it has them (an
ImportError for a missing optional package). Only NumPy and the standard library are imported
here; pandas and pyarrow are imported when a file needs them.
"""
from __future__ import annotations

import csv
import math
import numbers
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import NamedTuple

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["Table", "DataFile", "read_data_file", "read_table", "FORMATS", "parquet_pandas"]

FORMATS = (".csv", ".tsv", ".txt", ".npy", ".npz", ".parquet")
_DELIMITERS = {".csv": ",", ".tsv": "\t", ".txt": None}     # None: sniffed
_SNIFFED_DELIMITERS = ",\t;| "
# pandas' default missing-value markers (pandas._libs.parsers.STR_NA_VALUES), so that both CSV
# readers see the same missing values
NA_TOKENS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                       "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
_BOOL_TOKENS = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False, "false": False}
_SHOWN_ROWS = 5           # rows an error message lists
_SHOWN_NAMES = 20         # column names an error message lists


class Table(NamedTuple):
    """Features and target read from a file.

    ``X``: (N, F) C-ordered float64 (or the dtype asked for). ``y``: (N,) numbers, booleans
    or strings (the file's own labels), or None without a target. ``feature_names``: the
    feature columns' names (positional ``column_<j>`` when the file has none).
    ``target``: the target column's name, its index (0-based, in a file without names) or the
    name of an ``.npz`` array; None without a target. ``named_columns``: whether the names
    come from the file (a header, Parquet), i.e. whether they mean anything.
    ``dropped_rows``: 1-based data rows left out for missing values (``drop_missing``).
    """

    X: np.ndarray
    y: np.ndarray | None
    feature_names: list
    target: str | int | None
    source: str
    named_columns: bool
    dropped_rows: list

    def select(self, names) -> "Table":
        """This table with the feature columns ``names``, in that order (matched by name);
        a column that is missing, or one that is not in ``names``, is named."""
        names = list(names)
        position = {name: j for j, name in enumerate(self.feature_names)}
        missing = [name for name in names if name not in position]
        wanted = set(names)
        extra = [name for name in self.feature_names if name not in wanted]
        if missing or extra:
            parts = ([f"lacks the column(s) {_quoted(missing)}"] if missing else []) + \
                    ([f"has the column(s) {_quoted(extra)}, which are not features"] if extra else [])
            raise ValueError(f"{self.source} {' and '.join(parts)}; the features are: {_quoted(names)}")
        if names == self.feature_names:
            return self
        return self._replace(X=np.ascontiguousarray(self.X[:, [position[n] for n in names]]), feature_names=names)


@dataclass
class DataFile:
    """A data file's columns as read, before features and target are chosen.

    ``columns`` holds one 1-D array per column: numbers (float64 with NaN where missing,
    int64, bool) or Python objects (str, ..., None where missing). ``arrays`` holds an
    ``.npz`` archive's other arrays, which a target may name. ``line_numbers`` (text files)
    gives each data row's line in the file."""

    source: str
    names: list
    columns: list
    named: bool
    arrays: dict = field(default_factory=dict)
    line_numbers: Callable[[], np.ndarray] | None = None   # called only when a message names a line

    @property
    def n_rows(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def column_index(self, column) -> int:
        """The position of ``column``: a name, or an index (an int, or the text of one that
        is not a column name; negative counts from the end)."""
        n = len(self.names)
        if isinstance(column, str) and column in self.names:
            return self.names.index(column)
        index = _as_index(column)
        if index is None:
            if not self.named:
                raise ValueError(f"{self.source} has no column names (no header row), so a column is chosen by "
                                 f"index (0..{n - 1}, or -1 for the last), not by the name {column!r}"
                                 + (f"; its arrays are: {', '.join(self.arrays)}" if self.arrays else ""))
            raise ValueError(f"{self.source} has no column {column!r}; its columns are: {_listed(self.names)}")
        if not -n <= index < n:
            raise ValueError(f"column index {index} is out of range: {self.source} has {n} columns "
                             f"(0..{n - 1}, or -{n}..-1 counting from the end)")
        return index % n

    def describe(self, js) -> str:
        """Columns as messages name them: "column 'b'", "columns 'b', 'c'", or by index in a
        file without names ("columns 1, 2")."""
        shown = ", ".join(repr(self.names[j]) if self.named else str(j) for j in js)
        return f"column{'s' if len(js) > 1 else ''} {shown}"

    def where(self, rows) -> str:
        """'row 3 (line 4), row 9 (line 10)' for 0-based data rows, as the user counts them."""
        lines = self.line_numbers() if self.line_numbers is not None else None
        return ", ".join(f"row {r + 1}" + (f" (line {lines[r]})" if lines is not None else "") for r in rows)

    def table(self, target=None, *, ignore=(), drop_missing=False, dtype=np.float64) -> Table:
        """Features (every column but the target and ``ignore``) and the target ``target`` (a
        column name or index, an ``.npz`` array's name, or None for none). ``ignore``: columns
        (names or indexes) left out where the file has them. Rows with a missing value are an
        error, or with ``drop_missing`` left out (``Table.dropped_rows``)."""
        target_j, target_name, raw_target = self._target(target)
        target_what = f"array {target_name!r}" if target_j is None else self.describe([target_j])
        left_out = self._present(ignore) | ({target_j} if target_j is not None else set())
        feature_js = [j for j in range(len(self.names)) if j not in left_out]
        if not feature_js:
            raise ValueError(f"{self.source} has no feature columns besides the target {target_what}")
        features = [self._numeric(j) for j in feature_js]
        y, target_missing = (None, None) if raw_target is None else self._target_values(target_name, raw_target)

        feature_missing = np.zeros(self.n_rows, dtype=bool)
        for column in features:
            feature_missing |= ~np.isfinite(column)
        if target_missing is not None and target_missing.any() and not drop_missing:
            self._refuse_missing_target(target_what, np.flatnonzero(target_missing))
        if feature_missing.any() and not drop_missing:
            self._refuse_missing_features(feature_js, features, np.flatnonzero(feature_missing))
        bad = feature_missing if target_missing is None else feature_missing | target_missing
        dropped = (np.flatnonzero(bad) + 1).tolist()
        if dropped:
            if len(dropped) == self.n_rows:
                raise ValueError(f"every row of {self.source} has a missing value: no row is left")
            features = [column[~bad] for column in features]
            y = None if y is None else y[~bad]

        X = np.empty((len(features[0]), len(features)), dtype=dtype)
        for j, column in enumerate(features):
            X[:, j] = column
        return Table(X, y, [self.names[j] for j in feature_js], target_name, self.source, self.named, dropped)

    # ---- the parts of table() ------------------------------------------------------------------
    def _present(self, columns) -> set:
        """Positions of those ``columns`` (names or indexes) the file has."""
        n, found = len(self.names), set()
        for column in columns:
            if isinstance(column, str) and column in self.names:
                found.add(self.names.index(column))
            elif not isinstance(column, str) and (index := _as_index(column)) is not None and -n <= index < n:
                found.add(index % n)
        return found

    def _target(self, target):
        """(column position or None, the target as the user knows it, its raw values)."""
        if target is None:
            return None, None, None
        if isinstance(target, str) and target in self.arrays and target not in self.names:
            values = self.arrays[target]
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.ndim != 1 or len(values) != self.n_rows:
                raise ValueError(f"{self.source}: the target array {target!r} must hold one value per row "
                                 f"(shape ({self.n_rows},)), got shape {values.shape}")
            return None, target, values
        j = self.column_index(target)
        return j, (self.names[j] if self.named else j), self.columns[j]

    def _numeric(self, j) -> np.ndarray:
        """Column j as float64 (NaN where missing); a value that is not a number is named."""
        column = self.columns[j]
        if column.dtype.kind in "biuf":
            return column.astype(np.float64, copy=False)
        out = np.empty(len(column), dtype=np.float64)
        for row, value in enumerate(column):
            number = _as_number(value)
            if number is None:
                numbers_elsewhere = any(_as_number(other) is not None for other in column if other is not None)
                raise ValueError(
                    f"{self.source}: the feature {self.describe([j])} is not numeric: {self.where([row])} holds "
                    f"{value!r}. Encode it as numbers (for example one 0/1 column per category) or drop the column"
                    + (f"; if {value!r} marks a missing value, leave those fields empty" if numbers_elsewhere else "")
                    + (f" (or make {self.names[j]!r} the target)" if self.named else "")) from None
            out[row] = number
        return out

    def _target_values(self, target_name, column):
        """(the target's values, where they are missing): numbers, booleans, or text as a str
        array (the file's labels, kept)."""
        if column.dtype.kind == "f":
            return column, ~np.isfinite(column)
        if column.dtype.kind in "biuU":
            return column, np.zeros(len(column), dtype=bool)
        if column.dtype.kind != "O":
            raise ValueError(f"{self.source}: the target {target_name!r} holds {column.dtype} values; "
                             "use numbers or text labels")
        values = column.tolist()
        missing = np.array([value is None or (isinstance(value, float) and math.isnan(value)) for value in values])
        present = [value for value, gone in zip(values, missing) if not gone]
        if all(isinstance(value, (bool, np.bool_)) for value in present):
            return np.array([bool(value) for value in values], dtype=bool), missing
        if all(isinstance(value, numbers.Real) for value in present):
            return np.array([math.nan if gone else float(value) for value, gone in zip(values, missing)]), missing
        return np.array(["" if gone else str(value) for value, gone in zip(values, missing)]), missing

    def _refuse_missing_target(self, target_what, rows):
        raise ValueError(f"{self.source}: the target {target_what} is missing in {len(rows)} row(s): "
                         f"{self.where(rows[:_SHOWN_ROWS])}{', ...' if len(rows) > _SHOWN_ROWS else ''}. "
                         f"{_MISSING_HINT}")

    def _refuse_missing_features(self, feature_js, features, rows):
        def empty_in(selected):
            return [j for j, column in zip(feature_js, features) if not np.isfinite(column[selected]).all()]

        per_row = [f"{self.where([row])} in {self.describe(empty_in(row))}" for row in rows[:_SHOWN_ROWS]]
        raise ValueError(f"{self.source} has missing (or infinite) values in {len(rows)} row(s), in "
                         f"{self.describe(empty_in(rows))}: {'; '.join(per_row)}"
                         f"{'; ...' if len(rows) > _SHOWN_ROWS else ''}. {_MISSING_HINT}")


_MISSING_HINT = "Fill them in, or drop those rows (drop_missing=True; --drop-missing on the command line)"


def read_data_file(path: str | os.PathLike) -> DataFile:
    """The columns of the data file at ``path``, its format from its extension.

    Parameters
    ----------
    path : str or path-like
        A ``.csv``, ``.tsv``, ``.txt``, ``.npy``, ``.npz`` or ``.parquet`` file.

    Returns
    -------
    DataFile
        Its columns, names and rows, before features and target are chosen.

    Raises
    ------
    ValueError
        For an unknown extension, or a file that cannot be read as a table (named with the
        column, row and line where it has them).
    FileNotFoundError
        When there is no such file.
    ImportError
        For a Parquet file without pandas and pyarrow.
    """
    source = os.fspath(path)
    suffix = os.path.splitext(source)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"{source}: unknown data format {suffix or '(no extension)'!r}; "
                         f"use one of {', '.join(FORMATS)}")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source}: no such file")
    if suffix in (".npy", ".npz"):
        return _read_numpy(source)
    if suffix == ".parquet":
        return _read_parquet(source)
    return _read_text(source, _DELIMITERS[suffix])


def read_table(path: str | os.PathLike, target: str | int | None = None, *, ignore: Iterable[str | int] = (),
               drop_missing: bool = False, dtype: DTypeLike = np.float64) -> Table:
    """Features and target of a data file: ``read_data_file(path).table(...)``.

    Parameters
    ----------
    path : str or path-like
        A ``.csv``, ``.tsv``, ``.txt``, ``.npy``, ``.npz`` or ``.parquet`` file.
    target : str, int or None, default None
        The target column: its name, or its index (negative from the end) in a file without
        names; in an ``.npz`` archive also another array's name. None: no target.
    ignore : iterable of str or int, default ()
        Columns (names or indexes) left out where the file has them.
    drop_missing : bool, default False
        Leave out rows with a missing value (``Table.dropped_rows``) instead of refusing them.
    dtype : dtype, default float64
        The features' dtype.

    Returns
    -------
    Table
        The features (every other column), the target and the names.

    Raises
    ------
    ValueError
        For a file that cannot be read, a missing target column, a non-numeric feature or
        missing values (each named with its column and rows).
    FileNotFoundError
        When there is no such file.
    ImportError
        For a Parquet file without pandas and pyarrow.
    """
    return read_data_file(path).table(target, ignore=ignore, drop_missing=drop_missing, dtype=dtype)


def parquet_pandas() -> ModuleType:
    """pandas, once pyarrow (its Parquet engine) is importable too.

    Returns
    -------
    module
        The ``pandas`` module.

    Raises
    ------
    ImportError
        Saying what to install, when either is missing.
    """
    try:
        import pandas
        import pyarrow  # noqa: F401  (pandas' Parquet engine)
    except ImportError as exc:
        raise ImportError(f"Parquet files need pandas and pyarrow ({exc.name} is not installed): "
                          "pip install 'gpunet[parquet]'") from None
    return pandas


# ---- text files: csv, tsv, txt ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Dialect:
    delimiter: str
    skip_initial_space: bool = False

    def reader(self, handle):
        return csv.reader(handle, delimiter=self.delimiter, skipinitialspace=self.skip_initial_space)


def _open_text(source):
    return open(source, newline="", encoding="utf-8-sig")


def _records(source, dialect):
    """(line number, fields) of each record of a text file, blank lines skipped (as pandas
    does); a record's line is where it starts (a quoted field may span lines)."""
    with _open_text(source) as handle:
        reader = dialect.reader(handle)
        previous_end = 0
        for fields in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if fields:
                yield start, fields


def _sniff(source) -> _Dialect:
    with _open_text(source) as handle:
        sample = handle.read(64 * 1024)
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=_SNIFFED_DELIMITERS)
    except csv.Error:
        return _Dialect(",")
    return _Dialect(sniffed.delimiter, sniffed.skipinitialspace)


def _is_number(text) -> bool:
    """A field that reads as a number, or as a missing one."""
    text = text.strip()
    if text in NA_TOKENS:
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_header(first, second) -> bool:
    """A first row with text where the next row has a number is a header; a headerless file may
    still hold a text column (its labels), which has text in both rows."""
    texts = [j for j, text in enumerate(first) if not _is_number(text)]
    if not texts:
        return False
    if second is None or not any(_is_number(text) for text in second):
        return True
    return any(j >= len(second) or _is_number(second[j]) for j in texts)


def _header_names(source, fields) -> list:
    names = [text.strip() or f"column_{j}" for j, text in enumerate(fields)]
    seen = {}
    for j, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{source}: the header names the column {name!r} twice (columns {seen[name]} and {j}); "
                             "column names must be distinct")
        seen[name] = j
    return names


def _read_text(source, delimiter) -> DataFile:
    dialect = _Dialect(delimiter) if delimiter else _sniff(source)
    try:
        head = []
        for _, fields in _records(source, dialect):
            head.append(fields)
            if len(head) == 2:
                break
        if not head:
            raise ValueError(f"{source} is empty")
        named = _is_header(head[0], head[1] if len(head) > 1 else None)
        names = _header_names(source, head[0]) if named else [f"column_{j}" for j in range(len(head[0]))]
        if named and len(head) == 1:
            raise ValueError(f"{source} has a header but no data rows")
        try:
            import pandas
        except ImportError:
            return _read_text_stdlib(source, dialect, names, named)
        return _read_text_pandas(pandas, source, dialect, names, named)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _data_records(source, dialect, named, n_columns):
    """(line number, fields) of each data row; a row whose field count differs from the
    header's (or the first row's) is an error naming its line."""
    records = _records(source, dialect)
    if named:
        next(records)
    for line, fields in records:
        if len(fields) != n_columns:
            raise ValueError(f"{source}: line {line} has {len(fields)} field(s) but "
                             f"{'the header has' if named else 'the first row has'} {n_columns}")
        yield line, fields


def _read_text_stdlib(source, dialect, names, named) -> DataFile:
    rows = list(_data_records(source, dialect, named, len(names)))
    lines = np.array([line for line, _ in rows])
    columns = [_parse_text_column(texts) for texts in zip(*(fields for _, fields in rows))]
    return DataFile(source, names, columns, named, line_numbers=lambda: lines)


def _parse_text_column(texts) -> np.ndarray:
    """Fields of one column as pandas would type them: int64, else float64 (NaN where missing),
    else booleans, else text; the last two as Python objects with None where missing."""
    stripped = [text.strip() for text in texts]
    missing = [text in NA_TOKENS for text in stripped]
    if not any(missing):
        try:
            return np.array([int(text) for text in stripped], dtype=np.int64)
        except (ValueError, OverflowError):
            pass
    try:
        return np.array([math.nan if gone else float(text) for text, gone in zip(stripped, missing)])
    except ValueError:
        pass
    if all(gone or text in _BOOL_TOKENS for text, gone in zip(stripped, missing)):
        values = [None if gone else _BOOL_TOKENS[text] for text, gone in zip(stripped, missing)]
        return np.array(values, dtype=bool) if not any(missing) else _objects(values)
    return _objects([None if gone else text for text, gone in zip(texts, missing)])


def _read_text_pandas(pandas, source, dialect, names, named) -> DataFile:
    line_numbers = []

    def lines():       # read again only when a message names a line: pandas does not keep them
        if not line_numbers:
            line_numbers.append(np.array([line for line, _ in _data_records(source, dialect, named, len(names))]))
        return line_numbers[0]

    try:
        frame = pandas.read_csv(source, sep=dialect.delimiter, skipinitialspace=dialect.skip_initial_space,
                                header=0 if named else None, names=names, index_col=False,
                                encoding="utf-8-sig", low_memory=False)
    except pandas.errors.ParserError as exc:
        lines()                               # names the ragged line
        raise ValueError(f"{source}: {exc}") from None
    if frame.isna().to_numpy().any():
        lines()   # pandas fills a short row with missing values: a ragged file is an error here too
    return DataFile(source, names, _frame_columns(pandas, frame), named, line_numbers=lines)


# ---- Parquet and NumPy files ---------------------------------------------------------------------------
def _read_parquet(source) -> DataFile:
    pandas = parquet_pandas()
    try:
        frame = pandas.read_parquet(source)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{source} could not be read as Parquet: {exc}") from None
    if frame.shape[1] == 0:
        raise ValueError(f"{source} has no columns")
    if frame.shape[0] == 0:
        raise ValueError(f"{source} has no rows")
    names = [str(name) for name in frame.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"{source} has duplicate column names: {_listed(names)}")
    return DataFile(source, names, _frame_columns(pandas, frame), named=True)


def _frame_columns(pandas, frame) -> list:
    types = pandas.api.types
    columns = []
    for _, series in frame.items():
        kind = series.dtype
        if isinstance(kind, np.dtype) and kind.kind in "biuf":
            columns.append(series.to_numpy())
        elif types.is_numeric_dtype(kind) and not types.is_bool_dtype(kind):   # nullable Int64, Float64
            columns.append(series.to_numpy(dtype=np.float64, na_value=np.nan))
        else:     # text, categories, nullable booleans, dates: Python objects, None where missing
            columns.append(series.to_numpy(dtype=object, na_value=None))
    return columns


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _read_numpy(source) -> DataFile:
    with open(source, "rb") as handle:
        magic = handle.read(6)
    if not (magic.startswith(_NPY_MAGIC) or magic.startswith(_ZIP_MAGIC)):
        raise ValueError(f"{source} is not a NumPy .npy or .npz file (a pickle is never loaded)")
    try:
        loaded = np.load(source, allow_pickle=False)
        if isinstance(loaded, np.ndarray):       # a .npy file
            arrays = {None: loaded}
        else:                                    # an .npz archive, read member by member
            with loaded:
                arrays = {name: loaded[name] for name in loaded.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ValueError(f"{source} holds Python objects (an object array), which gpunet does not load "
                             "(it would unpickle them); save numeric or string arrays") from None
        raise ValueError(f"{source} could not be read: {exc}") from None
    if not arrays:
        raise ValueError(f"{source} holds no arrays")
    table_name = _table_array(source, arrays)
    array = arrays.pop(table_name)
    shown = source if table_name is None else f"{source} (array {table_name!r})"
    if array.ndim != 2:
        raise ValueError(f"{shown} has shape {array.shape}; a table is 2-D (rows, columns)")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{shown} holds {array.dtype} values, not numbers; keep text labels in an .npz "
                         "archive as an array of their own beside the numeric X")
    if 0 in array.shape:
        raise ValueError(f"{shown} is empty (shape {array.shape})")
    names = [f"column_{j}" for j in range(array.shape[1])]
    return DataFile(source, names, [array[:, j] for j in range(array.shape[1])], named=False, arrays=arrays)


def _table_array(source, arrays):
    """The name of the array that holds the table: ``X``, else the only 2-D one."""
    if "X" in arrays or len(arrays) == 1:
        return "X" if "X" in arrays else next(iter(arrays))
    two_d = [name for name, array in arrays.items() if array.ndim == 2]
    if len(two_d) != 1:
        shapes = ", ".join(f"{name} {array.shape}" for name, array in arrays.items())
        raise ValueError(f"{source}: which array is the table? Name it X (its arrays are: {shapes})")
    return two_d[0]


# ---- values ------------------------------------------------------------------------------------------------
def _as_number(value):
    """A value of a text or object column as a float (NaN for missing); None when it is not a number."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _objects(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _as_index(column):
    """``column`` as an int index: an int, or the text of one; else None."""
    if isinstance(column, (numbers.Integral, np.integer)) and not isinstance(column, (bool, np.bool_)):
        return int(column)
    if isinstance(column, str):
        try:
            return int(column.strip())
        except ValueError:
            return None
    return None


def _listed(names) -> str:
    shown = ", ".join(map(str, names[:_SHOWN_NAMES]))
    return shown + (f", ... ({len(names)} columns)" if len(names) > _SHOWN_NAMES else "")


def _quoted(names) -> str:
    return ", ".join(map(repr, names[:_SHOWN_NAMES])) + (", ..." if len(names) > _SHOWN_NAMES else "")
