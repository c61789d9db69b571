"""The Keras objects a registered model config may name: an allowlist, nothing else passes.

A Keras config names every object it rebuilds by ``module`` + ``class_name`` (functions by
``class_name: "function"`` and their name). Keras itself resolves any public ``keras.*`` name
and imports any ``keras.src.*`` module it is given, so "it is under ``keras.``" says nothing:
``keras.layers.TFSMLayer`` loads (and runs) a TensorFlow SavedModel from a path in its config,
the lookup layers read vocabularies from files, ``Lambda`` carries Python bytecode. Only the
classes and functions listed here are accepted; every other object reference is refused with
the class, its module and its path in the config.
"""

from __future__ import annotations

from typing import Any


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


_LAYERS = _names(
    """
    Activation ActivityRegularization Add AdditiveAttention AlphaDropout Attention Average
    AveragePooling1D AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D
    BatchNormalization Bidirectional CategoryEncoding CenterCrop Concatenate
    Conv1D Conv1DTranspose Conv2D Conv2DTranspose Conv3D Conv3DTranspose
    ConvLSTM1D ConvLSTM2D ConvLSTM3D Convolution1D Convolution1DTranspose Convolution2D
    Convolution2DTranspose Convolution3D Convolution3DTranspose Cropping1D Cropping2D Cropping3D
    Dense DepthwiseConv1D DepthwiseConv2D Discretization Dot Dropout ELU EinsumDense Embedding
    Flatten GRU GRUCell GaussianDropout GaussianNoise GlobalAveragePooling1D
    GlobalAveragePooling2D GlobalAveragePooling3D GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D
    GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D GlobalMaxPooling1D GlobalMaxPooling2D
    GlobalMaxPooling3D GroupNormalization GroupQueryAttention HashedCrossing Hashing Identity
    InputLayer LSTM LSTMCell LayerNormalization LeakyReLU Masking MaxPool1D MaxPool2D MaxPool3D
    MaxPooling1D MaxPooling2D MaxPooling3D Maximum Minimum MultiHeadAttention Multiply
    Normalization PReLU Permute RMSNormalization RNN RandomBrightness RandomContrast RandomCrop
    RandomFlip RandomRotation RandomTranslation RandomZoom ReLU RepeatVector Rescaling Reshape
    Resizing SeparableConv1D SeparableConv2D SeparableConvolution1D SeparableConvolution2D
    SimpleRNN SimpleRNNCell Softmax SpatialDropout1D SpatialDropout2D SpatialDropout3D
    SpectralNormalization StackedRNNCells Subtract TimeDistributed UnitNormalization
    UpSampling1D UpSampling2D UpSampling3D ZeroPadding1D ZeroPadding2D ZeroPadding3D
    """
)
_INITIALIZERS = _names(
    """
    Constant GlorotNormal GlorotUniform HeNormal HeUniform Identity LecunNormal LecunUniform
    Ones Orthogonal RandomNormal RandomUniform TruncatedNormal VarianceScaling Zeros
    """
)
_REGULARIZERS = _names("L1 L1L2 L2 OrthogonalRegularizer")
_CONSTRAINTS = _names("MaxNorm MinMaxNorm NonNeg UnitNorm")
_OPTIMIZERS = _names(
    "Adadelta Adafactor Adagrad Adam AdamW Adamax Ftrl Lamb Lion Nadam RMSprop SGD"
)
_SCHEDULES = _names(
    "CosineDecay CosineDecayRestarts ExponentialDecay InverseTimeDecay PiecewiseConstantDecay "
    "PolynomialDecay"
)
_LOSSES = _names(
    """
    BinaryCrossentropy BinaryFocalCrossentropy CTC CategoricalCrossentropy
    CategoricalFocalCrossentropy CategoricalHinge CosineSimilarity Dice Hinge Huber KLDivergence
    LogCosh MeanAbsoluteError MeanAbsolutePercentageError MeanSquaredError
    MeanSquaredLogarithmicError Poisson SparseCategoricalCrossentropy SquaredHinge Tversky
    """
)
_METRICS = _names(
    """
    AUC Accuracy BinaryAccuracy BinaryCrossentropy BinaryIoU CategoricalAccuracy
    CategoricalCrossentropy CategoricalHinge CosineSimilarity F1Score FBetaScore FalseNegatives
    FalsePositives Hinge IoU KLDivergence LogCoshError Mean MeanAbsoluteError
    MeanAbsolutePercentageError MeanIoU MeanSquaredError MeanSquaredLogarithmicError OneHotIoU
    OneHotMeanIoU Poisson Precision PrecisionAtRecall R2Score Recall RecallAtPrecision
    RootMeanSquaredError SensitivityAtSpecificity SparseCategoricalAccuracy
    SparseCategoricalCrossentropy SparseTopKCategoricalAccuracy SpecificityAtSensitivity
    SquaredHinge Sum TopKCategoricalAccuracy TrueNegatives TruePositives
    """
)
_MODELS = _names("Model Sequential")
_DTYPE_POLICIES = _names("DTypePolicy FloatDTypePolicy")

CLASSES: dict[str, frozenset[str]] = {
    "keras": _MODELS | _DTYPE_POLICIES,
    "keras.models": _MODELS,
    "keras.src.models.functional": _names("Functional"),
    "keras.src.models.sequential": _names("Sequential"),
    "keras.src.models.model": _names("Model"),
    "keras.layers": _LAYERS,
    "keras.initializers": _INITIALIZERS,
    "keras.regularizers": _REGULARIZERS,
    "keras.constraints": _CONSTRAINTS,
    "keras.optimizers": _OPTIMIZERS,
    "keras.optimizers.schedules": _SCHEDULES,
    "keras.losses": _LOSSES,
    "keras.metrics": _METRICS,
}
"""Accepted classes by the ``module`` a config names them under."""

