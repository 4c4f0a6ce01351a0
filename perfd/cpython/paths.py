"""A small path language for reading one value out of a live target.

``package.module:name.attr[key][0].attr`` — the part before ``:`` is a module
name looked up in the target's ``sys.modules``; then attributes (``.name``)
and items (``["key"]``, ``['key']``, ``[3]``, ``[-1]``, or a bare word
``[key]`` meaning the string ``"key"``). Evaluation is bounded (pointer hops,
bytes, container sizes: ``Limits``) and returns a value or a ``Failure``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from perfd.cpython.objects import Failure, Limits, Value
from perfd.cpython.stacks import StackReader
from perfd.errors import UsageError

_MODULE = re.compile(r"^[A-Za-z_][\w.]*$")
_TOKEN = re.compile(r"""\.(?P<attr>[^\W\d]\w*)|\[(?:(?P<int>-?\d+)|"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<word>[^\]'"]+))\]""")


@dataclass(frozen=True)
class ObjectPath:
    module: str
    steps: tuple[tuple[str, str | int], ...]

    @classmethod
    def parse(cls, text: str) -> "ObjectPath":
        module, sep, rest = text.partition(":")
        if not sep or not _MODULE.match(module) or not rest:
            raise UsageError(f"bad object path {text!r}: expected module:name[.attr|[key]]...")
        first = re.match(r"[^\W\d]\w*", rest)
        if not first:
            raise UsageError(f"bad object path {text!r}: expected a name after ':'")
        steps: list[tuple[str, str | int]] = [("attr", first.group(0))]
        pos = first.end()
        while pos < len(rest):
            m = _TOKEN.match(rest, pos)
            if not m:
                raise UsageError(f"bad object path {text!r}: cannot parse {rest[pos:]!r}")
            if m.group("attr"):
                steps.append(("attr", m.group("attr")))
            elif m.group("int") is not None:
                steps.append(("item", int(m.group("int"))))
            else:
                key = next(g for g in (m.group("dq"), m.group("sq"), m.group("word")) if g is not None)
                steps.append(("item", key))
            pos = m.end()
        return cls(module, tuple(steps))


def evaluate(reader: StackReader, path: str | ObjectPath, *, depth: int = 1,
             limits: Limits | None = None) -> Value:
    """Value at ``path`` in the target (``depth`` levels of containers expanded)."""
    p = ObjectPath.parse(path) if isinstance(path, str) else path
    module = reader.module(p.module)
    if module is None:
        return Failure("missing", 0, f"module {p.module!r} is not imported in the target")
    addr = reader.objects.resolve(module, list(p.steps), limits)
    if isinstance(addr, Failure):
        return addr
    return reader.objects.decode(addr, depth, limits)


def locate(reader: StackReader, path: str | ObjectPath, *, limits: Limits | None = None) -> int | Failure:
    """Address of the object at ``path``."""
    p = ObjectPath.parse(path) if isinstance(path, str) else path
    module = reader.module(p.module)
    if module is None:
        return Failure("missing", 0, f"module {p.module!r} is not imported in the target")
    return reader.objects.resolve(module, list(p.steps), limits)
