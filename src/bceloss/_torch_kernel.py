"""The C kernels of `bceloss::reduced_loss_and_grad` and `bceloss::reduced_loss` on CPU
tensors (`_kernels/torch_kernel.cpp`), installed through PyTorch's stable C ABI.

A compiled step calls one of these operators for a reduced loss (logits or probabilities:
`_torch._IN_C`) and so does an eager call of a kept form; a Python kernel there
costs several times the loss's own work at small sizes. The C kernel runs a call of a form
it keeps (the operator's strings, each tensor's dtype, device, sizes and strides) on the
fused loops straight away, with the constants the Python kernel computed for that form
(`Prepared`), and sends a call of any other form to `bceloss::loss_and_grad` or
`bceloss::loss` (the Python kernel, the same schema), which hands such constants back
(`remember`) where the kernel can run the form (CPU tensors, the input and target
contiguous, weight and pos_weight read in place, no mask, a reduced loss).

The ABI's functions are found in libtorch by name (ctypes) and handed to the extension, which
is built without PyTorch's headers; so are the OpenMP runtime's functions whose team
(PyTorch's intra-op threads) a large call runs on. A PyTorch without the ABI (older than 2.10,
or a build without the shared library) keeps the Python kernel for every call.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import torch

from bceloss._kernels import _native, threads

# the libtorch functions the kernel calls, in torch_kernel.cpp's order (the last optional)
_FUNCTIONS = (
    "aoti_torch_get_data_ptr",
    "aoti_torch_get_storage_size",
    "aoti_torch_get_dim",
    "aoti_torch_get_sizes",
    "aoti_torch_get_strides",
    "aoti_torch_get_dtype",
    "aoti_torch_get_device_type",
    "aoti_torch_empty_strided",
    "aoti_torch_delete_tensor_object",
    "torch_string_length",
    "torch_string_c_str",
    "torch_delete_string",
    "torch_delete_stable_ivalue",
    "aoti_torch_call_dispatcher",
)
_LAST_ERROR = "torch_exception_get_what_without_backtrace"
# the OpenMP runtime's entry that PyTorch's parallel operations start their team with, and the
# size of that team: a large call runs on it (threads.hpp), not beside it
_TEAM = ("GOMP_parallel", "omp_get_max_threads")
# the dtypes of the kernels' storages, in loops.hpp's order (`Storage`)
_DTYPES = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "bool",
    "int8",
    "uint8",
    "int32",
    "uint32",
    "int64",
    "uint64",
)
_LIBRARIES = ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll")

# PyTorch's codes of the loss's dtypes, once installed
_CODES: dict = {}
# the registration, kept as long as the process: deleting it would unregister the kernel
_REGISTRATION: list = []
# True once the C kernel reads tensors' data itself (`reads_tensors`)
_READS_TENSORS: list = []


def _libtorch():
    folder = os.path.join(os.path.dirname(torch.__file__), "lib")
    for name in _LIBRARIES:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            try:
                return ctypes.CDLL(path)
            except OSError:
                return None
    return None


# the operators of the C kernels (`_torch` defines them), and those they fall back to
_OPERATORS = ("reduced_loss_and_grad", "reduced_loss")
_FALLBACKS = ("bceloss::loss_and_grad", "bceloss::loss")


def install() -> bool:
    """Register the C kernels for the CPU calls of `_OPERATORS`; False where PyTorch has no
    stable C ABI of the functions they need (their Python kernels then serve)."""
    lib = _libtorch()
    if lib is None or not all(hasattr(lib, name) for name in _FUNCTIONS):
        return False
    address = [_address(lib, name) for name in _FUNCTIONS]
    address.append(_address(lib, _LAST_ERROR) if hasattr(lib, _LAST_ERROR) else 0)
    codes = []
    for name in _DTYPES:
        code = getattr(lib, f"aoti_torch_dtype_{name}")
        code.restype = ctypes.c_int32
        codes.append(code())
    cpu = lib.aoti_torch_device_type_cpu
    cpu.restype = ctypes.c_int32
    kernels = _native.torch_install(tuple(address), _FALLBACKS, tuple(codes), cpu(), _team(lib))
    _native.set_threads(threads.get_num_threads())
    handle = ctypes.c_void_p()
    init = lib.aoti_torch_library_init_impl
    init.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_uint32,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    impl = lib.aoti_torch_library_impl
    impl.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    if init(b"bceloss", b"CPU", __file__.encode(), 0, ctypes.byref(handle)) != 0:
        return False
    for operator, kernel in zip(_OPERATORS, kernels, strict=True):
        if impl(handle, operator.encode(), ctypes.c_void_p(kernel)) != 0:
            return False
    _REGISTRATION.append(handle)
    _CODES.update({np.dtype(name): code for name, code in zip(_DTYPES[:2], codes, strict=False)})
    address = _guards_function("_torchinductor_pyobject_tensor_data_ptr")
    probe = torch.zeros(2)[1:]  # (a tensor whose data starts after its storage's)
    if (
        isinstance(address, int)
        and address != 0
        and _native.torch_tensors_install(
            torch.Tensor, torch.nn.Parameter, address, probe, probe.data_ptr()
        )
    ):
        _READS_TENSORS.append(True)
    return True


def _guards_function(name: str):
    """A function of `torch._C._dynamo.guards` (what inductor's generated code calls), or
    None where PyTorch has none of that name."""
    return getattr(getattr(getattr(torch._C, "_dynamo", None), "guards", None), name, None)


def reads_tensors() -> bool:
    """Whether the C kernel's entries that take tensors (`_native.torch_run_tensors`,
    `torch_lowered_run`) read their data: PyTorch gave the address of its function that gives
    a tensor's data address (inductor's C kernels' Python bindings read tensors with it)."""
    return bool(_READS_TENSORS)


