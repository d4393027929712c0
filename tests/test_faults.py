"""Faults are contained: a runtime that crashes while the report or `verify` runs it ends a
child process, not the command (one line, exit 1, the output already written); a full
disk, a folder that cannot be written, SIGINT and SIGTERM in the middle of a write leave no
partial output and no temporary file, with one line and their exit code.

The crashes come from a crafted model that crashes LiteRT itself (a sparse weight whose CSR
segments lie), and from a stand-in runtime: the real LiteRT, whose interpreter kills itself
(SIGSEGV while it runs a model, abort while it loads one), patched in by a stand-in for the
Python executable that runs the child. The parent process never sees the patch, so these
tests pass only where the models do run in a child. A full disk is a file size limit
(RLIMIT_FSIZE, EFBIG: the same failed write as ENOSPC, without root or a tmpfs); an
unwritable folder is one under /sys (refused even to root) or, not as root, chmod 555.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tflrewrite import reader, runtime
from tflrewrite.cli import main
from tflrewrite.errors import ModelError, RuntimeCrashError, TflRewriteError
from tflrewrite.fileio import atomic_write

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def one_line(err: str, *names: str | os.PathLike) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"want one line on stderr, got {err!r}"
    assert lines[0].startswith("tflrewrite: ") and "Traceback" not in lines[0], lines[0]
    for name in names:
        assert os.fspath(name) in lines[0], f"{lines[0]!r} does not name {os.fspath(name)!r}"
    return lines[0]


@pytest.fixture
def model(tmp_path, example_model) -> Path:
    path = tmp_path / "in" / "digits.tflite"
    path.parent.mkdir()
    path.write_bytes(example_model.read_bytes())
    return path


# ------------------------------------------------------------------ the child process
# Functions the child runs: this module is importable there (the child gets the parent's
# import path), and these do nothing when it is imported.


def die(signum: int) -> None:
    os.kill(os.getpid(), signum)


def run_then_die(path: str) -> None:
    runner = runtime.load(path)
    runner.run(runtime.random_inputs([runner], 1, 0)[0])
    print("about to fail", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGSEGV)


def refuse(path: str) -> None:
    raise ModelError(path, "not a model this test likes")


def chatter(text: str) -> int:
    print(text, file=sys.stderr)
    return len(text)


def square_with_progress(values: list[int]) -> list[int]:
    for i in range(len(values)):
        runtime.progress(i + 1, len(values))
    return [v * v for v in values]


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGABRT, signal.SIGKILL])
def test_a_child_killed_by_a_signal_is_a_runtime_crash(signum):
    with pytest.raises(RuntimeCrashError, match=signal.Signals(signum).name) as crash:
        runtime.isolated(die, signum)
    assert crash.value.exit_code == 1 and "\n" not in str(crash.value)


def test_a_crash_names_the_model_and_what_the_runtime_was_doing(example_model):
    with pytest.raises(RuntimeCrashError) as crash:
        runtime.isolated(run_then_die, str(example_model))
    assert str(crash.value) == (
        f"{example_model}: LiteRT crashed running it (killed by SIGSEGV: "
        f"{signal.strsignal(signal.SIGSEGV)}; its last words: about to fail)"
    )


def test_a_child_returns_results_raises_errors_and_passes_on_its_output(capsys):
    ticks = []
    with runtime.Child() as child:
        assert child.call(square_with_progress, [1, 2, 3], progress=lambda *t: ticks.append(t)) == [
            1,
            4,
            9,
        ]
        with pytest.raises(ModelError, match="not a model this test likes") as refused:
            child.call(refuse, "/some/model.tflite")
        assert refused.value.path == "/some/model.tflite"
        with pytest.raises(ZeroDivisionError) as bug:
            child.call(divmod, 1, 0)
        assert "child process" in "".join(bug.value.__notes__)
        assert child.call(chatter, "said in the child") == len("said in the child")
    assert ticks == [(1, 3), (2, 3), (3, 3)]
    assert capsys.readouterr().err == "said in the child\n"


def test_an_interrupt_ends_the_child():
    child = runtime.Child()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            child.call(time.sleep, 60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert child._process.returncode is not None  # ended and reaped, not left running


# ------------------------------------------------------------------ a crashing runtime

STANDIN = textwrap.dedent("""
    # A stand-in for the Python that runs tflrewrite's runtime child: the real LiteRT, whose
    # interpreter kills itself where CRASH says; then the child's own code (python -c CODE).
    import os, signal, sys
    from ai_edge_litert import interpreter

    CRASH = {crash!r}

    def crash(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGSEGV if CRASH == "run" else signal.SIGABRT)

    if CRASH == "run":
        interpreter.Interpreter.invoke = crash
    else:
        interpreter.Interpreter.__init__ = crash
    assert sys.argv[1] == "-c"
    code = sys.argv[2]
    sys.argv = ["-c", *sys.argv[3:]]
    exec(compile(code, "<string>", "exec"))
