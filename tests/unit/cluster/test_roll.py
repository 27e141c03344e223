"""cluster/roll.py without a database: the row gate, and what a node writes
(its own decision must pass the gate every node reads it through)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.cluster import roll, table
from ivle_maint.errors import MaintError

VERSIONS = st.from_regex(r"[0-9][A-Za-z0-9.+~]{0,12}(-[A-Za-z0-9.+~]{1,6})?", fullmatch=True)
NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.'_-]{0,30}", fullmatch=True)
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
ODD = st.sampled_from(["\n", "\r", "\x1b", "\x7f", "\u2028", "\u200b", "\t", "\x00"])


def _good() -> dict[str, Any]:
    return {"target": "1.1", "old": "1.0", "rolling": True, "why": "additive",
            "decided_by": "slave1", "held": True}


@given(target=VERSIONS, old=VERSIONS, rolling=st.booleans(), by=NAMES,
       why=st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp", "Zs",
                                                        "Co", "Cn")), min_size=1,
                   max_size=200))
def test_a_row_as_ivle_maint_writes_it_passes(target, old, rolling, by, why):
    assert roll.why_invalid(target, old, rolling=rolling, why=why, decided_by=by,
                            held=True) is None


DAMAGE = st.one_of(
    st.tuples(st.just("old"), ANY_TEXT.filter(lambda t: not table._is_version(t))),
    st.tuples(st.just("target"), st.sampled_from(["", "1.1\n", "x", "1 1", "1." * 60])),
    st.tuples(st.just("rolling"), st.sampled_from([None, 1, "t", "yes"])),
    st.tuples(st.just("why"), st.sampled_from(["", "x" * (roll.WHY_MAX + 1), None])
              | st.builds(lambda a, odd: a + odd, ANY_TEXT, ODD)),
    st.tuples(st.just("decided_by"), st.sampled_from(["", "a b", "x" * 254, None])
              | st.builds(lambda a, odd: a + odd, ANY_TEXT, ODD)),
    st.tuples(st.just("held"), st.just(False)),
)


@given(damage=DAMAGE)
def test_a_row_no_ivle_maint_writes_is_refused_in_one_printable_line(damage):
    field, value = damage
    row = {**_good(), field: value}
    why = roll.why_invalid(row.pop("target"), row.pop("old"), **row)
    assert why is not None and why.isprintable() and len(why) < 400, why
    assert ("decided_at" if field == "held" else field) in why


class _Rows:
    """A connection to a table of decisions, as far as decide_once uses one:
    the row it inserts (unless one stands) is the row it reads back."""

    def __init__(self) -> None:
        self.row: tuple[Any, ...] | None = None
        self.last: Any = None
        self.autocommit = False

    def __enter__(self) -> _Rows:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def cursor(self) -> _Rows:
        return self

    def get_transaction_status(self) -> int:
        return 0  # idle

    def execute(self, statement: str, params: Any = None) -> None:
        if statement.startswith("SET TRANSACTION"):
            return
        if statement.startswith("SELECT to_regclass"):
            self.last = (True,)
        elif statement.startswith("INSERT"):
            if self.row is None:
                target, old, rolling, why, by = params
                self.row = (target, old, rolling, why, by, datetime.now(UTC), True)
        elif statement.startswith("SELECT target"):
            self.last = self.row
        else:
            raise AssertionError(statement)

    def fetchone(self) -> Any:
        return self.last


@settings(max_examples=200)
@given(why=st.text(max_size=3000) | st.builds(lambda c, n: c * n, ODD | ANY_TEXT,
                                               st.integers(0, 1500)),
       rolling=st.booleans())
def test_whatever_reason_a_node_gives_its_decision_passes_the_gate(why, rolling):
    record = roll.decide_once(_Rows(), target="1.1", old="1.0", rolling=rolling, why=why,
                              by="master")
    assert record.rolling is rolling and 0 < len(record.why) <= roll.WHY_MAX
    assert record.why == why or not (why.isprintable() and 0 < len(why) <= 900)


def test_a_reason_of_escapes_is_cut_after_escaping():
    record = roll.decide_once(_Rows(), target="1.1", old="1.0", rolling=True, why="\x1b" * 999,
                              by="master")
    assert record.why.startswith("\\x1b") and len(record.why) <= roll.WHY_MAX


def test_a_literal_of_any_text_is_one_printable_line():
    for text in ["it's", "a\\b", "a\nb", "\u200b", "\U0001f600\x1b", "x" * 254]:
        literal = roll._literal(text)
        assert literal.isprintable() and literal.startswith("E'") and literal.endswith("'")


def test_the_first_decision_is_returned_to_the_second():
    rows = _Rows()
    first = roll.decide_once(rows, target="1.1", old="1.0", rolling=True, why="a", by="s1")
    second = roll.decide_once(rows, target="1.1", old="1.0", rolling=False, why="b", by="s2")
    assert second == first and second.decided_by == "s1"


class _Untouchable:
    autocommit = False

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the connection was used ({name}) for a refused argument")


@pytest.mark.parametrize("call", [
    lambda c: roll.take_slot(c, target="1.1", node="slave1", batch=0),
    lambda c: roll.take_slot(c, target="1.1", node="a b", batch=1),
    lambda c: roll.take_slot(c, target="1.1'; --", node="slave1", batch=1),
    lambda c: roll.decide_once(c, target="1.1", old="none", rolling=True, why="", by="s"),
    lambda c: roll.decide_once(c, target="1.1", old="1.0", rolling=True, why="", by="a\nb"),
    lambda c: roll.decision(c, "1.1\n"),
    lambda c: roll.slot_holders(c, ""),
])
def test_an_argument_the_gate_would_refuse_is_refused_before_the_database(call):
    with pytest.raises(MaintError) as refused:
        call(_Untouchable())
    assert str(refused.value).isprintable()


def test_the_slot_lock_is_its_own_and_a_bigint():
    assert roll.ROLL_SLOT_LOCK != table._CREATE_LOCK
    assert 0 < roll.ROLL_SLOT_LOCK < 2**63
