"""Hand-written explanations for the "where peers win" list, kept apart from the generated numbers
so a re-run never loses them. Key: "<case id>/<method>" as the list prints it; value: one line
(kernel, fusion, precision: what the profile or the engine's docs showed). Entries whose key no
longer appears in a run are simply not printed.

Example:
    "resnet18-b1/openvino-nncf-int8": "oneDNN INT8 convs with the residual add and ReLU fused; ...",
"""
WHY: dict[str, str] = {}
