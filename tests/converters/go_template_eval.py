"""A small evaluator for the subset of Go `text/template` our Ollama templates use, and Ollama's Modelfile reader.

Test helper, written from the Go and Ollama rules (not from `converters.sources`), so a Modelfile can be checked by
rendering it the way Ollama would:
- templates: text and `{{ }}` actions with `{{-`/`-}}` trimming; `range`, `if`/`else if`/`else`, `end`;
  variables (`$x := v` declares in the current block, `$x = v` assigns the nearest), `$` (the root data),
  fields (`.Role`, `$.System`); functions eq, ne, not, and, or (lazy, as Go >= 1.18), le, lt, len, printf, slice;
  string literals with Go escapes, true/false, integers, parenthesised calls.
- Modelfiles: Ollama's parser/parser.go state machine in short: a command name, then a value that runs to a
  newline at which the value, trimmed, is bare or complete `"..."`/`\"\"\"...\"\"\"`; `#` comments.
"""

from __future__ import annotations

import ast
import re
from typing import Any

_ACTION = re.compile(r"\{\{(- )?(.*?)( -)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:\\.|[^"\\])*"|:=|=|\$\w*(?:\.\w+)*|\.\w+(?:\.\w+)*|\.|[A-Za-z_]\w*|-?\d+)')