def last_form(loss):
    """A handle of the form of the calling thread's last call of the C kernels (the one it ran
    or kept), for `run_tensors`, where `loss` is that call's loss; None where it is not (a
    call made in between, by Python code the call or its caller ran), there is none or the C
    kernel reads no tensors."""
    return _native.torch_last_form(loss) if _READS_TENSORS else None


# run_tensors(handle, gradient, input, target, weight, pos_weight, grad, loss): the loops of
# the form of `handle` (`last_form`) on the tensors (weight, pos_weight and, without
# `gradient`, grad None where absent), the loss written into `loss` (a 0-d tensor) and the
# gradient into `grad`; False where the handle is stale, a tensor is of another type or the
# call is the Python kernel's to decide (the operator's then). The C entry itself: a training
# step's loss pays for each Python frame.
run_tensors = _native.torch_run_tensors


def _empty_strided_usual(shape, strides, dtype):
    return torch.empty_strided(shape, strides, dtype=dtype)


def _allocation():
    """`empty_strided`: inductor's own allocation (one C call) where it allocates as PyTorch's
    does, else PyTorch's usual one."""
    fast = _guards_function("_empty_strided_cpu")
    try:
        made = fast((3, 1), (1, 1), torch.float64)
    except Exception:  # noqa: BLE001 (an internal function: a PyTorch that changed it)
        return _empty_strided_usual
    fits = made.shape == (3, 1) and made.stride() == (1, 1) and made.dtype == torch.float64
    return fast if fits else _empty_strided_usual


# a tensor of `shape`, `strides` and dtype on the CPU, its values not set
empty_strided = _allocation()


def installed() -> bool:
    """Whether the C kernels serve the CPU calls of `_OPERATORS` (`install`)."""
    return bool(_REGISTRATION)


def _team(lib):
    """The addresses of `_TEAM` in the OpenMP runtime libtorch was loaded with (a library's
    symbols are looked up in its dependencies too), or None where PyTorch's parallel
    operations run on no OpenMP."""
    if not torch.backends.openmp.is_available() or not all(hasattr(lib, n) for n in _TEAM):
        return None
    return tuple(_address(lib, name) for name in _TEAM)


def _address(lib, name: str) -> int:
    """The address of the function `name` in `lib` (or in a library it was loaded with)."""
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value


_HALVES = (torch.float16, torch.bfloat16)
# the dtypes the loops read in place (torch_kernel.cpp's storage_of_dtype: no halves)
_STORAGES = frozenset(
    getattr(torch, name, None) for name in _DTYPES if name not in ("float16", "bfloat16")
) - {None}


def keeps(input, target, weight, pos_weight, widened=False) -> bool:
    """Whether the C kernel runs a form of these tensors itself once the Python kernel
    computed one call (torch_kernel.cpp's `layout_of`, for tensors that are contiguous: the
    caller checks that): all on the CPU, a float32 or float64 input with at least one
    element, a target of its shape, weight and pos_weight read in place (their shape,
    leading 1s aside, the input's last dimensions). `widened`: float16 and bfloat16 tensors
    reach the kernel as float32 (autocast)."""
    arrays = [a for a in (input, target, weight, pos_weight) if a is not None]

    def dtype(a):
        return torch.float32 if widened and a.dtype in _HALVES else a.dtype

    return (
        bool(_CODES)
        and all(a.device.type == "cpu" and dtype(a) in _STORAGES for a in arrays)
        and dtype(input) in (torch.float32, torch.float64)
        and target.shape == input.shape
        and input.numel() >= 1
        and all(_periodic(a, input.shape) for a in (weight, pos_weight) if a is not None)
    )


def _periodic(a, shape) -> bool:
    kept = list(a.shape)
    while kept and kept[0] == 1:
        kept.pop(0)
    return (
        a.numel() >= 1
        and len(kept) <= len(shape)
        and tuple(shape[len(shape) - len(kept) :]) == tuple(kept)
    )


def remember(prepared, loss) -> bool:
    """Hand the constants of a form the Python kernel ran (`Prepared`) to the C kernel,
    where the calling thread's C kernel is falling back for that form, with the loss it
    computed (`last_form`'s); whether it keeps them (a reduced loss only: the C kernels
    compute no elementwise one)."""
    if not _CODES or prepared is None or prepared.reduction == "none":
        return False
    kind, compute64 = prepared.options
    starts, ignore, smooth_keep, smooth_add, has_alpha, alpha, gamma = prepared.constants
    return _native.torch_remember(
        kind,
        compute64,
        starts,
        ignore,
        smooth_keep,
        smooth_add,
        has_alpha,
        alpha,
        gamma,
        prepared.divisor,
        prepared.reduction == "sum",
        float(prepared.denominator),
        _CODES[np.dtype(prepared.dtype)],
        loss,
    )


def in_unit_range(t) -> bool:
    """Whether a contiguous float32 or float64 CPU tensor's values lie in [0, 1] or are NaN,
    read in C at its data pointer (`_memo`'s check of a remembered form's input, and the
    lane's fallback's)."""
    return _native.torch_in_unit_range(t.data_ptr(), t.numel(), t.dtype is torch.float64)


def forget() -> None:
    """Every form the C kernel keeps, forgotten (`_memo.forget`)."""
    _native.torch_forget()
