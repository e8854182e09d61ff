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
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

KINDS = (".npy", ".npz", ".csv", ".parquet")
_NPY_PIECE_BYTES = 1 << 22  # what one read of a .npy file asks for, at most (4 MiB)
_TEXT_BLOCK_BYTES = 1 << 20  # what one read of a CSV file asks for (1 MiB)
_BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark, dropped from the start of a CSV file

# The bounds on what one file may ask of memory (options --max-columns and --max-line-bytes):
# a file's columns (a name each is built), and a CSV line (read whole before it is split).
DEFAULT_MAX_COLUMNS = 10_000
DEFAULT_MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class Limits:
    """How many columns a file may have, and how many bytes a CSV line may hold."""

    max_columns: int = DEFAULT_MAX_COLUMNS
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


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
      stored: the dtype as stored in a .npy or .npz (byte order included): `dtype` is its
        native-order twin, what the arrays read hold.
      max_line_bytes: the longest CSV line read (--max-line-bytes).
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
    stored: np.dtype | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES

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
                piece = np.frombuffer(data, self.stored or self.dtype).reshape(n, width)
                if piece.dtype != self.dtype:  # big-endian on a little-endian machine...
                    piece = piece.astype(self.dtype)
                yield piece if self.columns is None else piece[:, list(self.columns)]

    def _csv_pieces(self, start, stop, rows):
        # one block of text (a few MiB at most) parsed at a time, whatever `rows`
        skip, left = start + self.header, stop - start
        for block in _csv_blocks(self.path, self.label, self.max_line_bytes):
            if skip >= len(block):
                skip -= len(block)
                continue
            block, skip = block[skip : skip + left], 0
            left -= len(block)
            for a in range(0, len(block), rows):
                yield _parse_csv(self, block[a : a + rows])
            if not left:
                return

    def _parquet_pieces(self, start, stop, rows):
        try:
            yield from self._parquet_batches(start, stop, rows)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            if isinstance(e, InputError):
                raise
            msg = f"{self.label}: cannot read the Parquet data ({_first_line(e)})"
            raise InputError(msg) from None

    def _parquet_batches(self, start, stop, rows):
        first = 0
        with _parquet_file(self.path) as pf:
            meta = pf.metadata
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


def open_source(spec: str, *, what: str, limits: Limits = Limits()) -> Source:
    """The Source named by `spec`, 'FILE' or 'FILE:COL[,COL...]' ('FILE:name' for .npz).

    `what` names the argument in messages ('predictions', 'weight'...); `limits` bounds the
    columns and the CSV lines a file may have.
    """
    path, cols = spec, None
    if not os.path.exists(path) and ":" in spec:
        path, cols = spec.rsplit(":", 1)
    if os.path.exists(path):  # a directory, a FIFO or a device is said to be one
        _check_regular_file(path, what)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in KINDS:
        msg = f"{what} {spec!r}: unknown file type {suffix or '(none)'!r}; expected one of " + (
            ", ".join(KINDS)
        )
        raise InputError(msg)
    _check_regular_file(path, what)
    path = os.path.abspath(path)
    opener = {".npy": _open_npy_file, ".npz": _open_npz, ".csv": _open_csv}
    try:
        source = opener.get(suffix, _open_parquet)(path, cols, what, limits)
    except OSError as e:  # PermissionError, an I/O error...
        msg = f"{what} {os.path.basename(path)}: cannot read the file ({_os_reason(e)})"
        raise InputError(msg) from None
    if cols is None and suffix in (".csv", ".parquet") and len(source.names) > 1:
        shown = ", ".join(source.names[:5]) + (", ..." if len(source.names) > 5 else "")
        msg = (
            f"{what} {os.path.basename(path)} has {len(source.names)} columns ({shown}); "
            f"name the ones to use, as FILE:COL[,COL...]"
        )
        raise InputError(msg)
    return source


