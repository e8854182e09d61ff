"""Which library an array comes from, and whether the fused kernel runs: asked here only.

`namespace` finds the arrays' namespace (array-api-compat) and refuses mixed kinds;
`backend` gives the namespace's adapter, the object through which everything below asks what
differs from one library to the next (`_array_api.ArrayAPI` lists the questions). The
adapters are looked up by module name, so that they can import the modules that follow this
one's decisions (an adapter computes through `_evaluate`, which asks `kernel_plan`), and a
framework's adapter is imported only when its arrays arrive: `import bceloss` imports no
framework. `kernel_plan` is the one place the kernel-or-formula policy lives.
"""

from __future__ import annotations

import importlib
import math
import sys

import array_api_compat
import numpy as np

# array-api-compat's namespace module name (its top package) -> the adapter: module, class
_ADAPTERS = {
    "numpy": ("bceloss._array_api", "NumPy"),
    "array_api_strict": ("bceloss._array_api", "NumPyBacked"),
    "torch": ("bceloss._torch", "Torch"),
    "jax": ("bceloss._jax", "Jax"),
    "dask": ("bceloss._dask", "Dask"),
}
_GENERIC = ("bceloss._array_api", "ArrayAPI")  # CuPy and any other array API library
_BACKENDS: dict = {}  # namespace -> adapter instance
# the namespace of the arrays of each type met (array_api_compat's answer depends on the type),
# filled as they come: array-api-compat's NumPy namespace alone takes longer to import than
# the rest of the library, and `import bceloss` does not wait for it
_NAMESPACES: dict = {}

# frameworks whose tensors are not array API arrays: their adapter (module, class) takes the
# call at the edge, before validation (`edge_adapter`), and hands the core NumPy views
_EDGE_ADAPTERS: dict[str, tuple[str, str]] = {
    "mindspore": ("bceloss._mindspore", "MindSpore"),
    "paddle": ("bceloss._paddle", "Paddle"),
}

# an argument's type -> its adapter's express lane (`_torch.express`): called with (bind,
# args, kwargs) before validation, and a loss module's calls with the module too (which the
# adapter may give a lane of its own), it returns the loss of a call of a form it has
# validated before, or None. Filled when the adapter is imported.
EXPRESS_LANES: dict = {}

# elements (kept, under a mask) from which NumPy calls take the kernel: all with one, as a
# kernel call costs a few microseconds and NumPy's composite tens (docs/performance.md)
KERNEL_MIN_SIZE = 1


def type_name(obj) -> str:
    cls = type(obj)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"


def _library(xp) -> str:
    # 'array_api_compat.torch' -> 'torch', 'jax.numpy' -> 'jax', 'array_api_strict'
    return xp.__name__.removeprefix("array_api_compat.").split(".")[0]


# how a value becomes an array of a library, for the errors that refuse it beside that
# library's arrays (as PyTorch's own losses refuse a float or a NumPy weight beside tensors)
_AS_ARRAY = {
    "numpy": "np.asarray",
    "torch": "torch.as_tensor",
    "jax": "jax.numpy.asarray",
    "cupy": "cupy.asarray",
    "dask": "dask.array.asarray",
    "paddle": "paddle.to_tensor",
    "mindspore": "mindspore.Tensor",
}


# the arrays a number could stand for, as a 0-d array broadcast to the input's shape
_BROADCAST = ("weight", "pos_weight")


def _conversion(library: str, value: str, like=None, like_name: str = "input") -> str:
    """The call that makes `value` (as written) an array of `library`; a PyTorch tensor on
    the device of `like` (named `like_name`) where that is not the CPU."""
    device = getattr(like, "device", None)
    if library == "torch" and device is not None and device.type != "cpu":
        return f"torch.as_tensor({value}, device={like_name}.device)"
    return f"{_AS_ARRAY.get(library, library + '.asarray')}({value})"


def _written(number) -> str:
    """A number as Python code: float('nan') and float('inf') where repr gives nan, inf."""
    if isinstance(number, float) and not math.isfinite(number):
        return f"float('{number}')"
    return repr(number)


