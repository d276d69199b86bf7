"""Hand-written explanations for the "where peers win" list, kept apart from the generated numbers
so a re-run never loses them. Key: "<case id>/<method>" as the list prints it; value: one line
(kernel, fusion, precision: what the profile or the engine's docs showed). Entries whose key no
longer appears in a run are simply not printed.

Example:
    "resnet18-b1/openvino-nncf-int8": "OpenVINO keeps activations INT8 in blocked layouts between convs and fuses the residual add + ReLU into the conv; torchslim's static-int8-ts runs the same oneDNN INT8 convs as separate ops with a quantized add_relu between them",
"""
WHY: dict[str, str] = {
    # Fashion CNN at batch 1 is overhead-bound: FP32 eager is 0.7 ms for ~12 MFLOP. ONNX Runtime's
    # C++ session runs the whole graph in ~0.1 ms; PyTorch pays Python dispatch per op (eager) or the
    # Inductor wrapper's Python per call (compiled), which is most of torchslim's 0.4-0.5 ms.
    "fashion-b1/ort-fp32": "per-call overhead, not kernels: ORT's C++ executor vs PyTorch's Python dispatch/Inductor wrapper on a 0.7 ms model (AOTInductor or Inductor's cpp_wrapper is the lead)",
    "fashion-b1/ort-int8-static-qdq": "fixed cost per op: the INT8 kernels take ~0.05 ms in torchslim's call (oneDNN verbose); even on Static Runtime each PyTorch quantized conv costs 15-26 us against 5-16 us of kernel (oneDNN descriptors, scales and outputs set up per call), and the first conv (1 input channel, non-zero input zero point) is the slowest; ORT's MLAS kernels and C++ executor carry less per op",
    "fashion-b1/openvino-default": "OpenVINO's compiled graph (C++ runtime, fused conv+BN+ReLU in BF16 on AMX) vs Python-driven Inductor code",
    "fashion-b1/openvino-fp32": "C++ runtime overhead vs Python dispatch; kernels are oneDNN in both",
    "fashion-b1/openvino-nncf-int8": "INT8 convs with fused post-ops in a C++ runtime; torchslim's static-int8 costs ~0.3 ms inside the compiled graph's oneDNN qconv calls at these tiny shapes (profile), not Python",
    "fashion-b64/torch.ao-fx-static": "eager fbgemm/oneDNN quantized convs with fused ReLU; within 10% of PT2E+Inductor on the same kernels",
    "fashion-b64/openvino-default": "BF16 AMX convs with BN/ReLU fused in blocked layouts; beats INT8 here because the convs are small (32-64 channels) and INT8 pays requantization",
    "fashion-b64/openvino-nncf-int8": "INT8 activations stay in blocked layouts between convs and pooling; Inductor reorders around each qconv",
    "resnet18-b16/openvino-nncf-int8": "same as resnet18-b1: INT8 blocked layouts end to end and residual add + ReLU fused into the conv (torchslim 16.2x vs OpenVINO 18.2x over FP32 eager)",
    "lstm-b64/openvino-default": "within noise-level 4%: both BF16 on AMX; OpenVINO fuses the whole sequence",
    "fashion-b1/torch.ao-fx-static": "FX static INT8 runs eager quantized modules (fbgemm/oneDNN) with less per-call overhead than Inductor's wrapper at this size; torchslim's static-int8 was not in the quick search",
    # ResNet-18 at batch 1: real compute (1.8 GFLOP); all INT8 paths use oneDNN/fbgemm kernels.
    "resnet18-b1/openvino-nncf-int8": "OpenVINO keeps activations INT8 in blocked layouts between convs and fuses the residual add + ReLU into the conv; Inductor's PT2E path reorders/requantizes around each qconv",
    "resnet18-b1/openvino-default": "BF16 on AMX with conv+add+ReLU fused in blocked layouts, no per-op framework overhead",
    "resnet18-b1/torch.ao-fx-static": "within ~15% of torchslim's PT2E static-int8 on the same oneDNN kernels; the gap is Inductor's per-op reorders at batch 1",
    # MiniLM at batch 1, 128 real tokens.
    "minilm-b1/openvino-default": "OpenVINO fuses multi-head attention and LayerNorm/GELU into single BF16 kernels; torchslim's quick pick (fast-transformer+bf16-cast) runs eager PyTorch ops; bf16-cast+compile (2.9x in the full run) was not in the quick search",
    "minilm-b1/openvino-nncf-int8": "INT8 GEMMs with fused attention at cosine 0.993; torchslim's static-int8 with its two most sensitive layers in float is the comparable recipe (not in the quick search)",
    "minilm-b1/torchao-int8-dyn+compile": "INT8 GEMMs via Inductor (_int_mm on AMX) at cosine 0.997; within noise of torchslim's pick here",
    "minilm-b1/openvino-fp32": "the same engine and precision as torchslim's `openvino` row where the CPU has no BF16: the gap is noise plus what torchslim adds to serve any batch/sequence length (dynamic shapes, ~3% in an interleaved A/B, 2026-12-07) and its tensor wrapper (~30 us a call)",
    "minilm-b1/ort-fp32": "ORT's fused BERT attention/LayerNorm/GELU in FP32 (C++ executor); level with OpenVINO FP32 on a CPU without BF16",
    "minilm-b32/openvino-default": "the same engine and precision as torchslim's `openvino` row where the CPU has no BF16 (OpenVINO's default is FP32 there): within noise",
    "minilm-b32/openvino-fp32": "the same engine and precision as torchslim's `openvino` row where the CPU has no BF16: within noise",
    "resnet18-b1/ort-int8-static-qdq": "ORT's MLAS INT8 convs with the graph in C++ (the peer's 8-bit QDQ; torchslim's `ort-int8-static` is the same graph with 7-bit weights where VNNI is missing, as fast in a separate A/B); torchslim's search measured its INT8 candidates within 3% of each other and chose another",
    # LSTM at batch 1.
    "lstm-b1/openvino-default": "OpenVINO runs the whole LSTM sequence as one fused BF16 cell kernel on AMX; torch's quantized LSTM steps through fbgemm per time step",
    "lstm-b1/openvino-nncf-int8": "fused INT8 LSTM sequence kernel with static activation scales (cosine 0.998 here; 0.74 in an earlier trial, so it must stay validated)",
}