_ACTIVATIONS = _names(
    """
    celu elu exponential gelu glu hard_shrink hard_sigmoid hard_silu hard_tanh leaky_relu linear
    log_sigmoid log_softmax mish relu relu6 selu sigmoid silu soft_shrink softmax softplus
    softsign sparse_plus sparse_sigmoid sparsemax squareplus tanh tanh_shrink threshold
    """
)
_LOSS_FUNCTIONS = _names(
    """
    binary_crossentropy binary_focal_crossentropy categorical_crossentropy
    categorical_focal_crossentropy categorical_hinge cosine_similarity ctc dice hinge huber
    kl_divergence log_cosh mean_absolute_error mean_absolute_percentage_error mean_squared_error
    mean_squared_logarithmic_error poisson sparse_categorical_crossentropy squared_hinge tversky
    """
)
_METRIC_FUNCTIONS = _LOSS_FUNCTIONS | _names(
    """
    binary_accuracy categorical_accuracy sparse_categorical_accuracy
    sparse_top_k_categorical_accuracy top_k_categorical_accuracy
    """
)
FUNCTIONS: dict[str, frozenset[str]] = {
    "keras.activations": _ACTIVATIONS,
    # Keras writes losses and metrics as ``builtins`` functions and looks them up by name in
    # its activations, losses, metrics, ... modules.
    "builtins": _ACTIVATIONS | _METRIC_FUNCTIONS,
}
"""Accepted functions (``class_name: "function"``) by module."""

VALUES = _names("__keras_tensor__ __tensor__ __numpy__ __bytes__ __ellipsis__ __slice__")
"""Keras' own encodings of plain values (tensors, arrays, bytes, slices): no code, no files."""

REFUSED: dict[str, str] = {
    "Lambda": "it carries Python code, which the server never runs; use built-in layers",
    "TFOpLambda": "it carries Python code, which the server never runs",
    "SlicingOpLambda": "it carries Python code, which the server never runs",
    "__lambda__": "it is Python bytecode, which the server never runs",
    "TFSMLayer": "it loads a TensorFlow SavedModel (graph code) from a file path",
    "TorchModuleWrapper": "it wraps foreign framework code",
    "JaxLayer": "it wraps foreign framework code",
    "FlaxLayer": "it wraps foreign framework code",
    "StringLookup": "it can read its vocabulary from a file path",
    "IntegerLookup": "it can read its vocabulary from a file path",
    "TextVectorization": "it can read its vocabulary from a file path",
    "__typespec__": "it resolves a TensorFlow class by name",
}
"""Well-known refusals with the reason (anything else outside the allowlist is refused too)."""

MAX_DEPTH = 64
"""Deepest nesting a config may have (Keras' own are a few levels per nested model)."""


def scan_config(config: Any, path: str = "keras_json") -> list[str]:
    """Every object reference in a Keras config that is not allowlisted, with where it is."""
    problems: list[str] = []
    _scan(config, path, 0, problems)
    return problems


def _scan(node: Any, path: str, depth: int, problems: list[str]) -> None:
    if depth > MAX_DEPTH:
        problems.append(f"{path}: nested deeper than {MAX_DEPTH} levels; refused")
        return
    if isinstance(node, list):
        for i, value in enumerate(node):
            _scan(value, f"{path}[{i}]", depth + 1, problems)
        return
    if not isinstance(node, dict):
        return
    if "class_name" in node:
        problem = check_reference(node)
        if problem is not None:
            problems.append(f"{path}: {problem}")
    for key, value in node.items():
        _scan(value, f"{path}.{key}", depth + 1, problems)


def check_reference(ref: dict[str, Any]) -> str | None:
    """Why one ``{"class_name": ...}`` object reference is refused, or None if it is allowed."""
    cls, module = ref.get("class_name"), ref.get("module")
    registered = ref.get("registered_name")
    if not isinstance(cls, str) or not (module is None or isinstance(module, str)):
        return "object reference refused: class_name and module must be strings"
    where = f"{module}.{cls}" if module else cls
    if cls in REFUSED:
        kind = "layer" if cls[0].isupper() else "object"
        return f"{cls} {kind} refused ({where}): {REFUSED[cls]}"
    if isinstance(registered, str) and ">" in registered:
        return f"custom registered object {registered!r} refused: only built-in Keras objects"
    if cls in VALUES:
        return None if module is None else f"{where} refused: values carry no module"
    if cls == "function":
        return _check_function(ref, module, registered)
    if module is not None and not (module == "keras" or module.startswith("keras.")):
        return f"custom object {where} refused: only built-in Keras objects are accepted"
    if registered not in (None, cls):
        return f"{where} refused: registered_name {registered!r} is not its class name"
    allowed = CLASSES.get(module, frozenset()) if module else _ALL_CLASSES
    if cls not in allowed:
        return (
            f"{where} refused: not one of the built-in Keras classes a model may use "
            "(layers, initializers, regularizers, constraints, optimizers, losses, metrics)"
        )
    return None


_ALL_CLASSES = frozenset().union(*CLASSES.values())


def _check_function(ref: dict[str, Any], module: str | None, registered: Any) -> str | None:
    name = ref.get("config")
    if not isinstance(name, str):
        return "function object refused: its config must be a built-in function's name"
    where = f"{module}.{name}" if module else name
    if registered not in (None, "function", name):
        return f"function {where} refused: registered_name {registered!r} is not its name"
    if name not in FUNCTIONS.get(module or "builtins", frozenset()):
        return (
            f"function {where} refused: only built-in activations, losses and metrics may be named"
        )
    return None
