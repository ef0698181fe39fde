"""Every problem `customs policy validate` (and the loader) lists names its file and line: cedarpy's own
errors carry no source location, so the loader finds it (gateway/authz/sourcelines.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from authz_helpers import REPO

from gateway.authz.policyset import PolicyLoadError, load_policies
from gateway.authz.sourcelines import statement_lines

FINE = '// a comment\n@id("fine")\npermit (principal, action == Action::"call_tool", resource)\nwhen { true };\n\n'


def problems(policy_dir: Path, name: str, text: str) -> list[str]:
    (policy_dir / name).write_text(text)
    with pytest.raises(PolicyLoadError) as exc:
        load_policies(policy_dir)
    return exc.value.problems


@pytest.mark.parametrize(("text", "expected"), [
    # a syntax error in the second policy of a file: the line of the token the parser stopped at
    (FINE + '@id("x")\nforbid (principal, action, resource)\nwhen { context.args has amount &&\n'
     '  context.args.amount > };\n', "x.cedar:9: syntax error: unexpected token `}`"),
    # an attribute no entity type has: the line that reads it
    (FINE + '@id("x")\nforbid (principal, action == Action::"call_tool", resource)\nwhen {\n'
     '  principal.department == "finance"\n};\n', "x.cedar:9: policy 'x': "),
    # an action the schema does not declare
    (FINE + '@id("x")\nforbid (principal,\n  action == Action::"call-tool", resource);\n',
     "x.cedar:8: policy 'x': for policy `x`, unrecognized action"),
    # a context attribute the schema does not declare
    (FINE + '@id("x")\nforbid (principal, action == Action::"call_tool", resource)\n'
     'when { context.time.minute > 3 };\n', "x.cedar:8: policy 'x': "),
    # Customs' own checks: an argument Args does not name, a time that never is, no @id, a bad quorum
    (FINE + '@id("x")\nforbid (principal, action, resource)\nwhen { context.args has amout };\n',
     "x.cedar:6: policy 'x': argument 'amout'"),
    (FINE + '@id("x")\nforbid (principal, action == Action::"call_tool", resource)\n'
     'when { context.time.weekday == 0 };\n', "x.cedar:6: policy 'x': context.time.weekday compared with 0"),
    (FINE + 'permit (principal, action, resource);\n', "x.cedar:6: policy #2 has no @id"),
    (FINE + '@id("x")\n@quorum("0")\npermit (principal, action, resource);\n',
     "x.cedar:7: policy 'x': @quorum(\"0\")"),
])
def test_a_policy_problem_names_file_and_line(policy_dir: Path, text: str, expected: str) -> None:
    found = problems(policy_dir, "x.cedar", text)
    assert any(expected in p for p in found), found


def test_a_file_that_ends_inside_a_policy_is_blamed_on_its_last_line(policy_dir: Path) -> None:
    found = problems(policy_dir, "x.cedar", FINE + '@id("x")\nforbid (principal, action, resource)\n\n')
    assert any("x.cedar:7: syntax error" in p for p in found), found


def test_a_duplicate_id_names_both_places(policy_dir: Path) -> None:
    found = problems(policy_dir, "x.cedar", FINE + '\n@id("fine")\npermit (principal, action, resource);\n')
    assert any("x.cedar:7: duplicate @id(\"fine\") (also in " in p and "x.cedar:2)" in p for p in found), found


def test_a_schema_problem_names_its_line(policy_dir: Path) -> None:
    schema = policy_dir / "schema.cedarschema"
    good = schema.read_text()
    schema.write_text(good.replace("  owner?: String,", "  owner?: Strng,"))
    line = 1 + good.splitlines().index("  owner?: String,")
    with pytest.raises(PolicyLoadError) as exc:
        load_policies(policy_dir)
    assert any(f"schema.cedarschema:{line}: invalid schema: failed to resolve type: Strng" in p
               for p in exc.value.problems), exc.value.problems
    # a parse error after a reference to a type declared further down (Approval's `args: Args`)
    schema.write_text(good.replace("type CallContext = {", "type CallContext = {{"))
    line = 1 + good.splitlines().index("type CallContext = {")
    with pytest.raises(PolicyLoadError) as exc:
        load_policies(policy_dir)
    assert any(f"schema.cedarschema:{line}: invalid schema: error parsing schema" in p
               for p in exc.value.problems), exc.value.problems


def test_statements_are_split_as_cedar_reads_them() -> None:
    text = ('// a; comment\n@id("a;")\npermit (principal, action, resource == Tool::"x;\\"y")\n'
            'when { [1, 2].contains(1) && "//" == "//" };\n@id("b") forbid (principal, action, resource);\n')
    assert statement_lines(text) == [(2, 4), (5, 5)]


def test_validate_prints_file_and_line_and_exits_1(policy_dir: Path) -> None:
    (policy_dir / "bad.cedar").write_text(FINE + '@id("bad")\npermit (principal, action, resource)\n'
                                          'when { context.nope };\n')
    result = subprocess.run([sys.executable, "-m", "gateway.authz.cli", "validate", str(policy_dir)], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and f"{policy_dir}/bad.cedar:8: policy 'bad'" in result.stderr, result.stderr


def test_a_template_names_the_line_of_its_slot(policy_dir: Path) -> None:
    template = '@id("t")\npermit (\n  principal == ?principal, action, resource);\n'
    found = problems(policy_dir, "x.cedar", FINE + template)
    assert any("x.cedar:8: templates (?principal/?resource) are not supported" in p for p in found), found


def test_the_attribute_is_looked_for_before_the_entity_type(policy_dir: Path) -> None:
    """`attribute `department` on entity type `Agent` not found`: the line reading the attribute, not an
    earlier one that happens to name the type."""
    found = problems(policy_dir, "x.cedar", FINE + '@id("x")\nforbid (principal == Agent::"a",\n'
                     '  action == Action::"call_tool", resource)\nwhen { principal.department == "x" };\n')
    assert any("x.cedar:9: policy 'x'" in p and "department" in p for p in found), found
