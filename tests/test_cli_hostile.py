"""`bceloss eval` on hostile files and odd arrays (issue #21): memory bounded by what a file
really holds, one line on stderr and exit status 2 for what cannot be used, never a wrong
number."""

from __future__ import annotations

import builtins
import gc
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bceloss
from bceloss.cli import main, sources, stream

ROOT = Path(__file__).resolve().parents[1]
# where the bceloss these tests import lives (an install, or src/ with the extension built in
# place): the subprocesses import the same
_IMPORTED = os.path.dirname(os.path.dirname(bceloss.__file__))


def run(argv, capsys):
    """The command run in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(argv, capsys, *expected: str) -> str:
    """Run the command and check it refuses: exit 2, nothing on stdout, one line on stderr."""
    code, out, err = run(["eval", *argv], capsys)
    assert (code, out) == (2, ""), (code, out, err)
    assert err.startswith("bceloss eval: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


def npy_header_only(path: Path, shape: tuple, descr: str = "<f8", data: bytes = b"") -> None:
    """A .npy file of a version 1.0 header claiming `shape`, followed by `data` only."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data)


def bounded(argv: list[str], cwd: Path, limit_mib: int = 1024) -> tuple[int, str, float]:
    """The command run in a child process whose address space is limited to `limit_mib`
    (a regression then fails with MemoryError, not by exhausting the machine): its exit
    status, its stderr, and its peak resident memory in MiB (VmHWM: getrusage's ru_maxrss
    can carry the forking parent's, pytest's)."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc/self/status to read the peak resident memory from")
    code = (
        "import re, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit_mib << 20}, {limit_mib << 20}))\n"
        "from bceloss.cli import main\n"
        "try:\n"
        f"    status = main({argv!r})\n"
        "finally:\n"
        "    hwm = re.search(r'VmHWM:\\s*(\\d+) kB', open('/proc/self/status').read())\n"
        "    print(int(hwm.group(1)) / 1024, file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    env = {**os.environ, "PYTHONPATH": _IMPORTED}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    *err, peak = done.stderr.splitlines()
    return done.returncode, "".join(line + "\n" for line in err), float(peak)


def one_line(err: str, *expected: str) -> None:
    assert err.startswith("bceloss eval: "), err
    assert err.count("\n") == 1, err
    for text in expected:
        assert text in err, err


# --- bounded memory ------------------------------------------------------------------------


def test_npy_header_claiming_more_than_the_file_holds_is_refused(tmp_path, capsys):
    # 192 bytes claiming 48 GB: refused before anything is sized by the claim
    npy_header_only(tmp_path / "huge.npy", (2, 3_000_000_000), data=bytes(64))
    assert (tmp_path / "huge.npy").stat().st_size == 192
    code, err, peak = bounded(["eval", "huge.npy", "huge.npy"], tmp_path)
    assert code == 2
    one_line(
        err,
        "predictions huge.npy: the header claims shape (2, 3000000000)",
        "48,000,000,000 bytes",
        "holds 64 bytes",
    )
    assert peak < 150
    # (1, 10^7) in a 128-byte file used to cost 1.5 GB (a name for every claimed column)
    npy_header_only(tmp_path / "wide.npy", (1, 10_000_000))
    code, err, peak = bounded(["eval", "wide.npy", "wide.npy"], tmp_path)
    assert code == 2
    one_line(err, "wide.npy: the header claims shape (1, 10000000)")
    assert peak < 150
    # a valid file cut short is refused the same way
    np.save(tmp_path / "x.npy", np.zeros((100, 2)))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-8])
    refused([tmp_path / "cut.npy", tmp_path / "x.npy"], capsys, "cut.npy: the header claims")


def test_column_count_is_bounded(tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.zeros((2, 30)))
    (tmp_path / "w.csv").write_text(",".join(["0.5"] * 30) + "\n")
    for name in ("w.npy", "w.csv"):
        refused(
            [tmp_path / name, tmp_path / name, "--max-columns", 20],
            capsys,
            f"predictions {name}: 30 columns, more than the limit of 20 (--max-columns",
        )
        src = f"{tmp_path / name}:{','.join(str(i) for i in range(30))}"
        code, _, err = run(["eval", src, src, "--max-columns", 30], capsys)
        assert (code, err) == (0, "")
    # the default bound: a 10^6-column CSV line (one row) is refused, not parsed
    (tmp_path / "million.csv").write_text(",".join(["0"] * 1_000_000) + "\n")
    refused(
        [tmp_path / "million.csv", tmp_path / "million.csv", "--max-line-bytes", 10**7],
        capsys,
        f"more than the limit of {sources.DEFAULT_MAX_COLUMNS:,}",
    )


def test_csv_line_length_is_bounded(tmp_path, capsys):
    # a sparse 2 GiB file without a line end, then a header followed by 2 GiB of NULs: each
    # is refused after a block or two, not read as one line
    with open(tmp_path / "z.csv", "wb") as f:
        f.truncate(2 << 30)
    with open(tmp_path / "nul.csv", "wb") as f:
        f.write(b"a,b\n")
        f.truncate(2 << 30)
    code, err, peak = bounded(["eval", "z.csv:0", "z.csv:0"], tmp_path)
    assert code == 2
    one_line(err, "predictions z.csv: line 1 is longer than the limit of 1,048,576 bytes")
    assert "--max-line-bytes" in err
    assert peak < 150
    code, err, peak = bounded(["eval", "nul.csv:a", "nul.csv:b"], tmp_path)
    assert code == 2
    one_line(err, "predictions nul.csv: line 2 is longer than the limit")
    assert peak < 150
    # the limit is an option
    (tmp_path / "ok.csv").write_text("0.25,1\n-3,0\n")
    ok = [f"{tmp_path / 'ok.csv'}:0", f"{tmp_path / 'ok.csv'}:1"]
    refused([*ok, "--max-line-bytes", 5], capsys, "line 1 is longer than the limit of 5 bytes")
    assert run(["eval", *ok, "--max-line-bytes", 7], capsys)[0] == 0


def test_many_long_csv_lines_are_parsed_in_bounded_batches(tmp_path, capsys):
    # rows of 40 columns, 65,536 to a chunk: the text parsed at once stays a few MiB
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(3000, 40)), rng.integers(0, 2, (3000, 40)).astype(float)
    np.savetxt(tmp_path / "x.csv", x, fmt="%.17g", delimiter=",")
    np.savetxt(tmp_path / "y.csv", y, fmt="%g", delimiter=",")
    cols = ",".join(str(i) for i in range(40))
    code, out, _ = run(
        ["eval", f"{tmp_path / 'x.csv'}:{cols}", f"{tmp_path / 'y.csv'}:{cols}"], capsys
    )
    assert code == 0
    assert float(out) == float(bceloss.binary_cross_entropy_with_logits(x, y))


# --- wrong numbers -------------------------------------------------------------------------


def test_csv_byte_order_mark_is_dropped(tmp_path, capsys):
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf2.0,0.0\n-1.0,1.0\n0.5,1.0\n")
    src = tmp_path / "bom.csv"
    code, out, _ = run(["eval", f"{src}:0", f"{src}:1", "--json"], capsys)
    x, y = np.array([2.0, -1.0, 0.5]), np.array([0.0, 1.0, 1.0])
    assert code == 0
    assert '"elements": 3' in out
    assert f'"loss": {float(bceloss.binary_cross_entropy_with_logits(x, y))!r}' in out
    # with a header, the first column's name is 'x', not '\ufeffx'
    (tmp_path / "bomh.csv").write_bytes("\ufeffx,y\n2.0,0.0\n".encode())
    code, _, err = run(["eval", f"{tmp_path / 'bomh.csv'}:x", f"{tmp_path / 'bomh.csv'}:y"], capsys)
    assert (code, err) == (0, "")


def test_csv_with_cr_line_ends_is_read_right(tmp_path, capsys):
    rows = ["2.0,0.0", "-1.0,1.0", "0.5,1.0"]
    for name, end in (("lf.csv", "\n"), ("cr.csv", "\r"), ("crlf.csv", "\r\n")):
        (tmp_path / name).write_bytes(end.join(["x,y", *rows]).encode() + end.encode())
    got = {
        name: run(["eval", f"{tmp_path / name}:x", f"{tmp_path / name}:y", "--json"], capsys)
        for name in ("lf.csv", "cr.csv", "crlf.csv")
    }
    assert got["cr.csv"] == got["lf.csv"] == got["crlf.csv"]
    assert got["cr.csv"][0] == 0
    assert '"elements": 3' in got["cr.csv"][1]


def test_crlf_across_a_block_boundary(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_TEXT_BLOCK_BYTES", 4)
    (tmp_path / "t.csv").write_bytes(b"1,0\r\n2,1\r\n\r\n3,1\r\n")
    blocks = sources._text_blocks(str(tmp_path / "t.csv"), "t.csv", 100)
    lines = [line for block in blocks for line in block]
    assert lines == [(1, "1,0"), (2, "2,1"), (3, ""), (4, "3,1")]


def test_labels_outside_0_1_are_refused(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("x,y\n1.0,0.5\n2.0,-1.0\n0.5,3.0\n")
    src = tmp_path / "t.csv"
    refused(
        [f"{src}:x", f"{src}:y"],
        capsys,
        "labels t.csv hold values outside [0, 1]: from -1.0 to 3.0",
        "--allow-out-of-range-labels",
    )
    code, out, _ = run(["eval", f"{src}:x", f"{src}:y", "--allow-out-of-range-labels"], capsys)
    x, y = np.array([1.0, 2.0, 0.5]), np.array([0.5, -1.0, 3.0])
    assert (code, float(out)) == (0, float(bceloss.binary_cross_entropy_with_logits(x, y)))
    # soft labels in [0, 1] are labels
    (tmp_path / "soft.csv").write_text("x,y\n1.0,0.5\n2.0,0.0\n0.5,1.0\n")
    assert run(["eval", f"{tmp_path / 'soft.csv'}:x", f"{tmp_path / 'soft.csv'}:y"], capsys)[0] == 0


def test_a_table_of_several_columns_needs_its_columns_named(tmp_path, capsys):
    (tmp_path / "three.csv").write_text("x,y,z\n1,0,1\n2,1,0\n")
    src = tmp_path / "three.csv"
    refused([src, src], capsys, "predictions three.csv has 3 columns (x, y, z); name the ones")
    assert run(["eval", f"{src}:x,y", f"{src}:z,y"], capsys)[0] == 0
    (tmp_path / "one.csv").write_text("x\n1\n2\n")  # one column: nothing to choose
    assert run(["eval", tmp_path / "one.csv", f"{src}:y"], capsys)[0] == 0


def test_parquet_page_checksums_are_verified(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
    x = np.linspace(-3, 3, 1000)
    table = pa.table({"x": x, "y": (np.arange(1000) % 2).astype(float)})
    pq.write_table(table, tmp_path / "t.parquet", write_page_checksum=True, compression="none")
    data = bytearray((tmp_path / "t.parquet").read_bytes())
    data[data.find(x[500].tobytes()) + 7] ^= 0x40  # x[500]'s exponent: a huge value
    (tmp_path / "flip.parquet").write_bytes(data)
    src = tmp_path / "flip.parquet"
    refused([f"{src}:x", f"{src}:y"], capsys, "flip.parquet: cannot read the Parquet data", "CRC")


# --- crashes -------------------------------------------------------------------------------


def test_big_endian_npy_gives_the_native_answer_on_both_paths(tmp_path, capsys):
    rng = np.random.default_rng(2)
    for rows in (1000, 70_000):  # below and above 65,536 rows: both paths of the library
        x, y = rng.normal(size=rows), (rng.random(rows) < 0.5).astype(float)
        np.save(tmp_path / "le.npy", x)
        np.save(tmp_path / "be.npy", x.astype(">f8"))
        np.save(tmp_path / "y.npy", y.astype(">f8"))
        little = run(["eval", tmp_path / "le.npy", tmp_path / "y.npy", "--json"], capsys)
        big = run(["eval", tmp_path / "be.npy", tmp_path / "y.npy", "--json"], capsys)
        assert big == little
        assert big[0] == 0
        expected = float(bceloss.binary_cross_entropy_with_logits(x, y))
        assert f'"loss": {expected!r}' in big[1]


def test_unreadable_file(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "x.npy", np.zeros(3))
    secret = str(tmp_path / "x.npy")

    def no_access(file, *args, **kwargs):
        if str(file) == secret:
            raise PermissionError(13, "Permission denied", file)
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(sources, "open", no_access, raising=False)
    refused([secret, secret], capsys, "predictions x.npy: cannot read the file (Permission denied)")


def test_unreadable_while_streaming(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "x.npy", np.zeros(3))
    opened = []

    def fails_later(file, *args, **kwargs):
        opened.append(file)
        if len(opened) > 2:  # after both files were opened for their headers
            raise PermissionError(13, "Permission denied", file)
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(sources, "open", fails_later, raising=False)
    refused([tmp_path / "x.npy", tmp_path / "x.npy"], capsys, "x.npy: cannot read")


def test_parquet_duplicate_column_names(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
    t = pa.Table.from_arrays([pa.array([1.0, 2.0]), pa.array([0.0, 1.0])] * 2, names=list("xyxz"))
    pq.write_table(t, tmp_path / "dup.parquet")
    src = tmp_path / "dup.parquet"
    refused([f"{src}:x", f"{src}:y"], capsys, "dup.parquet: 2 columns are named 'x'")
    assert run(["eval", f"{src}:z", f"{src}:y"], capsys)[0] == 0


def test_corrupted_parquet(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
    pq.write_table(pa.table({"x": np.linspace(-1, 1, 500), "y": np.ones(500)}), tmp_path / "t.pq")
    data = bytearray((tmp_path / "t.pq").read_bytes())
    footer, pages = bytearray(data), bytearray(data)
    footer[-200:-8] = b"\x07" * 192  # the metadata
    pages[len(data) // 3 : len(data) // 3 + 64] = b"\xff" * 64  # the data pages
    for name, damaged in (("footer.parquet", footer), ("pages.parquet", pages)):
        (tmp_path / name).write_bytes(damaged)
        refused([f"{tmp_path / name}:x", f"{tmp_path / name}:y"], capsys, f"{name}: ")


def test_array_without_columns(tmp_path, capsys):
    np.save(tmp_path / "z.npy", np.zeros((6, 0)))
    src = tmp_path / "z.npy"
    refused([src, src, "--per-label"], capsys, "z.npy: the array has no columns (shape (6, 0))")


def test_huge_chunk_size(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("x,y\n1,0\n2,1\n")
    for src in ("csv", "npy"):
        path = tmp_path / "t.csv"
        if src == "npy":
            np.save(tmp_path / "t.npy", np.array([1.0, 2.0]))
            argv = [tmp_path / "t.npy", f"{path}:y"]
        else:
            argv = [f"{path}:x", f"{path}:y"]
        code, out, err = run(["eval", *argv, "--chunk-size", 10**30], capsys)
        assert (code, err) == (0, "")
        expected = bceloss.binary_cross_entropy_with_logits(
            np.array([1.0, 2.0]), np.array([0, 1.0])
        )
        assert float(out) == float(expected)


def test_memory_error_is_one_line(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "x.npy", np.zeros(3))

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(stream, "evaluate", exhausted)
    refused([tmp_path / "x.npy", tmp_path / "x.npy"], capsys, "out of memory", "--chunk-size")


def test_fifo_directory_and_device_are_named_for_what_they_are(tmp_path, capsys):
    np.save(tmp_path / "y.npy", np.zeros(1))
    y = tmp_path / "y.npy"
    (tmp_path / "d.npy").mkdir()
    refused([tmp_path / "d.npy", y], capsys, "d.npy is a directory")
    refused([tmp_path, y], capsys, "is a directory")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "f.csv")
        refused([tmp_path / "f.csv", y], capsys, "f.csv is a named pipe (FIFO)")
    if os.path.exists("/dev/null"):
        refused(["/dev/null", y], capsys, "/dev/null is a character device")
    refused([tmp_path / "nope.npy", y], capsys, "no such file")


def test_inproc_scheduler_is_one_line_and_no_late_traceback(tmp_path):
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    np.save(tmp_path / "x.npy", np.zeros(3))
    env = {**os.environ, "PYTHONPATH": _IMPORTED}
    done = subprocess.run(
        [sys.executable, "-m", "bceloss", "eval", "x.npy", "x.npy", "--scheduler", "inproc://x"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "inproc://" in done.stderr


def test_a_client_that_fails_to_start_is_closed(tmp_path, monkeypatch):
    # a Client whose constructor raises is closed at once, not by __del__ 20 s later
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    from bceloss.cli import cluster

    monkeypatch.setattr(cluster, "_reach", lambda address: None)
    np.save(tmp_path / "x.npy", np.zeros(3))
    x = str(tmp_path / "x.npy")
    job = stream.plan(sources.open_source(x, what="p"), sources.open_source(x, what="l"))
    with pytest.raises(sources.InputError, match="cannot use the Dask scheduler"):
        cluster.evaluate_on_cluster(job, "inproc://nothing")
    clients = [o for o in gc.get_objects() if type(o) is distributed.Client]
    assert clients  # the failed Client, still referenced by the traceback's frames
    assert all(c.status == "closed" for c in clients)


def test_version(capsys):
    assert run(["--version"], capsys) == (0, f"bceloss {bceloss.__version__}\n", "")
