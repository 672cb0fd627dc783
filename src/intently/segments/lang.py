"""The segment expression language: parsed, type-checked, compiled to closures.

    session.cart.value > 100 and geo.country == "IN"
    "running" in session.top_categories
    profile.purchases.count == 0 and session.exit_intent

Grammar (LALR, by lark): `or`, `and`, `not`; comparisons `== != < <= > >=`, `in`,
`not in` (a value in a list, or a substring in a string); `+ - * /` on numbers; literals
(numbers, "strings", true, false, null, [lists of literals]); and dotted field names from
the closed list in `fields.py`.

Safety is by construction, not by filtering: the language has no calls, no attribute
access on values, no indexing, no imports, no power operator, and names resolve only to
the listed fields, so an expression can read what a segment may read and do nothing else.
(Apache Unomi's CVE-2020-13942 came from evaluating conditions with a general-purpose
expression engine; this one is not general-purpose.) Sizes are bounded before parsing and
the tree depth before compiling, so no expression can exhaust memory or the stack.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from intently.context.profile import Profile
from intently.segments.fields import FieldCatalog, Type

MAX_LENGTH = 2000
MAX_DEPTH = 40
MAX_STRING = 256
MAX_NUMBER_CHARS = 24
MAX_LIST = 256

_GRAMMAR = r"""
?start: or_test
?or_test: and_test | or_test "or" and_test -> or_
?and_test: not_test | and_test "and" not_test -> and_
?not_test: "not" not_test -> not_ | comparison
?comparison: sum
    | sum COMPARE sum -> compare
    | sum "in" sum -> in_
    | sum "not" "in" sum -> not_in
?sum: term | sum ADD term -> arith
?term: factor | term MUL factor -> arith
?factor: "-" factor -> neg | atom
?atom: NUMBER -> number
    | STRING -> string
    | "true" -> true
    | "false" -> false
    | "null" -> null
    | "[" [literal ("," literal)*] "]" -> list_
    | path
    | "(" or_test ")"
?literal: NUMBER -> number | STRING -> string | "-" NUMBER -> negative_number
path: NAME ("." NAME)*
COMPARE: "==" | "!=" | "<=" | ">=" | "<" | ">"
ADD: "+" | "-"
MUL: "*" | "/"
NAME: /[A-Za-z_][A-Za-z0-9_]*/
NUMBER: /[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?/
STRING: /"([^"\\\n]|\\.)*"/ | /'([^'\\\n]|\\.)*'/
%ignore /[ \t\r\n]+/
"""
_parser = Lark(_GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)

Evaluate = Callable[[Profile, int], Any]


class ExpressionError(ValueError):
    """An expression that cannot be a segment: `position` is the 0-based offset of the
    problem in the text."""

    def __init__(self, position: int, problem: str) -> None:
        super().__init__(f"at position {position}: {problem}")
        self.position = position
        self.problem = problem


class Emitter(Protocol):
    """Names for generated code (see `fused.py`): a local variable holding a field's
    value, and a name bound to a Python object in the generated code's namespace."""

    def field(self, name: str) -> str: ...

    def bind(self, value: object) -> str: ...


Emit = Callable[[Emitter], str]


@dataclass(frozen=True, slots=True)
class Node:
    type: Type
    nullable: bool
    evaluate: Evaluate
    topics: frozenset[str]
    constant: bool = False
    value: Any = None  # of a constant
    # Python source computing the same value (for fused evaluation); None: call `evaluate`.
    emit: Emit | None = None
    field: str | None = None  # the field a path node reads
    # Whether `source` is cheap enough to repeat inside one test (a local, a literal, or
    # arithmetic on those), so tests may read it twice instead of calling `evaluate`.
    cheap: bool = False

    def source(self, emitter: Emitter) -> str:
        if self.emit is not None:
            return self.emit(emitter)
        return f"{emitter.bind(self.evaluate)}(p, n)"


@dataclass(frozen=True, slots=True)
class Compiled:
    """A checked expression: `matches(profile, now_ms)` and the topics it reads."""

    source: str
    matches: Callable[[Profile, int], bool]
    topics: frozenset[str]
    fields: frozenset[str]
    # Python source of `matches` as one boolean expression, for fused evaluation.
    emit: Emit


