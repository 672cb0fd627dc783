"""Fused evaluation: many segments tested by one generated function.

After an event, the segments to re-evaluate are known by the topics the event touched
(`membership.py`). Calling each segment's closure tree costs several Python calls per
segment and reads the same fields again and again. Here the whole candidate list becomes
one function that reads each field once into a local, inline (from the field's source in
`fields.py`), and tests every segment against the profile's current membership, so that
the usual answer, "nothing changed", costs no allocation and no call:

    def fused(p, n, cur):
        s = p.session
        v0 = (h_cart_value(s) if s is not None else 0.0)    # session.cart.value
        v1 = (s.country if s is not None else None)         # geo.country
        flips = []
        if ((v0 > (100))) is not (b0 in cur):
            flips.append(b0)
        ...
        return flips

What may appear in the generated source is fixed by construction: local names this
module makes, field sources from the catalog (this project's code), names bound to
objects it chose (constant sets, closures), `repr` of checked literals (str, int, finite
float, bool, None) and operators. The source is parsed back and every node checked
against an allow-list (node kinds, names, and attributes: only the fields of the session
and profile structs) before it is compiled, and it runs with no builtins except `type`.
Nothing of the segment's text is ever executed.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from typing import Any

from intently.context.profile import Profile
from intently.context.session import Session
from intently.segments.fields import FieldCatalog, read_source
from intently.segments.lang import Compiled

# (profile, now_ms, names of the segments it is in) -> names whose membership flips.
Fused = Callable[[Profile, int, Sequence[str]], list[str]]

_ALLOWED = (
    ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Assign, ast.Return, ast.If,
    ast.IfExp, ast.Expr, ast.Call, ast.Attribute, ast.Name, ast.Load, ast.Store,
    ast.Constant, ast.BoolOp, ast.And, ast.Or, ast.Compare, ast.Is, ast.IsNot, ast.In,
    ast.NotIn, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.List, ast.UnaryOp,
    ast.USub, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div,
)  # fmt: skip
# Attributes the generated code may read: the struct fields of a profile and a session
# (from field sources), `append` on the list of flips and `get` on the session's counts.
_ATTRIBUTES = frozenset((*Profile.__struct_fields__, *Session.__struct_fields__, "append", "get"))
_LOCALS = frozenset({"p", "n", "s", "cur", "flips", "type"})


class _Emitter:
    def __init__(self, catalog: FieldCatalog) -> None:
        self.namespace: dict[str, Any] = {
            "__builtins__": {"type": type},
            "_NUMBERS": (int, float),
            "_STR": (str,),
            "_CONTAINERS": (list, str),
            **catalog.helpers,
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
    """One function returning the names of the `candidates` whose membership differs from
    `cur`: those a profile matches and is not in, and those it is in and no longer
    matches, in candidate order."""
    emitter = _Emitter(catalog)
    tests = []
    for name, compiled in candidates:
        label = emitter.bind(name)
        tests.append(
            f"    if ({compiled.emit(emitter)}) is not ({label} in cur):\n"
            f"        flips.append({label})"
        )
    reads = ["    s = p.session"]
    for field_name, variable in emitter.fields.items():
        field = catalog.get(field_name)
        assert field is not None  # compiled expressions only name catalog fields
        if field.source is not None:
            reads.append(f"    {variable} = {read_source(field)}")
        else:
            reads.append(f"    {variable} = {emitter.bind(field.get)}(p, n)")
    source = "\n".join(
        ["def fused(p, n, cur):", *reads, "    flips = []", *tests, "    return flips"]
    )
    _check(source, emitter.namespace)
    code = compile(source, "<segments>", "exec")
    exec(code, emitter.namespace)  # noqa: S102 - generated from checked parts, see above
    fused: Fused = emitter.namespace["fused"]
    return fused


def _check(source: str, namespace: dict[str, Any]) -> None:
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, _ALLOWED):
            raise AssertionError(f"generated segment code holds a {type(node).__name__}")
        if isinstance(node, ast.Attribute) and node.attr not in _ATTRIBUTES:
            raise AssertionError(f"generated segment code reads .{node.attr}")
        if isinstance(node, ast.Name) and not (
            node.id in _LOCALS
            or node.id[0] == "v"
            or (node.id in namespace and node.id[0] in "b_h")
        ):
            raise AssertionError(f"generated segment code names {node.id}")