def _os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _check_regular_file(path: str, what: str) -> None:
    """Refuse what is not a regular file, saying what it is (reading a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        msg = f"{what}: no such file: {path}"
        raise InputError(msg) from None
    except OSError as e:
        msg = f"{what}: cannot reach {path} ({_os_reason(e)})"
        raise InputError(msg) from None
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    for test, kind in kinds:
        if test(mode):
            msg = f"{what}: {path} is {kind}, not a regular file"
            raise InputError(msg)


def _check_columns(count: int, label: str, limits: Limits) -> None:
    if count > limits.max_columns:
        msg = (
            f"{label}: {count:,} columns, more than the limit of {limits.max_columns:,} "
            f"(--max-columns raises it)"
        )
        raise InputError(msg)


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


def _array_source(path, kind, cols, label, member, f, size, limits) -> Source:
    """The Source of the array whose .npy bytes `f` reads; `size`: how many bytes they are."""
    shape, fortran, stored, header = _npy_header(f, label)
    stored = _numeric_dtype(stored, label)
    if len(shape) > 2:
        msg = f"{label}: expected a 1-D or 2-D array; got shape {shape}"
        raise InputError(msg)
    # The header's shape is a claim: the data the file really holds must cover it (a header
    # of a few bytes may claim terabytes), and no work is sized by it before this check.
    claimed = math.prod(shape) * stored.itemsize
    if claimed > size - header:
        msg = (
            f"{label}: the header claims shape {shape} of {stored} ({claimed:,} bytes) but the "
            f"file holds {max(size - header, 0):,} bytes of data; it is truncated or corrupt"
        )
        raise InputError(msg)
    if fortran and len(shape) == 2 and shape[1] > 1:
        msg = f"{label}: a Fortran-ordered array cannot be read by rows; save it in C order"
        raise InputError(msg)
    shape = shape if shape else (1,)
    width = shape[1] if len(shape) == 2 else 1
    if width == 0:
        msg = f"{label}: the array has no columns (shape {shape})"
        raise InputError(msg)
    _check_columns(width, label, limits)
    available = [str(i) for i in range(width)]
    columns = _pick(available, cols, label)
    names = available if columns is None else [available[i] for i in columns]
    return Source(
        path=path,
        kind=kind,
        names=tuple(names),
        rows=shape[0],
        dtype=stored.newbyteorder("="),  # read in native byte order, whatever the file's
        columns=columns,
        member=member,
        header=header,
        shape=tuple(shape),
        stored=stored,
    )


def _open_npy_file(path, cols, what, limits) -> Source:
    label = f"{what} {os.path.basename(path)}"
    with open(path, "rb") as f:
        return _array_source(
            path, ".npy", cols, label, None, f, os.fstat(f.fileno()).st_size, limits
        )


def _open_npz(path, cols, what, limits) -> Source:
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
        size = archive.getinfo(cols + ".npy").file_size  # uncompressed
        try:
            with archive.open(cols + ".npy") as f:
                return _array_source(path, ".npz", None, f"{label}:{cols}", cols, f, size, limits)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            msg = f"{label}:{cols}: a corrupt archive ({_first_line(e)})"
            raise InputError(msg) from None


# --- CSV -----------------------------------------------------------------------------------


def _text_blocks(path: str, label: str, max_line_bytes: int) -> Iterator[list[tuple[int, str]]]:
    """The lines of a text file, numbered from 1, without their ends, in lists (one per block
    read): a line ends with '\n', '\r\n' or '\r' (old Macintosh files). A leading
    byte-order mark is dropped. The file is read in blocks, and a line longer than
    `max_line_bytes` is an InputError before more of it is held: a file without line ends
    costs a block or two, not its size."""
    number = 0

    def lines(complete: bytes):
        nonlocal number
        first, raws = number + 1, complete.splitlines()  # bytes split at \n, \r\n and \r only
        number += len(raws)
        if max(map(len, raws), default=0) > max_line_bytes:
            at = next(i for i, raw in enumerate(raws) if len(raw) > max_line_bytes)
            _long_line(label, first + at, max_line_bytes)
        try:
            texts = list(map(bytes.decode, raws))  # UTF-8, strict
        except UnicodeDecodeError:
            at = next(i for i, raw in enumerate(raws) if not _is_utf8(raw))
            msg = f"{label}: line {first + at} is not UTF-8 text"
            raise InputError(msg) from None
        return list(zip(itertools.count(first), texts))

    with open(path, "rb") as f:
        rest = f.read(len(_BOM))
        if rest == _BOM:
            rest = b""
        while block := f.read(_TEXT_BLOCK_BYTES):
            data = rest + block
            # the last line end, but not a '\r' ending the data: a '\n' may follow it
            cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1))
            if cut < 0:
                rest = data
            else:
                rest = data[cut + 1 :]
                yield lines(data[: cut + 1])
            if len(rest) > max_line_bytes:
                _long_line(label, number + 1, max_line_bytes)
        if rest:
            yield lines(rest)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _long_line(label: str, number: int, limit: int):
    msg = (
        f"{label}: line {number} is longer than the limit of {limit:,} bytes "
        f"(--max-line-bytes raises it)"
    )
    raise InputError(msg)


def _csv_blocks(path: str, label: str, max_line_bytes: int) -> Iterator[list[tuple[int, str]]]:
    """The non-blank numbered lines of a CSV file (the header's too), a list per block read."""
    for block in _text_blocks(path, label, max_line_bytes):
        yield [(i, line) for i, line in block if line.strip()]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _open_csv(path, cols, what, limits) -> Source:
    label = f"{what} {os.path.basename(path)}"
    blocks = _csv_blocks(path, label, limits.max_line_bytes)
    block = next((b for b in blocks if b), [])
    if not block:
        msg = f"{label}: the file is empty"
        raise InputError(msg)
    first = block[0][1]
    _check_columns(first.count(",") + 1, label, limits)
    fields = [s.strip().strip('"') for s in first.split(",")]
    header = not all(_is_number(s) for s in fields)
    rows = len(block) - header + sum(len(b) for b in blocks)
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
        max_line_bytes=limits.max_line_bytes,
    )


def _parse_csv(source: Source, batch: list[tuple[int, str]]) -> np.ndarray:
    try:
        return np.loadtxt(
            io.StringIO("\n".join(line for _, line in batch)),
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
        fields = line.split(",")
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


def _parquet_file(path: str):
    """The file opened by pyarrow, its pages' checksums verified where the writer wrote them
    (a damaged page is then an error, not data)."""
    pq = _pyarrow_parquet(os.path.basename(path))
    return pq.ParquetFile(path, page_checksum_verification=True)


def _open_parquet(path, cols, what, limits) -> Source:
    label = f"{what} {os.path.basename(path)}"
    try:
        with _parquet_file(path) as pf:
            schema, rows = pf.schema_arrow, pf.metadata.num_rows
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        if isinstance(e, InputError):
            raise
        msg = f"{label}: not a readable Parquet file ({_first_line(e)})"
        raise InputError(msg) from None
    _check_columns(len(schema.names), label, limits)
    available = list(schema.names)
    if not available:
        msg = f"{label}: the file has no columns"
        raise InputError(msg)
    columns = _pick(available, cols, label) or tuple(range(len(available)))
    dtypes = []
    for i in columns:
        if (count := available.count(available[i])) > 1:
            msg = f"{label}: {count} columns are named {available[i]!r}; they cannot be told apart"
            raise InputError(msg)
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