def compile_expression(source: str, catalog: FieldCatalog) -> Compiled:
    """Parse, check and compile `source`; raises `ExpressionError` naming the position."""
    if len(source) > MAX_LENGTH:
        raise ExpressionError(MAX_LENGTH, f"longer than {MAX_LENGTH} characters")
    if not source.strip():
        raise ExpressionError(0, "the expression is empty")
    tree = _parse(source)
    _check_depth(tree)
    compiler = _Compiler(catalog)
    node = compiler.build(tree)
    if node.type not in ("bool", "any"):
        raise ExpressionError(0, f"a segment must be true or false, and this is a {node.type}")
    evaluate = node.evaluate
    fields = frozenset(compiler.fields)
    if node.type == "bool":  # every bool node returns True or False: no wrapper needed
        return Compiled(source, evaluate, node.topics, fields, node.source)

    def matches(profile: Profile, now_ms: int) -> bool:
        return evaluate(profile, now_ms) is True

    return Compiled(source, matches, node.topics, fields, lambda e: f"({node.source(e)} is True)")


def _parse(source: str) -> Tree[Token]:
    try:
        return _parser.parse(source)
    except UnexpectedCharacters as exc:
        position = exc.pos_in_stream or 0
        raise ExpressionError(position, f"unexpected character {source[position]!r}") from None
    except UnexpectedEOF:
        raise ExpressionError(len(source), "the expression ends too early") from None
    except UnexpectedToken as exc:
        token = exc.token
        position = token.start_pos if token.start_pos is not None else len(source)
        if token.type == "$END":
            raise ExpressionError(len(source), "the expression ends too early") from None
        raise ExpressionError(position, _unexpected(str(token))) from None
    except UnexpectedInput as exc:  # any other parse failure
        raise ExpressionError(exc.pos_in_stream or 0, "cannot parse the expression") from None


_WHY_UNEXPECTED = {
    "(": "there are no functions to call; parentheses only group",
    "[": "values cannot be indexed; use 'in' to look in a list",
    "*": "there is no power operator",
}


def _unexpected(text: str) -> str:
    why = _WHY_UNEXPECTED.get(text)
    return f"unexpected {text!r}" + (f": {why}" if why else "")


