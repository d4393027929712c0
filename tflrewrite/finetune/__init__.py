"""Fine-tune hook: a short QAT, PQAT, CQAT or PCQAT stage on a Keras model (Keras 3 or
tf_keras), then full-integer int8 through TFLiteConverter and the rewriter's passes.

TensorFlow is an optional extra (`pip install 'tflrewrite[keras]'`): importing this package
does not import it; `finetune()` and `load_model()` do, when called.

    from tflrewrite.finetune import Options, finetune
    result = finetune(model, (x, y), val=(x_val, y_val), options=Options(stage="pcqat"))
    open("model.tflite", "wb").write(result.tflite)
"""

from __future__ import annotations

from tflrewrite.finetune.api import Options, Result, finetune, input_names, load_model
from tflrewrite.finetune.stages import LOSSES, STAGES

__all__ = ["LOSSES", "STAGES", "Options", "Result", "finetune", "input_names", "load_model"]
