"""`fruitlens export`: one ONNX graph, photo pixels → class probabilities, for an app or a server.

input  ``images``: (N, S, S, 3) uint8 RGB, S = 224 or the run's --image-size (the engine export's own),
       already decoded and resized (bicubic, as ``images.decode_rgb`` does; the resize stays outside the
       graph, in the caller's image library)
output ``probabilities``: (N, classes) float32, in the order of the ``labels`` metadata (a JSON list)

Built with the ``onnx`` package by appending nodes around the engine's MobileNetV2 export:
Cast → Div/Sub (``preprocess_input``) → MobileNetV2 → Sub/Mul (PCA centring/scaling) → MatMul (PCA
projection) → Gemm (logistic regression) → Softmax. No Spark or TensorFlow involved.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fruitlens import __version__
from fruitlens.classify.predictor import Head, local_predictor_dir
from fruitlens.state.layout import PREDICTOR_MODEL

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


def build_model(engine_path: Path, head: Head):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(engine_path))
    graph = model.graph
    (engine_in,), (engine_out,) = graph.input, graph.output
    batch = engine_in.type.tensor_type.shape.dim[0].dim_param or "N"
    side = engine_in.type.tensor_type.shape.dim[1].dim_value or 224  # the size the features were made at

    def const(name: str, value) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    pre = [
        helper.make_node("Cast", [INPUT_NAME], ["fl_pixels"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["fl_pixels", const("fl_127_5", 127.5)], ["fl_scaled"]),
        helper.make_node("Sub", ["fl_scaled", const("fl_one", 1.0)], [engine_in.name]),
    ]
    post, x = [], engine_out.name
    if head.components is not None:
        post += [
            helper.make_node("Sub", [x, const("fl_pca_mean", head.mean)], ["fl_centred"]),
            helper.make_node("Mul", ["fl_centred", const("fl_pca_scale", head.scale)], ["fl_standardised"]),
            helper.make_node("MatMul", ["fl_standardised", const("fl_pca_components", head.components)],
                             ["fl_pca"]),
        ]
        x = "fl_pca"
    post += [
        helper.make_node("Gemm", [x, const("fl_lr_coefficients", head.coefficients),
                                  const("fl_lr_intercepts", head.intercepts)], ["fl_logits"], transB=1),
        helper.make_node("Softmax", ["fl_logits"], [OUTPUT_NAME], axis=-1),
    ]
    nodes = pre + list(graph.node) + post
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [batch, side, side, 3]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, len(head.labels)]))
    graph.name = "fruitlens_classifier"
    model.doc_string = (f"fruitlens: (N,{side},{side},3) uint8 RGB, resized bicubic → MobileNetV2 → PCA → "
                        "logistic regression → class probabilities (order: metadata 'labels')")
    del model.metadata_props[:]
    for key, value in {"labels": json.dumps(head.labels, ensure_ascii=False),
                       "fruitlens_version": __version__,
                       "input": f"images: uint8 RGB (N,{side},{side},3), resized with bicubic interpolation",
                       "output": "probabilities: float32 (N, classes), softmax"}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    return model


def export(output: str, target: str) -> dict:
    """Write the combined graph to ``target`` (a local file); return its size and labels."""
    import onnx

    folder = local_predictor_dir(output)
    model = build_model(folder / PREDICTOR_MODEL, Head.load(folder))
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return {"path": str(path), "bytes": path.stat().st_size, "labels": json.loads(
        next(p.value for p in model.metadata_props if p.key == "labels"))}
