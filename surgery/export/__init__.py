"""On-device deployment: ONNX export through Optimum, int8/int4 quantization, verification, ORT evaluation.

Everything that runs a graph needs the optional ``[onnx]`` extra (optimum-onnx, onnx, onnxruntime).
Every module here imports without it: the heavy imports happen inside the functions that need them,
and :func:`surgery.export.onnx.require_onnx` turns a missing package into one clear sentence.

Modules, in dependency order (each imports only the ones above it):

``onnx``         primitives: the folder layout, Optimum's exporter, onnxruntime sessions
``options``      :class:`ExportOptions`, the knobs of ``surgery export`` / ``surgery deploy``
``quantize``     weight-only int8/int4 (MatMulNBits) or dynamic int8 quantization of an exported folder
``protect``      honesty-aware scaling of a patch's restored input columns, folded into the previous op
``verify``       the artefact against PyTorch on real prompts
``honesty``      the quantized artefact's greedy answers to held-out honesty items against fp32's
``pipeline``     orchestration: export, deploy (apply then export), re-verify an existing export
``ort_backend``  the "onnx" evaluation back-end, registered by :func:`ort_backend.register`
"""
