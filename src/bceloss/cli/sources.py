"""Reading the command's files in row ranges, with bounded memory.

A `Source` is one `FILE` or `FILE:COL[,COL...]` argument: a table of `rows` rows and
`len(names)` columns from a .npy, .npz (`FILE:name`), .csv or .parquet file. Opening one
reads only its header (and counts a CSV's lines); `Source.chunks(start, stop, rows)` then
yields 2-D NumPy arrays of exactly `rows` rows (the last one shorter) covering rows
[start, stop), reading the file sequentially from `start`. Every problem with a file is an
`InputError` whose message is the one line the command prints. `sample()` names the columns
of the sample shipped in the package (`bceloss eval --sample`).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import io
import itertools
import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

KINDS = (".npy", ".npz", ".csv", ".parquet")
_NPY_PIECE_BYTES = 1 << 22  # what one read of a .npy file asks for, at most (4 MiB)


class InputError(ValueError):
    """A file, column or value the command cannot use; the message is one line."""


def _numeric_dtype(dtype, what: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        msg = f"{what} holds non-numeric values (dtype {dtype}); expected numbers"
        raise InputError(msg)
    return dtype


@dataclass(frozen=True)
class Source:
    """One table read from a file: `rows` rows of the columns `names` (see the module doc).

    Attributes:
      path: the file, an absolute path (Dask workers open it again).
      kind: its suffix, one of KINDS.
      names: the names of the selected columns ('0', '1'... where the file has none).
      rows: the number of rows.
      dtype: the dtype of the arrays read (float64 for CSV).
      columns: the indexes of the selected columns in the file (None: all of an array).
      member: the array's name inside a .npz.
      header: where the data starts: a byte offset (.npy, .npz) or a line count (.csv).
      shape: the array's shape (.npy, .npz).
    """

    path: str
    kind: str
    names: tuple[str, ...]
    rows: int
    dtype: np.dtype
    columns: tuple[int, ...] | None = None
    member: str | None = None
    header: int = 0
    shape: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        """How messages name this source: the file, and the array or columns picked."""
        name = os.path.basename(self.path)
        return f"{name}:{self.member}" if self.member else name

    def chunks(self, start: int, stop: int, rows: int) -> Iterator[np.ndarray]:
        """Arrays of shape (rows, len(names)) covering rows [start, stop); at least one."""
        pieces = {
            ".npy": self._npy_pieces,
            ".npz": self._npy_pieces,
            ".csv": self._csv_pieces,
            ".parquet": self._parquet_pieces,
        }[self.kind](start, stop, rows)
        empty = np.empty((0, len(self.names)), self.dtype)
        yield from _rechunk(pieces, rows, empty)

    def _npy_pieces(self, start, stop, rows):
        width = math.prod(self.shape[1:])
        row_bytes = width * self.dtype.itemsize
        step = max(1, min(rows, _NPY_PIECE_BYTES // max(row_bytes, 1)))
        with _open_npy(self) as f:
            f.seek(self.header + start * row_bytes)
            for a in range(start, stop, step):
                n = min(step, stop - a)
                data = f.read(n * row_bytes)
                if len(data) != n * row_bytes:
                    msg = f"{self.label}: the file ends before its {self.rows} rows"
                    raise InputError(msg)
                piece = np.frombuffer(data, self.dtype).reshape(n, width)
                yield piece if self.columns is None else piece[:, list(self.columns)]

    def _csv_pieces(self, start, stop, rows):
        with open(self.path, encoding="utf-8", newline="") as f:
            lines = _data_lines(f, self.header)
            lines = itertools.islice(lines, start, stop)
            while batch := list(itertools.islice(lines, rows)):
                yield _parse_csv(self, batch)

    def _parquet_pieces(self, start, stop, rows):
        pq = _pyarrow_parquet(self.label)
        meta = pq.ParquetFile(self.path).metadata
        first = 0
        with pq.ParquetFile(self.path) as pf:
            for group in range(meta.num_row_groups):
                size = meta.row_group(group).num_rows
                begin, first = first, first + size
                if first <= start or begin >= stop:
                    continue
                batches = pf.iter_batches(
                    batch_size=rows, row_groups=[group], columns=list(self.names)
                )
                at = begin
                for batch in batches:
                    lo, hi = max(start - at, 0), min(stop - at, batch.num_rows)
                    at += batch.num_rows
                    if lo < hi:
                        yield _arrow_columns(self, batch.slice(lo, hi - lo))


def _rechunk(pieces, rows: int, empty: np.ndarray) -> Iterator[np.ndarray]:
    """Regroup arrays of any number of rows into arrays of exactly `rows` rows (last shorter)."""
    held, count, sent = [], 0, False
    for piece in pieces:
        held.append(piece)
        count += len(piece)
        while count >= rows:
            joined = np.concatenate(held) if len(held) > 1 else held[0]
            yield np.ascontiguousarray(joined[:rows])
            sent = True
            held, count = [joined[rows:]], count - rows
    if count or not sent:
        yield np.ascontiguousarray(np.concatenate([empty, *held]))


# The sample shipped in the package (bceloss/data): the file, its predictions (logits) and its
# labels, as `bceloss eval --sample` evaluates them.
SAMPLE = ("breast_cancer.csv", "logit", "malignant")


@contextlib.contextmanager
def sample() -> Iterator[tuple[str, str]]:
    """The PREDICTIONS and LABELS sources of the shipped sample, 'FILE:logit' and
    'FILE:malignant', with FILE found by importlib.resources in the installed package (a
    file on disk for as long as the context lasts, even from a zipped package)."""
    name, predictions, labels = SAMPLE
    with importlib.resources.as_file(importlib.resources.files("bceloss") / "data" / name) as f:
        yield f"{f}:{predictions}", f"{f}:{labels}"


# --- opening -------------------------------------------------------------------------------


def open_source(spec: str, *, what: str) -> Source:
    """The Source named by `spec`, 'FILE' or 'FILE:COL[,COL...]' ('FILE:name' for .npz).

    `what` names the argument in messages ('predictions', 'weight'...).
    """
    path, cols = spec, None
    if not os.path.exists(path) and ":" in spec:
        path, cols = spec.rsplit(":", 1)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in KINDS:
        msg = f"{what} {spec!r}: unknown file type {suffix or '(none)'!r}; expected one of " + (
            ", ".join(KINDS)
        )
        raise InputError(msg)
    if not os.path.isfile(path):
        msg = f"{what}: no such file: {path}"
        raise InputError(msg)
    path = os.path.abspath(path)
    opener = {".npy": _open_npy_file, ".npz": _open_npz, ".csv": _open_csv}
    return opener.get(suffix, _open_parquet)(path, cols, what)


def _pick(available: list[str], wanted: str | None, label: str) -> tuple[int, ...] | None:
    """Indexes of the wanted comma-separated columns, by name or by position."""
    if wanted is None:
        return None
    picked = []
    for col in wanted.split(","):
        col = col.strip()
        if col in available:
            picked.append(available.index(col))
        elif col.isdigit() and int(col) < len(available):
            picked.append(int(col))
        else:
            shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
            msg = f"{label}: no column {col!r}; the columns are {shown}"
            raise InputError(msg)
    return tuple(picked)


def _npy_header(f, label: str):
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(f)
    except ValueError as e:
        msg = f"{label}: not a readable .npy array ({e})"
        raise InputError(msg) from None
    return shape, fortran, dtype, f.tell()


@contextlib.contextmanager
def _open_npy(source: Source):
    if source.kind == ".npy":
        with open(source.path, "rb") as f:
            yield f
        return
    with zipfile.ZipFile(source.path) as archive, archive.open(source.member + ".npy") as f:
        yield f


def _array_source(path, kind, cols, label, member, f) -> Source:
    shape, fortran, dtype, header = _npy_header(f, label)
    dtype = _numeric_dtype(dtype, label)
    if len(shape) > 2:
        msg = f"{label}: expected a 1-D or 2-D array; got shape {shape}"
        raise InputError(msg)
    if fortran and len(shape) == 2 and shape[1] > 1:
        msg = f"{label}: a Fortran-ordered array cannot be read by rows; save it in C order"
        raise InputError(msg)
    shape = shape if shape else (1,)
    width = shape[1] if len(shape) == 2 else 1
    available = [str(i) for i in range(width)]
    columns = _pick(available, cols, label)
    names = available if columns is None else [available[i] for i in columns]
    return Source(
        path=path,
        kind=kind,
        names=tuple(names),
        rows=shape[0],
        dtype=dtype,
        columns=columns,
        member=member,
        header=header,
        shape=tuple(shape),
    )


def _open_npy_file(path, cols, what) -> Source:
    label = f"{what} {os.path.basename(path)}"
    with open(path, "rb") as f:
        return _array_source(path, ".npy", cols, label, None, f)


def _open_npz(path, cols, what) -> Source:
    label = f"{what} {os.path.basename(path)}"
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        msg = f"{label}: not a .npz archive"
        raise InputError(msg) from None
    with archive:
        members = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
        if cols is None and len(members) == 1:
            cols = members[0]
        if cols not in members:
            head = f"no array {cols!r}" if cols else "several arrays, name one as FILE:name"
            msg = f"{label}: {head}; it holds {', '.join(members) or 'none'}"
            raise InputError(msg)
        with archive.open(cols + ".npy") as f:
            return _array_source(path, ".npz", None, f"{label}:{cols}", cols, f)


# --- CSV -----------------------------------------------------------------------------------


def _data_lines(f, header: int):
    """The non-blank lines of a CSV file after its `header` line(s), numbered from 1."""
    numbered = ((i, line) for i, line in enumerate(f, 1) if line.strip())
    return itertools.islice(numbered, header, None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _open_csv(path, cols, what) -> Source:
    label = f"{what} {os.path.basename(path)}"
    with open(path, encoding="utf-8", newline="") as f:
        try:
            first = next((line for line in f if line.strip()), "")
            fields = [s.strip().strip('"') for s in first.split(",")]
            header = not all(_is_number(s) for s in fields)
            rows = sum(1 for line in f if line.strip()) + (not header and bool(first.strip()))
        except UnicodeDecodeError:
            msg = f"{label}: not a UTF-8 text file"
            raise InputError(msg) from None
    if not first.strip():
        msg = f"{label}: the file is empty"
        raise InputError(msg)
    available = fields if header else [str(i) for i in range(len(fields))]
    columns = _pick(available, cols, label) or tuple(range(len(available)))
    return Source(
        path=path,
        kind=".csv",
        names=tuple(available[i] for i in columns),
        rows=rows,
        dtype=np.dtype(np.float64),
        columns=columns,
        header=int(header),
    )


def _parse_csv(source: Source, batch: list[tuple[int, str]]) -> np.ndarray:
    try:
        return np.loadtxt(
            io.StringIO("".join(line for _, line in batch)),
            delimiter=",",
            usecols=source.columns,
            dtype=np.float64,
            ndmin=2,
            comments=None,
        )
    except ValueError:
        pass
    # Find the offending field for a precise message (only on failure, so not on the hot path).
    need = max(source.columns) + 1
    for number, line in batch:
        fields = line.rstrip("\r\n").split(",")
        if len(fields) < need:
            msg = f"{source.label}: line {number} has {len(fields)} fields; expected {need}"
            raise InputError(msg)
        for i, name in zip(source.columns, source.names, strict=True):
            if not _is_number(fields[i]):
                msg = (
                    f"{source.label}: non-numeric value {fields[i].strip()!r} "
                    f"in column {name!r}, line {number}"
                )
                raise InputError(msg)
    msg = f"{source.label}: cannot read lines {batch[0][0]} to {batch[-1][0]} as numbers"
    raise InputError(msg)


# --- Parquet -------------------------------------------------------------------------------


def _pyarrow_parquet(label):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        msg = f"{label}: reading .parquet needs pyarrow (pip install 'bceloss[parquet]')"
        raise InputError(msg) from None
    return pq


def _open_parquet(path, cols, what) -> Source:
    label = f"{what} {os.path.basename(path)}"
    pq = _pyarrow_parquet(label)
    try:
        schema = pq.read_schema(path)
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        msg = f"{label}: not a readable Parquet file ({type(e).__name__})"
        raise InputError(msg) from None
    available = list(schema.names)
    columns = _pick(available, cols, label) or tuple(range(len(available)))
    dtypes = []
    for i in columns:
        try:
            dtypes.append(np.dtype(schema.field(i).type.to_pandas_dtype()))
        except (NotImplementedError, TypeError):
            dtypes.append(np.dtype(object))
        if dtypes[-1].kind not in "biuf":
            msg = f"{label}: column {available[i]!r} holds {schema.field(i).type}, not numbers"
            raise InputError(msg)
    return Source(
        path=path,
        kind=".parquet",
        names=tuple(available[i] for i in columns),
        rows=rows,
        dtype=np.result_type(*dtypes),
        columns=columns,
    )


def _arrow_columns(source: Source, batch) -> np.ndarray:
    out = np.empty((batch.num_rows, len(source.names)), source.dtype)
    for j, name in enumerate(source.names):
        column = batch.column(name)
        if column.null_count:
            msg = f"{source.label}: column {name!r} has missing values (null)"
            raise InputError(msg)
        out[:, j] = column.to_numpy(zero_copy_only=False)
    return out
