"""Validation remembered: a call of a form validated before is not validated again.

A loss called in a loop (a training step, an evaluation over batches) gets arrays of one form
call after call. A call's form is everything validation reads: the loss (its `bind`), the
arguments' positions and names, the form of each array (its class and what the class's
adapter registered: shape and dtype, and for PyTorch device, layout and requires_grad), the
other arguments' values, and a state the caller adds (PyTorch's grad mode). From the second
call of a form on, a call gets the validated `LossCall` of that form with its own arrays
(`bind`), or an adapter takes what it kept beside the form (`adapted`: the express lanes
of NumPy and PyTorch compute straight from the arguments).

Values are never remembered. BCE on probabilities checks its input's values at every call:
a form of it is remembered where the input's class registered a check of them (`register`),
which runs at every call of the form (or the C kernel's own check, where PyTorch's lane
lets it: `_torch.express`), and a call whose values fail it is validated (which raises the
loss's own error); elsewhere it is validated every call. A form whose validated
call holds an array the arguments do not (a byte-swapped copy) is validated every call, as
is one whose first validated call had one object in two arguments (which of them feeds
which array cannot be told), and a call that fails validation is never remembered.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bceloss._call import ARRAYS, LossCall

MAX_FORMS = 256  # forms remembered; past it the oldest is forgotten
_SCALARS = frozenset((str, float, int, bool, type(None)))
_FORMS: dict[type, Callable] = {}  # an array class -> its form (`register`)
_IN_UNIT_RANGE: dict[type, Callable] = {}  # an array class -> its check of values (`register`)
# a call's form -> its Remembered, _SEEN_ONCE or _VALIDATED_EVERY_CALL
_CALLS: dict = {}
_SEEN_ONCE = object()  # a form met once: remembered when it comes again (one-off forms,
# a new shape each call, cost no more than the form)
_VALIDATED_EVERY_CALL = object()
_FORGETTING: list[Callable] = []  # `on_forget`


@dataclass(slots=True)
class Remembered:
    """A validated call without its arrays (None), where each is among the arguments
    (`places`: (name, position)), what an adapter keeps beside it (`adapter`), and the
    position of the input whose values every call checks (`checked`: BCE on probabilities),
    or None."""

    call: LossCall
    places: tuple[tuple[str, int], ...]
    adapter: Any = None
    checked: int | None = None

    def values_pass(self, given) -> bool:
        """Whether a call's values pass what validation checks of them (`checked`), `given`
        the call's arguments in order."""
        if self.checked is None:
            return True
        a = given[self.checked]
        return _IN_UNIT_RANGE[type(a)](a)

    def picker(self, names=ARRAYS) -> Callable:
        """A function of a call's `(*args, *kwargs.values(), None)` that gives its arrays
        `names`, in order (None where the form has none)."""
        places = dict(self.places)
        return operator.itemgetter(*(places.get(name, -1) for name in names))


def forget() -> None:
    """Forget every form remembered, and what adapters keep beside them (`on_forget`)."""
    _CALLS.clear()
    for clear in _FORGETTING:
        clear()


def on_forget(clear: Callable) -> None:
    """Call `clear()` when the forms are forgotten: an adapter's own memory of forms."""
    _FORGETTING.append(clear)


def register(cls: type, form: Callable, in_unit_range: Callable | None = None) -> None:
    """Arrays of class `cls` have the form `form(array)` (hashable; None: do not remember);
    `in_unit_range(array)`: whether its values lie in [0, 1] or are NaN (BCE's check of
    probabilities, which validation makes with the message), without which a form of BCE on
    probabilities is validated every call."""
    _FORMS[cls] = form
    if in_unit_range is not None:
        _IN_UNIT_RANGE[cls] = in_unit_range


def form(bind_fn, args, kwargs, state=None):
    """The form of the call `bind_fn(*args, **kwargs)` (hashable), or None where an argument
    has none (an array of a class no adapter registered): the caller takes its usual route."""
    form = [bind_fn, state, len(args), *kwargs]
    for a in (*args, *kwargs.values()):
        kind = type(a)
        if kind in _SCALARS:
            form.append((kind, a))  # (1, 1.0 and True hash alike)
            continue
        array_form = _FORMS.get(kind)
        shape = None if array_form is None else array_form(a)
        if shape is None:
            return None
        form.append(shape)
    return tuple(form)


def adapted(bind_fn, args, kwargs, adapt: Callable, state=None):
    """(what an adapter kept beside the call's form, None) for a remembered form where it
    kept something; else (None, `bind_fn(*args, **kwargs)`, validated as `bind` does), or
    (None, None) where an argument has no form. As a form is remembered, `adapt(its
    Remembered, the validated call)` gives what to keep, or False: nothing (the usual
    route, every call)."""
    call_form = form(bind_fn, args, kwargs, state)
    if call_form is None:
        return None, None
    memo = _CALLS.get(call_form)
    if (
        type(memo) is Remembered
        and memo.adapter
        and (memo.checked is None or memo.values_pass((*args, *kwargs.values())))
    ):
        return memo.adapter, None
    call, memo = bind(call_form, bind_fn, args, kwargs)
    if memo is not None and memo.adapter is None:
        memo.adapter = adapt(memo, call) or False
    return None, call


def bind(form, bind_fn, args, kwargs) -> tuple[LossCall, Remembered | None]:
    """(`bind_fn(*args, **kwargs)`, the Remembered of its `form` or None), the validation
    skipped for a remembered form. Validation errors raise as `bind_fn`'s."""
    memo = _CALLS.get(form)
    if memo is None or memo is _SEEN_ONCE:
        call = bind_fn(*args, **kwargs)
        if len(_CALLS) >= MAX_FORMS:
            _forget_oldest()
        memo = _CALLS[form] = (
            _SEEN_ONCE if memo is None else _remembered(call, (*args, *kwargs.values()))
        )
        return call, (memo if isinstance(memo, Remembered) else None)
    if memo is _VALIDATED_EVERY_CALL:
        return bind_fn(*args, **kwargs), None
    given = (*args, *kwargs.values())
    if not memo.values_pass(given):
        return bind_fn(*args, **kwargs), None  # validation raises the loss's error
    return memo.call.replace(**{name: given[i] for name, i in memo.places}), memo


def _forget_oldest() -> None:
    # the oldest (dicts keep insertion order); another thread may have taken it, or changed
    # the dict while it was read
    with contextlib.suppress(StopIteration, RuntimeError):
        _CALLS.pop(next(iter(_CALLS)), None)


def validated(bind_fn, args, kwargs) -> LossCall:
    """`bind_fn(*args, **kwargs)`, the validation skipped for a remembered form (`bind`)."""
    call_form = form(bind_fn, args, kwargs)
    if call_form is None:
        return bind_fn(*args, **kwargs)
    return bind(call_form, bind_fn, args, kwargs)[0]


def _remembered(call: LossCall, given: tuple):
    # BCE on probabilities: its input's values are checked every call
    if not call.logits and type(call.input) not in _IN_UNIT_RANGE:
        return _VALIDATED_EVERY_CALL
    places = []
    for name in ARRAYS:
        a = getattr(call, name)
        if a is not None:
            found = [i for i, g in enumerate(given) if g is a]
            if len(found) != 1:  # a new array (none), or one object in two arguments
                return _VALIDATED_EVERY_CALL
            places.append((name, found[0]))
    checked = None if call.logits else dict(places)["input"]
    return Remembered(call.replace(**dict.fromkeys(ARRAYS)), tuple(places), checked=checked)
