"""TensorFlow is an optional extra: importing tflrewrite and running the rewrite, audit and
verify paths must not import it (it costs seconds and gigabytes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_cli_paths_do_not_import_tensorflow(example_model, tmp_path):
    out = tmp_path / "out.tflite"
    script = textwrap.dedent(f"""
        import sys

        class NoTensorFlow:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                    raise ImportError("tflrewrite imported " + name)
                return None

        sys.meta_path.insert(0, NoTensorFlow())
        import tflrewrite
        from tflrewrite.cli import main
        assert main([{str(example_model)!r}, "-o", {str(out)!r}]) == 0
        assert main(["audit", {str(out)!r}]) == 0
        assert main(["verify", {str(example_model)!r}, {str(out)!r}, "--samples", "2"]) == 0
        assert main(["recipes"]) == 0
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not loaded, loaded
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
