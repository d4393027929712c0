"""Runs CLI commands in a fresh interpreter where importing TensorFlow or Keras fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import json, sys

    class NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError("tflrewrite imported " + name)
            return None

    sys.meta_path.insert(0, NoTensorFlow())
    from tflrewrite.cli import main
    for argv in json.loads(sys.argv[1]):
        code = main(argv)
        assert code == 0, (argv, code)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
    assert not loaded, loaded
    print("ok")
""")


def assert_runs_without_tensorflow(*argvs: list[str]) -> None:
    """Each argv exits 0 and nothing imports TensorFlow on the way."""
    import json

    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps([list(a) for a in argvs])],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