def _made_like(library: str, other: str, name: str, like, like_name: str) -> str:
    """The call that makes the array `name`, of library `other`, one of `library`'s, as
    `_conversion` does (paddle.to_tensor and mindspore.Tensor read NumPy arrays only: a
    NumPy array first; a PyTorch tensor detached and on the CPU, as NumPy reads no other)."""
    numpy = {"torch": f"{name}.detach().cpu().numpy()", "cupy": f"{name}.get()"}
    as_numpy = numpy.get(other, f"np.asarray({name})")
    if library == "numpy":
        return as_numpy
    if library in ("paddle", "mindspore"):
        return f"{_AS_ARRAY[library]}({as_numpy})"
    return _conversion(library, name, like, like_name)


def mixed_kinds(first: str, library: str, name: str, other: str, like=None, note: str = "") -> str:
    """The message refusing the array `name`, of library `other`, beside `first` (the
    array `like`) of `library`, with the call that converts it; `note` added after it. The
    core's and the Paddle and MindSpore adapters' refusal alike."""
    made = _made_like(library, other, name, like, first)
    return (
        f"all arrays of one call must be of one kind; got {first} from {library} and {name} "
        f"from {other} (make {name} one of {library}'s: {made}{note})"
    )


def _is_array(a) -> bool:
    """Whether `a` is an array of a library: not a Python number, nor a NumPy scalar."""
    return array_api_compat.is_array_api_obj(a) and not isinstance(
        a, (bool, int, float, complex, np.generic)
    )


def namespace(arrays: dict):
    """The array namespace of the named arrays (None values skipped); TypeError otherwise."""
    present = {name: a for name, a in arrays.items() if a is not None}
    classes = {type(a) for a in present.values()}
    if len(classes) == 1:  # the common case, quickly: one type, its namespace remembered
        xp = _NAMESPACES.get(next(iter(classes)))
        if xp is not None:
            return xp
    for name, a in present.items():
        if isinstance(a, np.generic):
            # np.float64 is a Python float, np.float32 an array API object: every NumPy scalar
            # is refused alike, as a Python number is
            msg = (
                f"{name} must be an array (NumPy, PyTorch, JAX, CuPy or Dask); got "
                f"{type_name(a)} (a NumPy scalar: np.asarray(value) makes it a 0-d array)"
            )
            raise TypeError(msg)
        if not _is_array(a):  # (a NumPy scalar is refused above, with its own words)
            msg = f"{name} must be an array (NumPy, PyTorch, JAX, CuPy or Dask); got {type_name(a)}"
            given = [(n, b) for n, b in present.items() if _is_array(b)]
            number = isinstance(a, (int, float)) and not isinstance(a, bool)
            if name in _BROADCAST and number and given:
                # a weight as a number beside arrays: the 0-d array of their kind holds it
                first, like = given[0]
                kind = _library(array_api_compat.array_namespace(like))
                made = _conversion(kind, _written(a), like, first)
                msg += f" (a number: {made} holds it, as a 0-d array)"
            raise TypeError(msg)
        if isinstance(a, np.ma.MaskedArray):
            # its mask would be ignored (NumPy's ufuncs read the data): never a wrong number
            msg = (
                f"{name} must not be a NumPy masked array (its mask would be ignored); got "
                f"{type_name(a)}: pass its data and where=~np.ma.getmaskarray({name})"
            )
            raise TypeError(msg)
    kinds = {}
    for name, a in present.items():
        kinds.setdefault(_library(array_api_compat.array_namespace(a)), name)
    if len(kinds) > 1:
        (ka, na), (kb, nb) = list(kinds.items())[:2]
        raise TypeError(mixed_kinds(na, ka, nb, kb, like=present[na]))
    xp = array_api_compat.array_namespace(*present.values())
    if len(classes) == 1:
        _NAMESPACES[next(iter(classes))] = xp
    return xp