def _check_depth(tree: Tree[Token]) -> None:
    stack: list[tuple[Tree[Token] | Token, int]] = [(tree, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            position = item.meta.start_pos if isinstance(item, Tree) else 0
            raise ExpressionError(position, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, Tree):
            stack.extend((child, depth + 1) for child in item.children)


def _position(tree: Tree[Token] | Token) -> int:
    if isinstance(tree, Token):
        return tree.start_pos or 0
    return tree.meta.start_pos if not tree.meta.empty else 0


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


# `type(x) in _NUMBERS` rather than isinstance: it is faster and excludes bool.
_NUMBERS = (int, float)


def _is_number(value: Any) -> bool:
    return type(value) in _NUMBERS


def _same(a: Any, b: Any) -> bool:
    """Equality without Python's `True == 1`: values of different kinds are never equal."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    return type(a) is type(b) and a == b


class _Compiler:
    def __init__(self, catalog: FieldCatalog) -> None:
        self.catalog = catalog
        self.fields: set[str] = set()

    def build(self, tree: Tree[Token] | Token) -> Node:
        if isinstance(tree, Token):  # pragma: no cover - the grammar wraps every token
            raise ExpressionError(_position(tree), f"unexpected {tree!s}")
        method = getattr(self, "_" + tree.data, None)
        if method is None:  # pragma: no cover - every rule has a method
            raise ExpressionError(_position(tree), f"unsupported {tree.data}")
        node: Node = method(tree)
        return node

    # -- literals ---------------------------------------------------------------------------

    def _number(self, tree: Tree[Token]) -> Node:
        token = tree.children[0]
        assert isinstance(token, Token)
        return self._constant("number", _number_value(token, 1))

    def _negative_number(self, tree: Tree[Token]) -> Node:
        token = tree.children[0]
        assert isinstance(token, Token)
        return self._constant("number", _number_value(token, -1))

    def _string(self, tree: Tree[Token]) -> Node:
        token = tree.children[0]
        assert isinstance(token, Token)
        text = _unquote(token)
        if len(text) > MAX_STRING:
            raise ExpressionError(_position(token), f"string longer than {MAX_STRING} characters")
        return self._constant("string", text)

    def _true(self, tree: Tree[Token]) -> Node:
        return self._constant("bool", True)

    def _false(self, tree: Tree[Token]) -> Node:
        return self._constant("bool", False)

    def _null(self, tree: Tree[Token]) -> Node:
        return Node(
            "null", True, lambda _p, _n: None, frozenset(), constant=True, emit=lambda _e: "None"
        )

    def _list_(self, tree: Tree[Token]) -> Node:
        items = [self.build(child) for child in tree.children if isinstance(child, Tree)]
        if len(items) > MAX_LIST:
            raise ExpressionError(_position(tree), f"a list holds at most {MAX_LIST} items")
        kinds = {item.type for item in items}
        if len(kinds) > 1:
            raise ExpressionError(_position(tree), "a list must hold one kind of value")
        values = [item.value for item in items]
        return Node(
            "list", False, lambda _p, _n: values, frozenset(), constant=True, value=values,
            emit=lambda e: e.bind(values),
        )  # fmt: skip

    def _constant(self, type_: Type, value: Any) -> Node:
        # repr of a checked str, int, finite float or bool is an inert Python literal.
        literal = f"({value!r})"
        return Node(
            type_, False, lambda _p, _n: value, frozenset(), constant=True, value=value,
            emit=lambda _e: literal, cheap=True,
        )  # fmt: skip

    # -- names ----------------------------------------------------------------------------

    def _path(self, tree: Tree[Token]) -> Node:
        parts = [str(child) for child in tree.children]
        name = ".".join(parts)
        if any(part.startswith("_") for part in parts):
            # Not even as a trait name: nothing here should look like a way into Python.
            raise ExpressionError(
                _position(tree), f"unknown field {name!r}; names starting with '_' are never fields"
            )
        field = self.catalog.get(name)
        if field is None:
            hint = "; fields start with session., profile., geo., device. or local."
            raise ExpressionError(_position(tree), f"unknown field {name!r}{hint}")
        self.fields.add(name)
        return Node(
            field.type, field.nullable, field.get, field.topics,
            emit=lambda e: e.field(name), field=name, cheap=True,
        )  # fmt: skip

    # -- operators --------------------------------------------------------------------------

    def _not_(self, tree: Tree[Token]) -> Node:
        operand = self._boolean(tree.children[0])
        inner = operand.evaluate
        return Node(
            "bool", False, lambda p, n: inner(p, n) is False, operand.topics,
            emit=lambda e: f"({operand.source(e)} is False)",
        )  # fmt: skip

    def _and_(self, tree: Tree[Token]) -> Node:
        left, right = (self._boolean(child) for child in tree.children)
        a, b = left.evaluate, right.evaluate
        return Node(
            "bool", False, lambda p, n: a(p, n) is True and b(p, n) is True,
            left.topics | right.topics,
            emit=lambda e: f"({left.source(e)} is True and {right.source(e)} is True)",
        )  # fmt: skip

    def _or_(self, tree: Tree[Token]) -> Node:
        left, right = (self._boolean(child) for child in tree.children)
        a, b = left.evaluate, right.evaluate
        return Node(
            "bool", False, lambda p, n: a(p, n) is True or b(p, n) is True,
            left.topics | right.topics,
            emit=lambda e: f"({left.source(e)} is True or {right.source(e)} is True)",
        )  # fmt: skip

    def _boolean(self, child: Tree[Token] | Token) -> Node:
        node = self.build(child)
        if node.type not in ("bool", "any"):
            raise ExpressionError(
                _position(child), f"expected true/false here, found a {node.type}"
            )
        return node

    def _compare(self, tree: Tree[Token]) -> Node:
        left_tree, op_token, right_tree = tree.children
        left, right = self.build(left_tree), self.build(right_tree)
        op = str(op_token)
        topics = left.topics | right.topics
        a, b = left.evaluate, right.evaluate
        if op in ("==", "!="):
            self._comparable(left, right, tree)
            negate = op == "!="
            if right.constant and not left.constant:
                return Node(
                    "bool", False, _equals_constant(a, right.value, negate), topics,
                    emit=_emit_equals(left, right.value, negate),
                )  # fmt: skip
            return Node("bool", False, lambda p, n: _same(a(p, n), b(p, n)) is not negate, topics)
        for side, side_tree in ((left, left_tree), (right, right_tree)):
            if side.type not in ("number", "any"):
                raise ExpressionError(
                    _position(side_tree), f"{op} compares numbers, not a {side.type}"
                )
        compare = _COMPARE[op]
        if right.constant and not left.constant:
            limit = right.value

            def against_constant(p: Profile, n: int) -> bool:
                x = a(p, n)
                return type(x) in _NUMBERS and compare(x, limit)

            emit = None
            if left.cheap:
                emit = _emit_ordered(left, op, limit)
            return Node("bool", False, against_constant, topics, emit=emit)

        def ordered(p: Profile, n: int) -> bool:
            x, y = a(p, n), b(p, n)
            return _is_number(x) and _is_number(y) and compare(x, y)

        return Node("bool", False, ordered, topics)

    def _comparable(self, left: Node, right: Node, tree: Tree[Token]) -> None:
        kinds = {left.type, right.type} - {"any"}
        if "null" in kinds:
            other = (kinds - {"null"}) or {"null"}
            nullable = left.nullable if right.type == "null" else right.nullable
            if not nullable and other != {"null"} and "any" not in (left.type, right.type):
                raise ExpressionError(
                    _position(tree), f"this {other.pop()} is never null: compare it to a value"
                )
            return
        if len(kinds) > 1:
            raise ExpressionError(
                _position(tree), f"cannot compare a {left.type} with a {right.type}"
            )

    def _in_(self, tree: Tree[Token]) -> Node:
        return self._membership(tree, negate=False)

    def _not_in(self, tree: Tree[Token]) -> Node:
        return self._membership(tree, negate=True)

    def _membership(self, tree: Tree[Token], *, negate: bool) -> Node:
        left_tree, right_tree = tree.children
        left, right = self.build(left_tree), self.build(right_tree)
        if right.type not in ("list", "string", "any"):
            raise ExpressionError(
                _position(right_tree), f"'in' looks in a list or a string, not a {right.type}"
            )
        if right.type == "string" and left.type not in ("string", "any"):
            raise ExpressionError(
                _position(left_tree), f"only a string can be in a string, not a {left.type}"
            )
        a, b = left.evaluate, right.evaluate
        topics = left.topics | right.topics
        if left.constant and left.type == "string":
            # A string is `in` a list exactly when some item equals it, and `in` a string
            # when it is a substring: Python's `in` is both, and never equates kinds.
            needle = left.value

            def has_constant(p: Profile, n: int) -> bool:
                container = b(p, n)
                return type(container) in (list, str) and (needle in container) is not negate

            return Node(
                "bool", False, has_constant, topics,
                emit=_emit_has(right, needle, negate) if right.field is not None else None,
            )  # fmt: skip
        if right.constant and right.type == "list" and right.value:
            options = frozenset(right.value)
            kinds = _NUMBERS if _is_number(right.value[0]) else (type(right.value[0]),)

            def among_constants(p: Profile, n: int) -> bool:
                item = a(p, n)
                return type(item) in kinds and (item in options) is not negate

            return Node(
                "bool", False, among_constants, topics,
                emit=_emit_among(left, options, kinds, negate) if left.field is not None else None,
            )  # fmt: skip

        def contained(p: Profile, n: int) -> bool:
            item, container = a(p, n), b(p, n)
            if isinstance(container, str):
                found = isinstance(item, str) and item in container
            elif isinstance(container, list):
                found = any(_same(item, held) for held in container)
            else:
                return False
            return found is not negate

        return Node("bool", False, contained, topics)

    def _neg(self, tree: Tree[Token]) -> Node:
        operand = self._numeric(tree.children[0])
        inner = operand.evaluate

        def negative(p: Profile, n: int) -> Any:
            value = inner(p, n)
            return -value if _is_number(value) else None

        return Node("number", operand.nullable, negative, operand.topics)

    def _arith(self, tree: Tree[Token]) -> Node:
        left_tree, op_token, right_tree = tree.children
        left, right = self._numeric(left_tree), self._numeric(right_tree)
        a, b, op = left.evaluate, right.evaluate, str(op_token)

        def arithmetic(p: Profile, n: int) -> Any:
            x, y = a(p, n), b(p, n)
            if not (_is_number(x) and _is_number(y)):
                return None
            if op == "+":
                return x + y
            if op == "-":
                return x - y
            if op == "*":
                return x * y
            return x / y if y else None

        emit = None
        if _is_leaf(left) and _is_leaf(right):
            emit = _emit_arithmetic(left, _OPERATORS[op], right)
        return Node(
            "number", True, arithmetic, left.topics | right.topics, emit=emit,
            cheap=emit is not None,
        )  # fmt: skip

    def _numeric(self, child: Tree[Token] | Token) -> Node:
        node = self.build(child)
        if node.type not in ("number", "any"):
            raise ExpressionError(_position(child), f"arithmetic needs numbers, not a {node.type}")
        return node


# Emitted tests skip the type check when the field's declared type already guarantees
# it (a `number` field holds an int or a float, a `string` field a str, a `list` field a
# list; a nullable one may also hold None), giving the same answer as the closures.


def _kind_of(value: Any) -> Type | None:
    return "number" if type(value) in _NUMBERS else "string" if type(value) is str else None


def _guard(node: Node, kind: Type | None, fallback: str, x: str) -> str:
    """A test that `x` (node's value) is of `kind`: nothing, `is not None` or `fallback`."""
    if node.field is not None and kind is not None and node.type == kind:
        return f"{x} is not None and " if node.nullable else ""
    return fallback


def _emit_equals(left: Node, constant: Any, negate: bool) -> Emit | None:
    """`field == constant` as source (the value is read once into a local); None (the
    closure is called) for a list constant."""
    if left.field is None or not (constant is None or type(constant) in (str, int, float, bool)):
        return None
    test = "is not" if negate else "is"

    def emit(e: Emitter) -> str:
        x = left.source(e)
        if constant is None or type(constant) is bool:
            return f"({x} {test} {constant!r})"
        if left.type == _kind_of(constant):  # None equals no constant: no guard needed
            return f"({x} {'!=' if negate else '=='} {constant!r})"
        kinds = "_NUMBERS" if type(constant) in _NUMBERS else "_STR"
        return f"((type({x}) in {kinds} and {x} == {constant!r}) {test} True)"

    return emit


def _is_leaf(node: Node) -> bool:
    return node.field is not None or (node.constant and node.type == "number")


# The grammar's arithmetic tokens, each mapped to itself: only these reach generated code.
_OPERATORS = {"+": "+", "-": "-", "*": "*", "/": "/"}


def _emit_arithmetic(left: Node, op: str, right: Node) -> Emit:
    """`x op y` on two leaves: null unless both are numbers (and y is not 0 for `/`)."""

    def emit(e: Emitter) -> str:
        x, y = left.source(e), right.source(e)
        guard = f"type({x}) in _NUMBERS and type({y}) in _NUMBERS"
        if op == "/":
            guard += f" and {y} != 0"
        return f"(({x} {op} {y}) if {guard} else None)"

    return emit


def _emit_ordered(left: Node, op: str, limit: Any) -> Emit:
    def emit(e: Emitter) -> str:
        x = left.source(e)
        guard = _guard(left, "number", f"type({x}) in _NUMBERS and ", x)
        return f"({guard}{x} {op} ({limit!r}))"

    return emit


def _emit_has(container: Node, needle: str, negate: bool) -> Emit:
    keyword = "not in" if negate else "in"

    def emit(e: Emitter) -> str:
        x = container.source(e)
        fallback = f"type({x}) in _CONTAINERS and "
        guard = _guard(container, container.type if container.type in ("list", "string")
                       else None, fallback, x)  # fmt: skip
        return f"({guard}({needle!r} {keyword} {x}))"

    return emit


def _emit_among(item: Node, options: frozenset[Any], kinds: tuple[type, ...], negate: bool) -> Emit:
    keyword = "not in" if negate else "in"
    kind: Type | None = "number" if kinds == _NUMBERS else "string" if kinds == (str,) else None

    def emit(e: Emitter) -> str:
        x = item.source(e)
        guard = _guard(item, kind, f"type({x}) in {e.bind(kinds)} and ", x)
        return f"({guard}({x} {keyword} {e.bind(options)}))"

    return emit


def _equals_constant(read: Evaluate, constant: Any, negate: bool) -> Evaluate:
    """`field == constant`, specialised by the constant's kind (the common case)."""
    if constant is None:
        return lambda p, n: (read(p, n) is None) is not negate
    if type(constant) is bool:
        return lambda p, n: (read(p, n) is constant) is not negate
    if type(constant) in _NUMBERS:

        def equals_number(p: Profile, n: int) -> bool:
            x = read(p, n)
            return (type(x) in _NUMBERS and x == constant) is not negate

        return equals_number
    kind = type(constant)

    def equals(p: Profile, n: int) -> bool:
        x = read(p, n)
        return (type(x) is kind and x == constant) is not negate

    return equals


def _number_value(token: Token, sign: int) -> float | int:
    text = str(token)
    if len(text) > MAX_NUMBER_CHARS:
        raise ExpressionError(_position(token), f"number longer than {MAX_NUMBER_CHARS} characters")
    value = float(text) if any(c in text for c in ".eE") else int(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise ExpressionError(_position(token), "number out of range")
    return sign * value


def _unquote(token: Token) -> str:
    body = str(token)[1:-1]
    out: list[str] = []
    escaped = False
    for char in body:
        if escaped:
            out.append({"n": "\n", "t": "\t"}.get(char, char))
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)
