"""A reader of dlib's DNN files in plain numpy: no dlib, no C++ toolchain.

Written from dlib's own sources (``dlib/serialize.h``, ``float_details.h``, ``cuda/tensor.h``,
``dnn/core.h``, ``dnn/layers.h``, ``dnn/input.h``, ``dnn/loss.h``); no code was copied. What a
file holds, in order:

  the loss layer's wrapper version, then its record (``loss_metric_2``: margin, distance threshold);
  one version integer per network wrapper, from the output down to the input (2: a layer, 1: a tag
  or skip, which store nothing else; the last, 3: the layer sitting on the input);
  the input layer's record (``input_rgb_image_sized``: channel means, size);
  every layer's record from the input up, each followed by three bools and three tensors of
  training state (empty in a released model; the first layer adds its sample expansion factor).

Encodings: an integer is a control byte (bit 0x80: negative; low 4 bits: byte count) and its
magnitude little-endian; a bool is the character '1' or '0'; a string its length and bytes; a float
an int64 mantissa and an int16 exponent (mantissa x 2^exponent); a tensor the integer 2, its shape
(n, k, rows, cols) and raw little-endian float32; an alias tensor the integer 1 and a shape, no data.

The reader knows the file, not the network: which layer feeds which (the topology) is not in the
file; ``model.dlib_resnet`` holds it and checks a parsed file against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DlibFormatError(ValueError):
    """The bytes are not the dlib network expected; the message names the record and what differs."""


@dataclass(frozen=True)
class Record:
    """One layer's record: ``name`` as the file spells it (``con_4``), where it starts, its numbers
    (``config``) and its arrays (``weights``)."""

    name: str
    offset: int
    config: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``con``, ``affine``, ``relu``, ``add_prev``, ``max_pool``, ``avg_pool`` or ``fc``."""
        return _KIND[self.name]


