"""The C# half of the Unity bridge cannot be compiled here, so it is parsed instead: every .cs file
must be valid C# (tree-sitter's grammar), and the constants both halves share (message format, op
codes, action size, channel id, JSON field names, feasibility tolerances, defaults) must equal
rls3.bridges.messages / rls3.sim's."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
import tree_sitter as ts
import tree_sitter_c_sharp as ts_cs

from rls3.bridges import messages
from rls3.bridges.messages import Metadata, Op
from rls3.scene import DEFAULT_IMAGE_SIZE, Camera, Feasibility, ObjectPose, Reason, SceneState, Surface

SCRIPTS = Path(__file__).resolve().parents[1] / "bridges" / "unity" / "Scripts"
PARSER = ts.Parser(ts.Language(ts_cs.language()))


def _tree(name: str) -> ts.Tree:
    return PARSER.parse((SCRIPTS / name).read_bytes())


def _walk(node: ts.Node) -> Iterator[ts.Node]:
    yield node
    for c in node.children:
        yield from _walk(c)


def _text(node: ts.Node) -> str:
    return node.text.decode()


def _string(node: ts.Node) -> str:
    """The content of a string_literal node."""
    return "".join(_text(c) for c in node.children if c.type == "string_literal_content")


def _constants(tree: ts.Tree) -> dict[str, str]:
    """name -> literal text of every declarator initialised with a literal."""
    out = {}
    for n in _walk(tree.root_node):
        if n.type == "variable_declarator" and n.child_count >= 2:
            value = n.children[-1]
            if value.type.endswith("_literal"):
                out[_text(n.children[0])] = _string(value) if value.type == "string_literal" \
                    else _text(value)
    return out


def _calls(tree: ts.Tree, method: str) -> list[ts.Node]:
    """Argument lists of every call `x.method(...)` / `method(...)`."""
    out = []
    for n in _walk(tree.root_node):
        if n.type == "invocation_expression":
            fn = n.children[0]
            name = fn.children[-1] if fn.type == "member_access_expression" else fn
            if _text(name) == method:
                out.append(n.children[-1])
    return out


def _method(tree: ts.Tree, name: str) -> ts.Node:
    for n in _walk(tree.root_node):
        if n.type == "method_declaration" and any(
                c.type == "identifier" and _text(c) == name for c in n.children):
            return n
    raise AssertionError(f"method {name} not found")


def _float(literal: str) -> float:
    return float(literal.rstrip("fFdDmM"))


def test_every_cs_file_parses_without_errors():
    files = sorted(SCRIPTS.glob("*.cs"))
    assert len(files) >= 8
    for f in files:
        tree = PARSER.parse(f.read_bytes())
        bad = [n for n in _walk(tree.root_node) if n.is_error or n.is_missing]
        assert not tree.root_node.has_error and not bad, (
            f"{f.name}: syntax error near line {bad[0].start_point[0] + 1}" if bad else f.name)


def test_the_parser_does_catch_a_syntax_error():
    broken = (SCRIPTS / "Rls3Frame.cs").read_bytes().replace(b";", b"", 1)
    assert PARSER.parse(broken).root_node.has_error


def test_shared_constants_match_the_python_side():
    arranger = _tree("Rls3Arranger.cs")
    consts = _constants(arranger)
    assert consts["Format"] == messages.FORMAT
    assert int(consts["ActionSize"]) == messages.ACTION_SIZE
    channel = _constants(_tree("Rls3MetadataChannel.cs"))
    assert channel["Id"] == str(messages.CHANNEL_ID)
    from rls3.sim.backend import SNAP, SURFACE_TOL
    from rls3.sim.physics import PENETRATION_TOL

    assert _float(consts["Snap"]) == pytest.approx(SNAP)
    assert _float(consts["SurfaceTol"]) == pytest.approx(SURFACE_TOL)
    assert _float(consts["PenetrationTol"]) == pytest.approx(PENETRATION_TOL)
    # the behaviour the Python side looks for, and its vector observation size
    check = _text(_method(arranger, "CheckBehaviour"))
    assert f'bp.BehaviorName != "{messages.BEHAVIOR_NAME}"' in check
    assert f"VectorObservationSize != {messages.VECTOR_OBS_SIZE}" in check
    # image size: the same default and the flag the Python launcher passes
    sensor = _constants(_tree("Rls3CameraSensor.cs"))
    assert int(sensor["imageSize"]) == DEFAULT_IMAGE_SIZE
    flag = [_string(a) for args in _calls(_tree("Rls3CameraSensor.cs"), "CommandLineInt")
            for a in _walk(args) if a.type == "string_literal"]
    from rls3.bridges.unity import UnityBackend

    assert flag == ["--rls3-image-size"] and flag[0] in inspect.getsource(UnityBackend)


def test_op_codes_and_labels_match():
    arranger = _tree("Rls3Arranger.cs")
    received = _method(arranger, "OnActionReceived")
    labels = next(n for n in _walk(received) if n.type == "variable_declarator"
                  and _text(n.children[0]) == "labels")
    assert [_string(s) for s in _walk(labels) if s.type == "string_literal"] == [
        o.label for o in Op]
    cases = {}
    for sec in _walk(received):
        if sec.type == "switch_section":
            code = next((c for c in sec.children if c.type == "constant_pattern"), None)
            if code is None:
                continue
            calls = [_text(n.children[0]) for n in _walk(sec) if n.type == "invocation_expression"]
            cases[int(_text(code))] = calls[0] if calls else None
    assert cases == {Op.NOOP: None, Op.LOAD: "Load", Op.MOVE: "Move", Op.SWAP: "Swap",
                     Op.RENDER: None}
    reasons = {_string(n) for n in _walk(_method(arranger, "Check"))
               if n.type == "string_literal" and n.parent.type == "return_statement"}
    assert reasons == {r.value for r in Reason}


def _keys(d: object) -> set[str]:
    out: set[str] = set()
    if isinstance(d, dict):
        for k, v in d.items():
            out.add(k)
            out |= _keys(v)
    elif isinstance(d, list):
        for v in d:
            out |= _keys(v)
    return out


def test_json_field_names_match_the_metadata_record():
    state = SceneState(0, "kitchen", tuple(ObjectPose(n, (0, 0, 1), (0, 0, 0), "counter/0",
                                                      (0.1, 0.1, 0.2))
                                           for n in ("mug", "cup", "vase")),
                       (Surface("counter/0", (0, 0, 0.9), (1, 1, 0.05)),),
                       Camera((2, 0, 1.5), (0, -0.3, 3.1)))
    python = _keys(Metadata(1, "load", Feasibility.ok(), True, ("kitchen",), ("mug",),
                            state).to_dict())
    csharp = set()
    for name in ("Rls3Arranger.cs", "Rls3PoolObject.cs", "Rls3Surface.cs", "Rls3Room.cs"):
        for args in _calls(_tree(name), "Key"):
            csharp |= {_string(a) for a in _walk(args) if a.type == "string_literal"}
    assert csharp == python, (sorted(csharp - python), sorted(python - csharp))
