"""A loss class as a framework's module type (`torch.nn.Module`, `paddle.nn.Layer`).

The made type is the loss class and the framework's base at once: its array options
(`cls.arrays`) that are the framework's tensors, or None, are buffers (in `state_dict`, moved
and cast by `.to()`), a Parameter stays a parameter, anything else is a plain attribute;
calling it runs `forward` through the base's `__call__` (hooks, compilers); its repr is the
base's, showing the options set (`_Loss._settings`). Nothing here imports a framework: the
adapters pass their own pieces in.
"""

from __future__ import annotations

_MADE: dict = {}  # (loss class, base) -> its module type
# the key of an instance's express lane in its `__dict__`, kept there by its framework's adapter
# (`_torch._ModuleLane`); never pickled or copied
LANE = "_bceloss_lane"
# the key of an instance's options as a compiled graph's operator takes them, kept there by its
# framework's adapter (`_torch._lean_compiled`); never pickled (made again on loading)
WRITTEN = "_bceloss_written"
# the plain loss classes defined so far (`_modules._Loss`), whose module types an adapter
# makes when it is imported (`make_all`), and the adapters' makers, for the classes defined
# after that
_CLASSES: list = []
_MAKERS: dict = {}  # framework -> its adapter's module type maker


def known(cls) -> None:
    """Called for each plain loss class as it is defined: its module type is made now where
    its framework's adapter is imported (`make_all`)."""
    _CLASSES.append(cls)
    make = _MAKERS.get(cls.framework)
    if make is not None:
        make(cls)


def make_all(framework: str, make) -> None:
    """`make(cls)` for each plain loss class of `framework`, those defined so far and those
    defined later: a module type made beforehand, as a compiler cannot trace a class
    statement (a loss first made inside a function being compiled)."""
    _MAKERS[framework] = make
    for cls in _CLASSES:
        if cls.framework == framework:
            make(cls)


def module_type(cls, base, is_buffer, rebuild, finish=None):
    """The loss class `cls` as a subclass of the framework's module class `base`.

    Args:
      cls: the plain loss class.
      base: the framework's module class.
      is_buffer: whether a value given as an array option is kept as a buffer (a tensor,
        not a Parameter).
      rebuild: a module-level function of `cls` returning an empty instance of the type,
        for pickle (it is named in the pickle, so it must be importable).
      finish: applied once to the new type (a framework's marking), or None.
    """
    made = _MADE.get((cls, base))
    if made is None:
        made = _make(cls, base, is_buffer, rebuild)
        made = _MADE[cls, base] = made if finish is None else finish(made)
    return made


def _make(cls, base, is_buffer, rebuild):
    class Module(cls, base):
        _bceloss_plain = cls  # the plain class, which `_modules._module_type` stops at
        __call__ = base.__call__
        __repr__ = base.__repr__

        def __init__(self, *args, **kwargs):
            # the base's __init__ through super(), as the framework's own modules call it (a
            # compiler tracing a loss made inside a compiled function follows that call;
            # PyTorch's compiler skips its patched nn.Module.__init__ called by name)
            super(before_base, self).__init__()
            cls.__init__(self, *args, **kwargs)

        def __setattr__(self, name, value):
            if name in cls.arrays and "_buffers" in self.__dict__:
                self.__dict__.pop(name, None)
                self._buffers.pop(name, None)
                self._parameters.pop(name, None)  # a Parameter given before
                if value is None or is_buffer(value):
                    self.register_buffer(name, value)
                    return
            base.__setattr__(self, name, value)  # a Parameter by the base's own rule

        def extra_repr(self):
            return self._settings()

        def __init_subclass__(sub, **kwargs):
            super().__init_subclass__(**kwargs)
            # a subclass of the made type (torch.nn.utils.parametrize's, whose property
            # computes the option) reads the array options by its own attributes. (Chosen
            # here, not at each call as `type(self) is Module`: a compiler would check that
            # in Python at every call of its graph)
            if sub._array is Module._array:  # (not one a user's class in between gives)
                sub._array = cls._array
            # and calls the plain class's forward where it would call the made type's (an
            # adapter may give the made type its own, which reads the options as the made type
            # keeps them); one a user's class in between gives stays
            if sub.forward is Module.forward:
                sub.forward = cls.forward

        def __getstate__(self):
            state = dict(super().__getstate__())
            state.pop(LANE, None)
            state.pop(WRITTEN, None)
            return state

        def __reduce_ex__(self, protocol):
            # pickled as the plain class's module, made again from it on loading; a subclass
            # (a user's, importable by its name) as any object is
            if "_bceloss_plain" not in vars(type(self)):
                return base.__reduce_ex__(self, protocol)
            return (rebuild, (cls,), self.__getstate__())

    Module._array = _stored
    for name in cls.arrays:
        setattr(Module, name, _array_option(name))
    before_base = Module.__mro__[Module.__mro__.index(base) - 1]
    Module.__name__, Module.__qualname__ = cls.__name__, cls.__qualname__
    Module.__module__, Module.__doc__ = cls.__module__, cls.__doc__
    return Module


_ABSENT = object()
_NONE: dict = {}  # (an instance not yet built has no stores)


def _array_option(name):
    """The array option `name` of a module type, read from its buffers or parameters
    straight away (anything else is a plain attribute): as an attribute the base finds it
    in its `__getattr__`, reached only after the usual lookup has failed, a cost every call
    of a small loss pays for each array option."""

    def get(self):
        return _stored(self, name)

    def set_plain(self, value):  # a value neither buffer nor parameter (the base's choice)
        self.__dict__[name] = value

    def delete(self):
        if self.__dict__.pop(name, _ABSENT) is _ABSENT:
            raise _absent(self, name)

    return property(get, set_plain, delete, doc=f"The {name} option.")


def _stored(self, name):
    """The array option `name` of a module type's instance: a buffer, a parameter or a plain
    attribute (the made type's `_Loss._array`, which a loss's options read: a compiler tracing
    it reads one function for every option, where the properties are one each)."""
    d = self.__dict__
    for store in ("_buffers", "_parameters"):
        found = d.get(store, _NONE).get(name, _ABSENT)
        if found is not _ABSENT:
            return found
    if name in d:
        return d[name]
    raise _absent(self, name)


def _absent(self, name):
    return AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