def backend(xp):
    """The adapter of namespace `xp`'s library (one instance a namespace)."""
    adapter = _BACKENDS.get(xp)
    if adapter is None:
        module, name = _ADAPTERS.get(_library(xp), _GENERIC)
        adapter = _BACKENDS[xp] = getattr(importlib.import_module(module), name)()
    return adapter


def edge_adapter(args, kwargs):
    """The adapter of a framework in `_EDGE_ADAPTERS` whose tensor is among the arguments, or
    None. Nothing is scanned until such a framework is imported in the process.

    Written for Paddle's static-graph translator (`paddle.jit.to_static(full_graph=True)`),
    which rewrites the code it meets before the adapter is imported (the adapter then
    refuses the static graph with a clear message): no loop statement, no store in an `if`."""
    if not any(name in sys.modules for name in _EDGE_ADAPTERS):
        return None
    kinds = (type(a).__module__.partition(".")[0] for a in (*args, *kwargs.values()))
    found = next((_EDGE_ADAPTERS[k] for k in kinds if k in _EDGE_ADAPTERS), None)
    return None if found is None else _BACKENDS.get(found) or _edge_instance(found)


def _edge_instance(found):
    module, name = found
    adapter = _BACKENDS[found] = getattr(importlib.import_module(module), name)()
    return adapter


def backend_of(*arrays):
    """(namespace, adapter) of arrays of one library (a block, a NumPy view)."""
    xp = array_api_compat.array_namespace(*arrays)
    return xp, backend(xp)


def kernel_plan(call, min_size: int = KERNEL_MIN_SIZE):
    """The fused kernel's plan for `call` (see `_kernels.plan`), or None: the formula runs.

    The kernel reads NumPy arrays (PyTorch CPU tensors reach it as NumPy views, through
    their adapter). Below `min_size` elements (kept, under a mask) the formula runs.
    """
    if not call.backend.fused_kernel or math.prod(call.shape) < min_size:
        return None
    from bceloss import _kernels

    return _kernels.plan(call, min_size)


# What a core loss called inside a graph PyTorch is compiling reaches, set by PyTorch's adapter
# when it is imported outside a trace (`use_compiler`): `torch.compiler.is_compiling` and the
# adapter's `compiled_loss`. Reached from here, the compiler meets each object by one path: an
# object it meets by two (a module two of ours import) costs a check in Python, comparing the
# two, at every call of the compiled graph. Set once or never: a graph traced while they were
# unset checks that they still are (set later, every such graph would be compiled again).
_IS_COMPILING = None
_IS_TRACING = None
_COMPILED_LOSS = None


def use_compiler(is_compiling, is_tracing, compiled_loss) -> None:
    """Called by PyTorch's adapter, imported outside a trace: its `torch.compiler.is_compiling`,
    its check of `torch.jit.trace` tracing, and the function a core loss called inside a graph
    being compiled becomes."""
    global _IS_COMPILING, _IS_TRACING, _COMPILED_LOSS
    _IS_COMPILING, _IS_TRACING, _COMPILED_LOSS = is_compiling, is_tracing, compiled_loss


def torch_compiling() -> bool:
    """Whether PyTorch is tracing the call into a graph (`torch.compile`, `torch.export`,
    `torch.jit.trace`, which records the operator as it is called). Written for the compiler
    to read: no import, the checks PyTorch's adapter registered (the compiler reads the first
    alone: it answers True there), else one attribute chain."""
    is_compiling = _IS_COMPILING
    if is_compiling is not None:
        return is_compiling() or _IS_TRACING()
    torch = sys.modules.get("torch")
    return torch is not None and (torch.compiler.is_compiling() or torch._C._is_tracing())


def compiled_loss(fn: str, bound: dict):
    """A core loss called inside a graph being compiled: PyTorch's adapter's `compiled_loss`
    of the function named `fn` with the arguments `bound` to their names; None where the
    adapter is not registered (the functional form then imports it)."""
    route = _COMPILED_LOSS
    return None if route is None else route(fn, bound)