@dataclass(frozen=True)
class DlibNetwork:
    loss: dict  # {"name", "margin", "distance_threshold"}
    input: dict  # {"name", "means" (R, G, B), "rows", "cols"}
    wrappers: tuple[int, ...]  # the version integers, output to input
    records: tuple[Record, ...]  # input to output
    size: int  # bytes read: the whole file

    def count(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            out[r.name] = out.get(r.name, 0) + 1
        return out

    def parameters(self) -> int:
        return sum(int(w.size) for r in self.records for w in r.weights.values())


# Record names this reader understands, old and new spellings (what each version adds is read below).
_KIND = {"con_4": "con", "con_5": "con", "con_6": "con", "affine_": "affine", "affine_2": "affine",
         "relu_": "relu", "relu_2": "relu", "add_prev_": "add_prev", "max_pool_2": "max_pool",
         "avg_pool_2": "avg_pool", "fc_2": "fc", "fc_3": "fc"}
_LOSSES = ("loss_metric_2",)
_INPUTS = ("input_rgb_image_sized",)


class _Bytes:
    """A cursor over the file's bytes; every read names what it was reading when the bytes run out."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0
        self.where = "the file's start"

    def _take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"the file ends inside {self.where} (reading its {what} at byte {self.pos} of "
                                  f"{len(self.data)}): truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def integer(self, what: str = "integer") -> int:
        control = self._take(1, what)[0]
        size = control & 0x0F
        if not 1 <= size <= 8 or control & 0x70:
            raise DlibFormatError(f"{self.where}: byte {self.pos - 1} is not an integer's control byte "
                                  f"({control:#04x}) where its {what} should be")
        value = int.from_bytes(self._take(size, what), "little")
        return -value if control & 0x80 else value

    def boolean(self, what: str = "bool") -> bool:
        char = self._take(1, what)
        if char not in (b"0", b"1"):
            raise DlibFormatError(f"{self.where}: its {what} at byte {self.pos - 1} is {char!r}, not '0' or '1'")
        return char == b"1"

    def string(self, what: str = "name", limit: int = 64) -> str:
        length = self.integer(what)
        if not 0 <= length <= limit:
            raise DlibFormatError(f"{self.where}: its {what} claims {length} characters at byte {self.pos}")
        raw = self._take(length, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise DlibFormatError(
                f"{self.where}: its {what} at byte {self.pos - length} is not text ({raw!r})") from None

    def real(self, what: str) -> float:
        mantissa, exponent = self.integer(what), self.integer(what)
        specials = {32000: np.inf, 32001: -np.inf, 32002: np.nan}
        return float(specials.get(exponent, np.ldexp(float(mantissa), exponent)))

    def shape(self, version: int, what: str) -> tuple[int, int, int, int]:
        found = self.integer(f"{what} version")
        if found != version:
            raise DlibFormatError(f"{self.where}: its {what} has version {found}, expected {version}")
        dims = tuple(self.integer(f"{what} shape") for _ in range(4))
        if any(d < 0 for d in dims):
            raise DlibFormatError(f"{self.where}: its {what} has a negative dimension {dims}")
        return dims  # type: ignore[return-value]

    def tensor(self, what: str) -> np.ndarray:
        dims = self.shape(2, what)
        count = int(np.prod(dims))
        raw = self._take(4 * count, what)
        return np.frombuffer(raw, dtype="<f4").reshape(dims)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        return self.shape(1, what)


def _con(b: _Bytes, name: str) -> Record:
    params = b.tensor("parameters")
    filters, rows, cols = (b.integer(w) for w in ("filters", "rows", "cols"))
    stride = (b.integer("stride"), b.integer("stride"))
    padding = (b.integer("padding"), b.integer("padding"))
    kernel = b.alias("filter view")
    b.alias("bias view")  # read past; the bias comes from the parameters
    multipliers = [b.real("learning-rate multiplier") for _ in range(4)]
    use_bias = b.boolean("use_bias") if name in ("con_5", "con_6") else True
    use_relu = b.boolean("use_relu") if name == "con_6" else False
    flat = params.reshape(-1)
    n_kernel = int(np.prod(kernel))
    if kernel[0] != filters or kernel[2:] != (rows, cols) or len(flat) != n_kernel + (filters if use_bias else 0):
        raise DlibFormatError(f"{b.where}: {len(flat)} parameters do not fit {filters} filters of {kernel[1:]} "
                              f"{'with' if use_bias else 'without'} biases")
    weights = {"kernel": flat[:n_kernel].reshape(kernel)}
    if use_bias:
        weights["bias"] = flat[n_kernel:]
    return Record(name, 0, {"filters": filters, "kernel": (rows, cols), "channels": kernel[1], "stride": stride,
                            "padding": padding, "use_relu": use_relu, "multipliers": multipliers}, weights)


def _affine(b: _Bytes, name: str) -> Record:
    params = b.tensor("parameters").reshape(-1)
    gamma, beta = b.alias("gamma view"), b.alias("beta view")
    mode = b.integer("mode")
    disabled = b.boolean("disabled") if name == "affine_2" else False
    n = int(np.prod(gamma))
    if disabled:
        return Record(name, 0, {"mode": mode, "disabled": True})
    if mode != 0 or len(params) != 2 * n or gamma != beta:
        raise DlibFormatError(f"{b.where}: an affine layer in mode {mode} with {len(params)} parameters for "
                              f"{gamma}: only per-channel (mode 0) gamma and beta are understood")
    return Record(name, 0, {"channels": n, "mode": mode}, {"gamma": params[:n], "beta": params[n:]})


def _relu(b: _Bytes, name: str) -> Record:
    return Record(name, 0, {"disabled": b.boolean("disabled") if name == "relu_2" else False})


def _pool(b: _Bytes, name: str) -> Record:
    rows, cols = b.integer("rows"), b.integer("cols")
    stride = (b.integer("stride"), b.integer("stride"))
    padding = (b.integer("padding"), b.integer("padding"))
    return Record(name, 0, {"window": (rows, cols), "stride": stride, "padding": padding})


def _add_prev(b: _Bytes, name: str) -> Record:
    return Record(name, 0)  # which tag it adds is the network's type, not the file's


def _fc(b: _Bytes, name: str) -> Record:
    outputs, inputs = b.integer("outputs"), b.integer("inputs")
    params = b.tensor("parameters")
    weights_view = b.alias("weight view")
    b.alias("bias view")  # read past; the bias comes from the parameters
    bias_mode = b.integer("bias mode")  # 0: with a bias row, 1: without
    multipliers = [b.real("learning-rate multiplier") for _ in range(4)]
    if name == "fc_3":
        b.boolean("use_bias")
    rows = inputs + (1 if bias_mode == 0 else 0)
    if params.shape[:2] != (rows, outputs) or weights_view[:2] != (inputs, outputs):
        raise DlibFormatError(f"{b.where}: parameters {params.shape} do not fit {inputs} inputs x {outputs} outputs "
                              f"(bias mode {bias_mode})")
    matrix = params.reshape(rows, outputs)  # out = x @ W (+ the last row, the bias)
    weights = {"kernel": matrix[:inputs]}
    if bias_mode == 0:
        weights["bias"] = matrix[inputs]
    return Record(name, 0, {"inputs": inputs, "outputs": outputs, "multipliers": multipliers}, weights)


_READERS = {"con": _con, "affine": _affine, "relu": _relu, "add_prev": _add_prev, "max_pool": _pool,
            "avg_pool": _pool, "fc": _fc}


def _layer(b: _Bytes, number: int, first: bool, wrapper_version: int) -> Record:
    start = b.pos
    b.where = f"layer record {number} (at byte {start})"
    name = b.string("record name")
    if name not in _KIND:
        raise DlibFormatError(f"layer record {number} at byte {start} is {name!r}, which this reader does not know "
                              f"(known: {', '.join(sorted(_KIND))})")
    b.where = f"layer record {number} ({name} at byte {start})"
    record = _READERS[_KIND[name]](b, name)
    # training state dlib saves after every layer: three flags and three tensors (empty when released)
    for what in ("setup flag", "stale-gradient flag", "disabled-output flag"):
        b.boolean(what)
    b.tensor("input gradient")
    b.tensor("cached output")
    if first:
        b.tensor("final gradient")
        if wrapper_version >= 3:
            b.integer("sample expansion factor")
    else:
        b.tensor("parameter gradient")
    return Record(record.name, start, record.config, record.weights)


def read_dlib_network(data: bytes) -> DlibNetwork:
    """Parse a dlib network file: loss, wrappers, input, layer records; the whole file or an error
    naming the record where it goes wrong. The arrays share ``data``'s memory (read-only)."""
    b = _Bytes(data)
    b.where = "the loss layer's header"
    if b.integer("version") != 1:
        raise DlibFormatError("the file does not start with a dlib loss layer (version 1): not a dlib network file")
    loss_name = b.string()
    if loss_name not in _LOSSES:
        raise DlibFormatError(f"the loss layer is {loss_name!r}; this reader knows {', '.join(_LOSSES)}")
    b.where = f"the loss layer {loss_name}"
    loss = {"name": loss_name, "margin": b.real("margin"), "distance_threshold": b.real("distance threshold")}

    b.where = "the wrapper versions"
    wrappers: list[int] = []
    while True:  # output to input; the wrapper over the input layer (version 3, or 2 in older files)
        start = b.pos
        version = b.integer("version")
        if version not in (1, 2, 3):
            raise DlibFormatError(f"wrapper {len(wrappers)} at byte {start} has version {version} (1, 2 or 3 expected)")
        wrappers.append(version)
        if _starts_input(b):
            break
        if version == 3 or len(wrappers) > 10_000:
            raise DlibFormatError(f"no input layer record follows wrapper {len(wrappers) - 1} (version {version}) at "
                                  f"byte {start}")

    b.where = "the input layer"
    input_name = b.string()
    means = tuple(b.real("channel mean") for _ in range(3))
    layer_input = {"name": input_name, "means": means, "rows": b.integer("rows"), "cols": b.integer("cols")}

    records = [_layer(b, 0, True, wrappers[-1])]
    for version in reversed(wrappers[:-1]):
        if version == 2:  # a layer; tags and skips (1) wrote their version only
            records.append(_layer(b, len(records), False, version))
    if b.pos != len(data):
        raise DlibFormatError(f"{len(data) - b.pos} bytes follow the last record ({records[-1].name} at byte "
                              f"{records[-1].offset}): not the file this reader expects")
    return DlibNetwork(loss, layer_input, tuple(wrappers), tuple(records), len(data))


def _starts_input(b: _Bytes) -> bool:
    """Whether the bytes at the cursor spell an input layer's name (the end of the wrapper versions)."""
    for name in _INPUTS:
        encoded = bytes([1, len(name)]) + name.encode()
        if b.data[b.pos:b.pos + len(encoded)] == encoded:
            return True
    return False