""")


def standin(folder: Path, crash: str) -> Path:
    """An executable that runs Python with LiteRT crashing at `crash` ("run" or "load")."""
    script = folder / f"standin_{crash}.py"
    script.write_text(STANDIN.format(crash=crash))
    launcher = folder / f"python_{crash}"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    launcher.chmod(0o755)
    return launcher


CRASHES = {
    "run": f"LiteRT crashed running it (killed by SIGSEGV: {signal.strsignal(signal.SIGSEGV)})",
    "load": f"LiteRT crashed loading it (killed by SIGABRT: {signal.strsignal(signal.SIGABRT)})",
}


@pytest.mark.parametrize("crash", ["run", "load"])
def test_rewrite_whose_verify_crashes_writes_the_output_then_one_line_exit_1(
    crash, model, tmp_path, monkeypatch
):
    out = tmp_path / "out" / "digits.out.tflite"
    out.parent.mkdir()
    assert run_cli([str(model), "-o", str(out), "--prune", "0.5", "--no-verify"])[0] == 0
    whole = out.read_bytes()
    out.unlink()

    monkeypatch.setattr(sys, "executable", str(standin(tmp_path, crash)))
    code, stdout, stderr = run_cli([str(model), "-o", str(out), "--prune", "0.5"])
    assert code == 1
    line = one_line(stderr, out)
    # The input runs first: it is the model LiteRT was loading or running when it died.
    assert f"{model}: {CRASHES[crash]}" in line and "is written" in line
    assert out.read_bytes() == whole and reader.read(out).subgraphs
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    assert f"verify: {model}: {CRASHES[crash]}" in stdout  # the report, as far as it got


def test_rewrite_with_layer_errors_whose_runtime_crashes(model, tmp_path, monkeypatch):
    out = tmp_path / "digits.int8.tflite"
    monkeypatch.setattr(sys, "executable", str(standin(tmp_path, "run")))
    samples = str(ROOT / "examples" / "digits_samples.npz")
    argv = [str(model), "-o", str(out), "--quantize", "int8", "--calibration", samples]
    code, stdout, stderr = run_cli([*argv, "--json", "-"])
    assert code == 1 and CRASHES["run"] in one_line(stderr, out)
    assert reader.read(out).subgraphs
    report = json.loads(stdout)
    assert CRASHES["run"] in report["crash"] and report["verify"]["error"] == report["crash"]
    assert "layers" not in report  # not run once the runtime has crashed


@pytest.mark.parametrize("crash", ["run", "load"])
def test_verify_whose_runtime_crashes_is_one_line_exit_1(crash, model, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(standin(tmp_path, crash)))
    code, stdout, stderr = run_cli(["verify", str(model), str(model), "--samples", "2"])
    assert code == 1 and stdout == ""
    assert CRASHES[crash] in one_line(stderr, model)


def test_crash_in_a_real_process_ends_with_exit_1(model, tmp_path):
    """The whole command as a process (its quick exit included): one line, exit 1."""
    out = tmp_path / "out.tflite"
    code = (
        f"import sys; sys.executable = {str(standin(tmp_path, 'run'))!r}; "
        "from tflrewrite.__main__ import run; run()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(model), "-o", str(out), "--cluster", "8"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=ROOT,
    )
    assert done.returncode == 1, done.stderr
    assert CRASHES["run"] in one_line(done.stderr, out)
    assert reader.read(out).subgraphs


# ------------------------------------------------------------------ a model that crashes LiteRT


def run_once(path: str) -> None:
    runner = runtime.load(path)
    runner.run(runtime.random_inputs([runner], 1, 0)[0])


@pytest.fixture
def crashing_model(model, tmp_path) -> Path:
    """The example model with block-sparse FULLY_CONNECTED weights (--target cpu), whose last
    CSR segment then claims the index vector's largest count: LiteRT checks the indices but
    not the segments, and its sparse kernel reads far past the weights (SIGSEGV here)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    sparse = tmp_path / "sparse.tflite"
    argv = [str(model), "-o", str(sparse), "--no-verify", "--target", "cpu"]
    assert run_cli([*argv, "--prune", "0.5", "--prune-pattern", "1x4"])[0] == 0
    m = fb.ModelT.InitFromPackedBuf(bytearray(sparse.read_bytes()), 0)
    corrupted = 0
    for t in m.subgraphs[0].tensors:
        if t.sparsity is not None:
            segments = t.sparsity.dimMetadata[1].arraySegments
            values = np.asarray(segments.values).copy()
            values[-1] = np.iinfo(values.dtype).max
            segments.values = values
            corrupted += 1
    assert corrupted, "the cpu target wrote no sparse weights"
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "crashes-litert.tflite"
    path.write_bytes(builder.Output())
    try:
        reader.read(path)
    except TflRewriteError as e:
        pytest.skip(f"the reader refuses the crafted model, so LiteRT never sees it: {e}")
    try:
        runtime.isolated(run_once, str(path))
    except RuntimeCrashError:
        return path
    except TflRewriteError as e:
        pytest.skip(f"this LiteRT refuses the crafted model instead of crashing: {e}")
    pytest.skip("this LiteRT runs the crafted model without crashing (it reads memory it may)")


