"""Every number `tflrewrite audit` prints equals an independent computation over the raw
tensor bytes, made here from the schema bindings alone (not tflrewrite's reader)."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from tflrewrite.cli import main

NUMPY = {
    "FLOAT32": "<f4",
    "FLOAT16": "<f2",
    "FLOAT64": "<f8",
    "INT8": "i1",
    "UINT8": "u1",
    "INT16": "<i2",
    "UINT16": "<u2",
    "INT32": "<i4",
    "UINT32": "<u4",
    "INT64": "<i8",
    "UINT64": "<u8",
    "BOOL": "?",
    "COMPLEX64": "<c8",
    "COMPLEX128": "<c16",
    "BFLOAT16": "<u2",
}
TYPE_NAMES = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
OP_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
FILTER_AXIS = {
    "CONV_2D": 0,
    "CONV_3D": 4,
    "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 0,
    "TRANSPOSE_CONV": 0,
    "BATCH_MATMUL": -1,
}


def expected_audit(path) -> dict:
    raw_bytes = open(path, "rb").read()
    model = fb.ModelT.InitFromPackedBuf(raw_bytes, 0)
    whole = np.frombuffer(raw_bytes, np.uint8)

    def buffer_bytes(i):
        b = model.buffers[i]
        if b.offset > 1:
            return whole[b.offset : b.offset + b.size]
        return np.zeros(0, np.uint8) if b.data is None else np.asarray(b.data, np.uint8)

    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(os.path.basename(path), raw_bytes)
    rows = {}
    for si, sg in enumerate(model.subgraphs):
        filters = {}
        for op in sg.operators or []:
            oc = model.operatorCodes[op.opcodeIndex]
            name = OP_NAMES[max(oc.builtinCode, oc.deprecatedBuiltinCode)]
            if name in FILTER_AXIS and len(op.inputs) > 1:
                filters.setdefault(int(op.inputs[1]), FILTER_AXIS[name])
        for ti, t in enumerate(sg.tensors):
            data = buffer_bytes(t.buffer)
            dtype = TYPE_NAMES[t.type]
            row = {
                "bytes": int(data.size),
                "sparsity": None,
                "unique": None,
                "channel_unique": None,
            }
            if data.size and dtype in NUMPY:
                values = data.view(NUMPY[dtype])
                q = t.quantization
                affine = q is not None and q.zeroPoint is not None and q.scale is not None
                zps = [int(z) for z in q.zeroPoint] if affine and len(q.scale) else []
                per_axis = q is not None and q.scale is not None and len(q.scale) > 1
                items = values.tolist()
                if t.sparsity is None and t.shape is not None and per_axis and len(zps) > 1:
                    shaped = values.reshape(tuple(t.shape))
                    moved = np.moveaxis(shaped, q.quantizedDimension, 0)
                    zeros = sum(
                        sum(1 for v in ch.ravel().tolist() if v == zps[c])
                        for c, ch in enumerate(moved)
                    )
                else:
                    zero = zps[0] if zps and all(z == zps[0] for z in zps) else 0
                    zeros = sum(1 for v in items if v == zero)
                row["sparsity"] = zeros / len(items)
                row["unique"] = len(set(items))
                axis = q.quantizedDimension if per_axis else filters.get(ti)
                if axis is not None and t.sparsity is None and t.shape is not None:
                    shaped = values.reshape(tuple(t.shape))
                    axis = axis % shaped.ndim
                    row["channel_unique"] = max(
                        len(set(np.take(shaped, c, axis=axis).ravel().tolist()))
                        for c in range(shaped.shape[axis])
                    )
            rows[(si, ti)] = row
    return {"bytes": len(raw_bytes), "zip_bytes": sink.tell(), "tensors": rows}


def test_audit_numbers_match_independent_numpy(model_name, model_path, capsys):
    assert main(["audit", str(model_path), "--json", "-"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = expected_audit(model_path)
    assert got["file"] == str(model_path)
    assert got["bytes"] == want["bytes"] == os.path.getsize(model_path)
    assert got["zip_bytes"] == want["zip_bytes"]
    assert len(got["tensors"]) == len(want["tensors"])
    for t in got["tensors"]:
        w = want["tensors"][(t["subgraph"], t["index"])]
        assert t["bytes"] == w["bytes"], t["name"]
        assert t["unique"] == w["unique"], t["name"]
        assert t["channel_unique"] == w["channel_unique"], t["name"]
        if w["sparsity"] is None:
            assert t["sparsity"] is None
        else:
            assert abs(t["sparsity"] - w["sparsity"]) < 1e-12, t["name"]
    by_dtype_total = sum(got["by_dtype"].values())
    assert by_dtype_total == got["constant_bytes"]
    distinct_buffers = {}
    model = fb.ModelT.InitFromPackedBuf(model_path.read_bytes(), 0)
    for si, sg in enumerate(model.subgraphs):
        for ti, t in enumerate(sg.tensors):
            if want["tensors"][(si, ti)]["bytes"]:
                distinct_buffers[t.buffer] = want["tensors"][(si, ti)]["bytes"]
    assert got["constant_bytes"] == sum(distinct_buffers.values())
