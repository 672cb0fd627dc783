"""The segment expression language: what it accepts, how it evaluates, and every way it
refuses, with the position of the problem. Includes attempts at code execution in the
style of Apache Unomi's CVE-2020-13942 (OGNL/MVEL injection through conditions)."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intently.context.facts import Facts, Line
from intently.context.profile import Profile, ProfileRules
from intently.context.session import Session
from intently.context.settings import ContextSettings
from intently.segments.fields import FieldCatalog
from intently.segments.lang import MAX_LENGTH, ExpressionError, compile_expression

RULES = ProfileRules(ContextSettings())
CATALOG = FieldCatalog(RULES)
NOW = 1_800_000_000_000


def person(**session_fields: object) -> Profile:
    profile = RULES.new("p_test", NOW - 60_000)
    profile.session = Session(number=1, start_ms=NOW - 60_000, last_ms=NOW, **session_fields)
    return profile


def matches(expression: str, profile: Profile) -> bool:
    return compile_expression(expression, CATALOG).matches(profile, NOW)


def test_the_examples_from_the_issue_evaluate_as_written() -> None:
    shopper = person(
        cart=[Line("p1", 2, 60.0, "running")], country="IN", exit_intent=True,
        categories={"running": 5.0, "hiking": 1.0}, affinity_base_ms=NOW,
    )  # fmt: skip
    assert matches('session.cart.value > 100 and geo.country == "IN"', shopper)
    assert not matches('session.cart.value > 200 and geo.country == "IN"', shopper)
    assert not matches('session.cart.value > 100 and geo.country == "US"', shopper)
    assert matches('"running" in session.top_categories', shopper)
    assert not matches('"sailing" in session.top_categories', shopper)
    assert matches("profile.purchases.count == 0 and session.exit_intent", shopper)
    shopper.purchases = 1
    assert not matches("profile.purchases.count == 0 and session.exit_intent", shopper)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("session.cart.value * 2 - 20 >= 220", True),
        ("session.cart.value / 0 > 1", False),  # division by zero is null: never true
        ("-session.cart.value < -100", True),
        ("not session.exit_intent", True),
        ("session.exit_intent or session.cart.count == 2", True),
        ('geo.country in ["IN", "LK"]', True),
        ('geo.country not in ["IN", "LK"]', False),
        ('"IN" in geo.country', True),  # substring of a string
        ("geo.city == null", True),
        ("geo.city != null", False),
        ("profile.traits.vip == true", True),
        ("profile.traits.vip == 1", False),  # booleans are not numbers
        ('profile.traits.tier == "gold"', False),  # absent trait: null, not equal
        ("profile.traits.age > 30", False),  # absent trait: comparisons are false
        ("(session.cart.value > 100) == true", True),
        ("1 < 2", True),
    ],
)
def test_evaluation(expression: str, expected: bool) -> None:
    profile = person(cart=[Line("p", 2, 120.0, None)], country="IN")
    profile.traits = {"vip": True}
    assert matches(expression, profile) is expected


def test_a_visitor_without_a_session_reads_defaults() -> None:
    profile = RULES.new("p_none", NOW)
    assert matches("session.cart.value == 0 and not session.exit_intent", profile)
    assert matches("geo.country == null", profile)


@pytest.mark.parametrize(
    ("expression", "position", "words"),
    [
        ("session.cart.value >", 20, "ends too early"),
        ("session.cart.value > > 1", 21, "unexpected '>'"),
        ('geo.country == "IN', 15, "unexpected character"),
        ("session.cart.vlaue > 1", 0, "unknown field 'session.cart.vlaue'"),
        ('session.cart.value > "100"', 21, "compares numbers, not a string"),
        ("geo.country == 1", 0, "cannot compare a string with a number"),
        ("session.exit_intent + 1 > 0", 0, "arithmetic needs numbers, not a bool"),
        ("session.cart.value and true", 0, "expected true/false here, found a number"),
        ("session.cart.value", 0, "must be true or false"),
        ("1 < 2 < 3", 6, "unexpected '<'"),
        ("session.events == null", 0, "never null"),
        ('[1, "a"] == [1]', 0, "one kind of value"),
        ('"x" in 5', 7, "looks in a list or a string"),
        ("5 in geo.country", 0, "only a string can be in a string"),
        ("", 0, "empty"),
    ],
)
def test_errors_name_the_position_and_the_problem(
    expression: str, position: int, words: str
) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(expression, CATALOG)
    assert caught.value.position == position
    assert words in caught.value.problem


@pytest.mark.parametrize(
    "attack",
    [
        # Unomi CVE-2020-13942 used OGNL/MVEL; these are the same ideas in this syntax.
        '__import__("os").system("id")',
        "session.__class__.__init__.__globals__",
        'profile.traits.__class__ == "x"',
        "session.cart.value.__class__",
        '@java.lang.Runtime@getRuntime().exec("id")',
        'Runtime.getRuntime().exec("touch /tmp/pwned")',
        'eval("1+1") == 2',
        "exec('import os')",
        "lambda: 1",
        "[x for x in session.recent_products]",
        "session.recent_products[0] == 'a'",
        "session.events ** 99999999 > 1",
        'f"{session}" == ""',
        "import os",
        "open('/etc/passwd')",
        "session.cart.value; 1",
        "session.events if true else 1",
        "#{1+1}",
        "${jndi:ldap://x}",
    ],
)
def test_code_execution_attempts_are_refused_at_parse_or_type_check(attack: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(attack, CATALOG)


def test_huge_inputs_are_refused_before_doing_work() -> None:
    with pytest.raises(ExpressionError, match="longer than"):
        compile_expression("1 == 1 and " * 300 + "true", CATALOG)
    with pytest.raises(ExpressionError, match="number longer"):
        compile_expression("session.events > " + "9" * 100, CATALOG)
    with pytest.raises(ExpressionError, match="out of range"):
        compile_expression("session.events > 1e999", CATALOG)
    with pytest.raises(ExpressionError, match="string longer"):
        compile_expression('geo.city == "' + "x" * 300 + '"', CATALOG)
    with pytest.raises(ExpressionError, match="at most"):
        compile_expression("session.events in [" + ",".join(["1"] * 300) + "]", CATALOG)
    with pytest.raises(ExpressionError, match="nested deeper"):
        compile_expression("not " * 100 + "true", CATALOG)
    assert len("x" * MAX_LENGTH) == MAX_LENGTH


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_either_compiles_or_is_an_expression_error(text: str) -> None:
    try:
        compiled = compile_expression(text, CATALOG)
    except ExpressionError as error:
        assert 0 <= error.position <= max(len(text), 1)
    else:
        assert compiled.matches(person(), NOW) in (True, False)


def test_topics_are_what_the_expression_reads() -> None:
    compiled = compile_expression(
        'session.cart.value > 1 and geo.country == "IN" and profile.traits.vip == true',
        CATALOG,
    )
    assert compiled.topics == {"cart", "purchases", "where", "traits", "session"}
    assert compiled.fields == {"session.cart.value", "geo.country", "profile.traits.vip"}


FUSED_EXPRESSIONS = [
    "session.cart.value > 100",
    'session.cart.value > 50 and geo.country == "DE"',
    '"running" in session.top_categories',
    '"running" not in session.top_categories',
    "profile.purchases.count == 0 and session.exit_intent",
    "not session.exit_intent or session.cart.count >= 2",
    'geo.country in ["IN", "DE"]',
    'geo.country not in ["IN", "DE"]',
    "geo.city == null",
    "geo.city != null",
    "session.price.max - session.price.min > 10",
    "session.cart.value / session.cart.count > 20",
    "session.cart.value / 0 > 1",
    "session.cart.value * 2 + 1 > 50",
    "session.events + 1 == 3",
    "session.cart.products == []",
    'session.cart.products != ["p1"]',
    'profile.traits.tier == ["a"]',
    "profile.traits.age * 2 >= 60",
    "profile.traits.vip == true",
    "profile.traits.vip != true",
    "profile.traits.age >= 30",
    'profile.traits.tier == "gold"',
    "profile.traits.flag",
    "session.events != 3",
    "-session.cart.value < -50",
    '"a" in geo.country',
]


@settings(max_examples=200, deadline=None)
@given(
    cart=st.lists(st.tuples(st.sampled_from(["p1", "p2"]), st.integers(1, 3),
                            st.floats(0, 200)), max_size=3),
    country=st.sampled_from([None, "IN", "DE", "US"]),
    city=st.sampled_from([None, "Pune"]),
    exit_intent=st.booleans(),
    categories=st.dictionaries(st.sampled_from(["running", "hiking", "bags", "tea"]),
                               st.floats(0.1, 10), max_size=4),
    traits=st.dictionaries(st.sampled_from(["vip", "age", "tier", "flag"]),
                           st.one_of(st.booleans(), st.integers(0, 90), st.text(max_size=4),
                                     st.none(), st.lists(st.integers(), max_size=2)),
                           max_size=4),
    purchases=st.integers(0, 2),
    events=st.integers(0, 5),
)  # fmt: skip
def test_fused_evaluation_agrees_with_each_segment_on_its_own(
    cart: list[tuple[str, int, float]],
    country: str | None,
    city: str | None,
    exit_intent: bool,
    categories: dict[str, float],
    traits: dict[str, object],
    purchases: int,
    events: int,
) -> None:
    from intently.segments.fused import fuse

    profile = person(
        cart=[Line(p, q, price, None) for p, q, price in cart], country=country, city=city,
        exit_intent=exit_intent, categories=categories or None, affinity_base_ms=NOW,
        events=events, prices=[price for _, _, price in cart] or None,
        price_min=min((c[2] for c in cart), default=None),
        price_max=max((c[2] for c in cart), default=None),
    )  # fmt: skip
    profile.traits = traits or None
    profile.purchases = purchases
    compiled = [(f"s{i}", compile_expression(e, CATALOG)) for i, e in enumerate(FUSED_EXPRESSIONS)]
    fused = fuse(compiled, CATALOG)
    expected = [name for name, c in compiled if c.matches(profile, NOW)]
    # Flips against no membership are the matches; against every segment, the misses.
    assert fused(profile, NOW, []) == expected
    everything = [name for name, _ in compiled]
    assert fused(profile, NOW, everything) == [n for n in everything if n not in expected]


def test_a_field_that_cannot_be_read_leaves_the_other_segments_evaluated(
    tmp_path: pathlib.Path,
) -> None:
    """Fused evaluation reads every field first; if one read raises (a bug), the
    candidates are evaluated one by one: that segment holds no one, the others go on."""
    from intently.segments.membership import Membership
    from intently.segments.registry import SegmentRegistry, SegmentSpec
    from intently.stores.protocol import Changes

    rules = ProfileRules(ContextSettings())
    catalog = FieldCatalog(rules)

    def broken(_p: object, _n: int) -> dict[str, object]:
        raise OverflowError("a bug")

    rules.scores = broken  # type: ignore[method-assign]
    registry = SegmentRegistry(catalog, tmp_path, None)
    registry.define("active", SegmentSpec("session.events >= 1"))
    registry.define("likely", SegmentSpec("profile.scores.purchase_propensity > 0.01"))
    membership = Membership(registry, rules)
    profile = person(events=1)
    profile.sessions = 1  # a new profile's first event: every segment is a candidate
    facts = Facts(kind="page", at_ms=NOW, anonymous_id="a", user_id=None)
    membership(profile, facts, Changes(1))
    assert profile.segments == ["active"]
    del rules.scores  # readable again: evaluated again
    membership(profile, facts, Changes(2))
    assert sorted(profile.segments) == ["active", "likely"]
