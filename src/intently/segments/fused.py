"""Fused evaluation: many segments tested by one generated function.

After an event, the segments to re-evaluate are known by the topics the event touched
(`membership.py`). Calling each segment's closure tree costs several Python calls per
segment and reads the same fields again and again. Here the whole candidate list becomes
one function that reads each field once into a local and tests every segment inline:

    def fused(p, n):
        v0 = f0(p, n)            # session.cart.value
        v1 = f1(p, n)            # geo.country
        matched = []
        if (type(v0) in _NUMBERS and v0 > (100)) is True and ...: matched.append(s0)
        ...
        return matched

What may appear in the generated source is fixed by construction: local names this
module makes, names bound to objects it chose (field getters, constant sets, closures),
`repr` of checked literals (str, int, finite float, bool, None) and operators. The source
is parsed back and every node checked against an allow-list before it is compiled, and it
runs with no builtins except `type`. Nothing of the segment's text is ever executed.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from typing import Any

from intently.context.profile import Profile
from intently.segments.fields import FieldCatalog
from intently.segments.lang import Compiled

Fused = Callable[[Profile, int], list[str]]

_ALLOWED = (
    ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Assign, ast.Return, ast.If,
    ast.Expr, ast.Call, ast.Attribute, ast.Name, ast.Load, ast.Store, ast.Constant,
    ast.BoolOp, ast.And, ast.Or, ast.Compare, ast.Is, ast.IsNot, ast.In, ast.NotIn,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.List, ast.UnaryOp, ast.USub,
)  # fmt: skip


class _Emitter:
    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {
            "__builtins__": {"type": type},
            "_NUMBERS": (int, float),
            "_STR": (str,),
            "_CONTAINERS": (list, str),
        }
        self.fields: dict[str, str] = {}  # field name -> local variable
        self._bound = 0

    def field(self, name: str) -> str:
        variable = self.fields.get(name)
        if variable is None:
            variable = self.fields[name] = f"v{len(self.fields)}"
        return variable

    def bind(self, value: object) -> str:
        name = f"b{self._bound}"
        self._bound += 1
        self.namespace[name] = value
        return name


def fuse(candidates: Sequence[tuple[str, Compiled]], catalog: FieldCatalog) -> Fused:
    """One function returning the names of the `candidates` a profile matches."""
    emitter = _Emitter()
    tests = []
    for name, compiled in candidates:
        label = emitter.bind(name)
        tests.append(f"    if {compiled.emit(emitter)}:\n        matched.append({label})")
    reads = []
    for field_name, variable in emitter.fields.items():
        field = catalog.get(field_name)
        assert field is not None  # compiled expressions only name catalog fields
        reads.append(f"    {variable} = {emitter.bind(field.get)}(p, n)")
    source = "\n".join(
        ["def fused(p, n):", *reads, "    matched = []", *tests, "    return matched"]
    )
    _check(source)
    code = compile(source, "<segments>", "exec")
    exec(code, emitter.namespace)  # noqa: S102 - generated from checked parts, see above
    fused: Fused = emitter.namespace["fused"]
    return fused


def _check(source: str) -> None:
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, _ALLOWED):
            raise AssertionError(f"generated segment code holds a {type(node).__name__}")
        if isinstance(node, ast.Attribute) and node.attr != "append":
            raise AssertionError(f"generated segment code reads .{node.attr}")
        if isinstance(node, ast.Name) and not (
            node.id in ("p", "n", "matched", "type") or node.id[0] in "vb_"
        ):
            raise AssertionError(f"generated segment code names {node.id}")