def _tokens(src: str) -> list[str]:
    out, pos = [], 0
    while pos < len(src.rstrip()):
        m = _TOKEN.match(src, pos)
        if not m:
            raise ValueError(f"cannot tokenize {src[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _parse(text: str) -> list[Any]:
    """Template text -> nested node lists: ("text", s) | ("out", expr) | ("set", name, expr, declare) |
    ("if", [(cond, body), ...], else_body) | ("range", expr, body)."""
    parts: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(text):
        lead = text[pos:m.start()]
        if m.group(1):
            lead = lead.rstrip(" \t\r\n")
        if parts and parts[-1][0] == "trim":
            lead = lead.lstrip(" \t\r\n")
            parts.pop()
        parts.append(("text", lead))
        parts.append(("act", m.group(2).strip()))
        if m.group(3):
            parts.append(("trim", ""))
        pos = m.end()
    tail = text[pos:]
    if parts and parts[-1][0] == "trim":
        tail = tail.lstrip(" \t\r\n")
        parts.pop()
    parts.append(("text", tail))

    root: list[Any] = []
    stack: list[tuple[list[Any], Any]] = [(root, None)]
    for kind, s in parts:
        body = stack[-1][0]
        if kind == "text":
            if s:
                body.append(("text", s))
            continue
        toks = _tokens(s)
        if toks[0] == "range":
            node = ("range", toks[1:], [])
            body.append(node)
            stack.append((node[2], node))
        elif toks[0] == "if":
            node = ("if", [(toks[1:], [])], [])
            body.append(node)
            stack.append((node[1][0][1], node))
        elif toks[0] == "else":
            node = stack.pop()[1]
            assert node[0] == "if", "else outside if"
            if toks[1:2] == ["if"]:
                node[1].append((toks[2:], []))
                stack.append((node[1][-1][1], node))
            else:
                stack.append((node[2], node))
        elif toks[0] == "end":
            stack.pop()
        elif len(toks) > 2 and toks[0].startswith("$") and toks[1] in (":=", "="):
            body.append(("set", toks[0], toks[2:], toks[1] == ":="))
        else:
            body.append(("out", toks))
    assert len(stack) == 1, "unclosed block"
    return root


class _Scope:
    def __init__(self, root: Any) -> None:
        self.frames: list[dict[str, Any]] = [{"$": root}]

    def get(self, name: str) -> Any:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise NameError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise NameError(f"assignment to undeclared variable {name}")


def _field(value: Any, path: list[str]) -> Any:
    for name in path:
        value = value[name] if isinstance(value, dict) else getattr(value, name)
    return value


def _operand(tok: str, dot: Any, scope: _Scope) -> Any:
    if tok.startswith('"'):
        return ast.literal_eval(tok)
    if tok in ("true", "false"):
        return tok == "true"
    if re.fullmatch(r"-?\d+", tok):
        return int(tok)
    if tok == ".":
        return dot
    if tok.startswith("."):
        return _field(dot, tok[1:].split("."))
    if tok.startswith("$"):
        name, *path = tok.split(".")
        return _field(scope.get(name), path)
    raise ValueError(f"unknown operand {tok}")


def _group(toks: list[str]) -> list[Any]:
    """Split a token list into arguments, a parenthesised group becoming one nested list."""
    args: list[Any] = []
    i = 0
    while i < len(toks):
        if toks[i] == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(toks[j], 0)
                j += 1
            args.append(toks[i + 1:j - 1])
            i = j
        else:
            args.append(toks[i])
            i += 1
    return args


def _printf(fmt: str, *args: Any) -> str:
    return re.sub(r"%[sd]", lambda _: "{}", fmt.replace("{", "{{").replace("}", "}}")).format(*args)


def _eval(toks: list[str], dot: Any, scope: _Scope) -> Any:
    args = _group(toks)

    def val(a: Any) -> Any:
        return _eval(a, dot, scope) if isinstance(a, list) else _operand(a, dot, scope)

    head = args[0]
    if isinstance(head, list) or len(args) == 1 and not re.fullmatch(r"[A-Za-z_]\w*", head) \
            or head in ("true", "false"):
        assert len(args) == 1, f"not a function call: {toks}"
        return val(head)
    rest = args[1:]
    if head == "and":
        out: Any = True
        for a in rest:
            out = val(a)
            if not out:
                return out
        return out
    if head == "or":
        out = False
        for a in rest:
            out = val(a)
            if out:
                return out
        return out
    values = [val(a) for a in rest]
    funcs = {
        "eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b, "not": lambda a: not a,
        "le": lambda a, b: a <= b, "lt": lambda a, b: a < b, "len": len, "printf": _printf,
        "slice": lambda s, *ij: s[ij[0]:ij[1]] if len(ij) == 2 else s[ij[0]:] if ij else s,
    }
    if head not in funcs:
        raise ValueError(f"unknown function {head}")
    return funcs[head](*values)


def _exec(nodes: list[Any], dot: Any, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "out":
            value = _eval(node[1], dot, scope)
            out.append("" if value is None else str(value).lower() if isinstance(value, bool) else str(value))
        elif kind == "set":
            value = _eval(node[2], dot, scope)
            if node[3]:
                scope.frames[-1][node[1]] = value
            else:
                scope.assign(node[1], value)
        elif kind == "if":
            for cond, body in node[1]:
                if _eval(cond, dot, scope):
                    scope.frames.append({})
                    _exec(body, dot, scope, out)
                    scope.frames.pop()
                    break
            else:
                scope.frames.append({})
                _exec(node[2], dot, scope, out)
                scope.frames.pop()
        elif kind == "range":
            for item in _eval(node[1], dot, scope) or []:
                scope.frames.append({})
                _exec(node[2], item, scope, out)
                scope.frames.pop()


def render_go_template(text: str, data: dict[str, Any]) -> str:
    """Execute Go template `text` over `data` (dicts stand for Go structs)."""
    out: list[str] = []
    _exec(_parse(text), data, _Scope(data), out)
    return "".join(out)


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs of an Ollama Modelfile; PARAMETER lines give ("parameter KEY", value)."""
    commands: list[tuple[str, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, value = line.strip().partition(" ")
        name = name.lower()
        if name == "parameter":
            key, _, value = value.partition(" ")
            name = f"parameter {key}"
        # the value runs on over newlines until, trimmed, it is bare or a complete quoted string
        while True:
            s, ok = _unquote(value.strip())
            if ok:
                break
            if i >= len(lines):
                raise ValueError(f"unterminated value for {name}")
            value += "\n" + lines[i]
            i += 1
        commands.append((name, s))
    return commands
