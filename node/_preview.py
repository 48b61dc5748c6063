"""A look at pickled job arguments without unpickling them (the dashboard's previews).

The opcodes are read with :mod:`pickletools`; nothing is imported or run, so a
hostile pickle shows as text and never executes.
"""

from __future__ import annotations

import pickletools
import reprlib
from typing import Any

from mesh._protocol import Payload

__all__ = ["PREVIEW_MAX_BYTES", "preview_pickle"]

PREVIEW_MAX_BYTES = 64 * 1024


class _Opaque:
    """Stands for what a pickle would build by calling code (shown, never run)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3

_LITERALS = {
    "BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "BINFLOAT", "FLOAT",
    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BINBYTES", "SHORT_BINBYTES",
    "BINBYTES8", "STRING", "BINSTRING", "SHORT_BINSTRING",
}  # fmt: skip
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


def preview_pickle(
    blob: bytes | bytearray | memoryview | Payload, max_bytes: int = PREVIEW_MAX_BYTES
) -> str:
    """A short ``repr`` of pickled data, read from its opcodes; nothing is imported or run.

    Plain values (numbers, strings, bytes, tuples, lists, dicts, sets) are shown as
    they are; objects as ``module.Class(...)``. Out-of-band buffers (a Payload tuple)
    are at least ``ATTACH_MIN`` bytes: never previewed.
    """
    if isinstance(blob, tuple):
        return f"<{sum(len(p) for p in blob):,} bytes, not previewed>"
    size = len(blob)
    if size > max_bytes:
        return f"<{size:,} bytes, not previewed>"
    try:
        return _REPR.repr(_read_pickle(bytes(blob)))
    except Exception:
        return f"<{size:,} bytes>"


def _read_pickle(data: bytes) -> Any:
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def since_mark() -> list[Any]:
        k = marks.pop()
        items = stack[k:]
        del stack[k:]
        return items

    for op, raw, _ in pickletools.genops(data):
        name = op.name
        arg: Any = raw
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            return stack.pop()
        if name == "MARK":
            marks.append(len(stack))
        elif name in _LITERALS:
            stack.append(arg)
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name == "BYTEARRAY8":
            stack.append(bytearray(arg))
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            del stack[-n:]
            stack.append(tuple(items))
        elif name == "TUPLE":
            stack.append(tuple(since_mark()))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "LIST":
            stack.append(since_mark())
        elif name == "APPEND":
            value = stack.pop()
            stack[-1].append(value)
        elif name == "APPENDS":
            items = since_mark()
            stack[-1].extend(items)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "DICT":
            items = since_mark()
            stack.append(dict(zip(items[::2], items[1::2], strict=True)))
        elif name == "SETITEM":
            value = stack.pop()
            key = stack.pop()
            stack[-1][key] = value
        elif name == "SETITEMS":
            items = since_mark()
            stack[-1].update(zip(items[::2], items[1::2], strict=True))
        elif name == "EMPTY_SET":
            stack.append(set())
        elif name == "ADDITEMS":
            items = since_mark()
            stack[-1].update(items)
        elif name == "FROZENSET":
            stack.append(frozenset(since_mark()))
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "GLOBAL":
            stack.append(_Opaque(str(arg).replace(" ", ".")))
        elif name == "STACK_GLOBAL":
            attr = stack.pop()
            module = stack.pop()
            stack.append(_Opaque(f"{module}.{attr}"))
        elif name in ("REDUCE", "NEWOBJ"):
            stack.pop()
            stack.append(_Opaque(f"{stack.pop()!r}(...)"))
        elif name == "NEWOBJ_EX":
            del stack[-2:]
            stack.append(_Opaque(f"{stack.pop()!r}(...)"))
        elif name == "BUILD":
            stack.pop()  # the object's state: the object stays as shown
        else:
            raise ValueError(f"opcode {name} is not previewed")
    raise ValueError("pickle without STOP")