def test_verify_of_a_model_that_crashes_litert(crashing_model):
    """As a process: were LiteRT to run in the command's own process, it would die."""
    done = subprocess.run(
        [sys.executable, "-m", "tflrewrite", "verify", str(crashing_model), str(crashing_model)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=ROOT,
    )
    assert done.returncode == 1 and done.stdout == "", done.stderr
    line = one_line(done.stderr, crashing_model)
    assert f"{crashing_model}: LiteRT crashed running it (killed by SIGSEGV" in line


def test_rewrite_of_a_model_that_crashes_litert_writes_it_then_exits_1(crashing_model, tmp_path):
    out = tmp_path / "out" / "rewritten.tflite"
    out.parent.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "tflrewrite", str(crashing_model), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=ROOT,
    )
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr, crashing_model, out)
    assert "LiteRT crashed running it (killed by SIGSEGV" in line and "is written" in line
    assert reader.read(out).subgraphs and listing(out.parent) == [out.name]


# ------------------------------------------------------------------ writes that fail


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_failed_fill_leaves_nothing_and_says_why(tmp_path):
    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "out.bin"
    with pytest.raises(TflRewriteError, match=f"{target}: cannot write it: No space left"):
        atomic_write(target, full)
    assert listing(tmp_path) == []

    def interrupted(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert listing(tmp_path) == []


def test_atomic_write_gives_a_new_files_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "out.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o644


def _small_file_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no file size limit here")
def test_full_disk_leaves_no_output_and_no_temporary_file(model, tmp_path):
    """A file size limit below the output's size: the write fails part-way, as on a full
    disk (EFBIG instead of ENOSPC). Exit 2, one line, nothing left in the folder."""
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "digits.out.tflite"
    limit = model.stat().st_size // 4
    done = subprocess.run(
        [sys.executable, "-m", "tflrewrite", str(model), "-o", str(out), "--no-verify"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=ROOT,
        preexec_fn=_small_file_limit(limit),
    )
    assert done.returncode == 2, done.stderr
    assert "cannot write it: File too large" in one_line(done.stderr, out)
    assert done.stdout == ""
    assert listing(folder) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sysfs is Linux's")
def test_output_folder_that_refuses_files_even_to_root(model, tmp_path):
    out = Path("/sys/tflrewrite-test.tflite")
    before = listing(out.parent)
    code, stdout, stderr = run_cli([str(model), "-o", str(out)])
    assert code == 2 and stdout == ""
    assert "cannot write it: " in one_line(stderr, out)
    assert listing(out.parent) == before


def test_read_only_folder(model, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod 555 stops nobody")
        out = folder / "out.tflite"
        code, _, stderr = run_cli([str(model), "-o", str(out)])
        assert code == 2 and "Permission denied" in one_line(stderr, out)
        assert listing(folder) == []
    finally:
        folder.chmod(0o755)


def test_output_that_is_not_a_regular_file_is_never_replaced(model, tmp_path):
    fifo = tmp_path / "pipe.tflite"
    os.mkfifo(fifo)
    code, _, stderr = run_cli([str(model), "-o", str(fifo), "--force"])
    assert code == 2 and "not a regular file" in one_line(stderr, fifo)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert listing(tmp_path) == ["in", "pipe.tflite"]


def test_report_json_to_an_unwritable_place_is_one_line(model, tmp_path):
    out = tmp_path / "out.tflite"
    bad = tmp_path / "no-such-folder" / "report.json"
    code, _, stderr = run_cli([str(model), "-o", str(out), "--no-verify", "--json", str(bad)])
    assert code == 2 and "No such file or directory" in one_line(stderr, bad)
    assert listing(tmp_path) == ["in", "out.tflite"]


# ------------------------------------------------------------------ interrupted writes

BIG_MB = 128


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    """A float model of BIG_MB megabytes (one FULLY_CONNECTED), so that its write lasts long
    enough to be caught in the middle."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    inputs, outputs = 4096, BIG_MB * 10**6 // (4 * 4096)
    m = fb.ModelT()
    m.version = 3
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.FULLY_CONNECTED
    m.operatorCodes = [code]
    weights = np.random.default_rng(0).standard_normal((outputs, inputs), dtype=np.float32)
    m.buffers = [fb.BufferT(), fb.BufferT()]
    m.buffers[1].data = weights.view(np.uint8).reshape(-1)
    tensors = []
    for name, shape, buffer in [("x", [1, inputs], 0), ("w", [outputs, inputs], 1)]:
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), shape, fb.TensorType.FLOAT32, buffer
        tensors.append(t)
    y = fb.TensorT()
    y.name, y.shape, y.type, y.buffer = b"y", [1, outputs], fb.TensorType.FLOAT32, 0
    tensors.append(y)
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, -1], [2]
    op.builtinOptionsType = fb.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = fb.FullyConnectedOptionsT()
    sg = fb.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [0], [2], [op]
    m.subgraphs = [sg]
    builder = flatbuffers.Builder(weights.nbytes + 4096)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path_factory.mktemp("big") / "big.tflite"
    path.write_bytes(builder.Output())
    return path


def _interrupt_while_writing(big: Path, folder: Path, signum: int) -> subprocess.Popen | None:
    """Start a rewrite of `big` into `folder`, stop it the moment its temporary file
    appears, send `signum`, let it go on. None where the write won the race (the output
    was already in place when the process stopped)."""
    out = folder / "big.out.tflite"
    process = subprocess.Popen(
        [sys.executable, "-m", "tflrewrite", str(big), "-o", str(out), "--no-verify"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while not os.listdir(folder):
        assert process.poll() is None, f"ended before writing: {process.communicate()}"
        assert time.monotonic() < deadline, "no temporary file appeared"
        time.sleep(0.0005)
    process.send_signal(signal.SIGSTOP)
    names = os.listdir(folder)
    if out.name in names or not names:
        process.send_signal(signal.SIGCONT)
        process.communicate()
        for name in os.listdir(folder):
            os.unlink(folder / name)
        return None
    assert len(names) == 1 and names[0].endswith(".tmp"), names
    process.send_signal(signum)
    process.send_signal(signal.SIGCONT)
    return process


@pytest.mark.parametrize(
    "signum, code, word",
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_signal_in_the_middle_of_a_write_leaves_nothing(big_model, tmp_path, signum, code, word):
    folder = tmp_path / "out"
    folder.mkdir()
    for _ in range(3):
        process = _interrupt_while_writing(big_model, folder, signum)
        if process is not None:
            break
    else:
        pytest.fail("the write always finished before the process could be stopped")
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert one_line(stderr) == f"tflrewrite: {word}" and stdout == ""
    assert listing(folder) == []
