"""Secret redaction for Python sources (``.py`` recipes uploaded as ``recipe/<name>``): literals only, code kept.

The uploaded recipe must still be the code that ran, so this works on :mod:`tokenize` tokens and rewrites
nothing but the text inside string (and bytes) literals and comments. A literal is masked whole
(``"***"``, prefix and quotes kept) when it is the value given to a secret name:

* assignments ``token = "..."``, ``cfg.api_key = "..."``, ``os.environ["WANDB_API_KEY"] = "..."``, ``token += "..."``,
  ``(token := "...")``; annotated fields ``token: str = "..."`` (dataclass defaults) and parameter defaults
  ``def f(token: str = "...")``;
* call keywords ``f(api_key="...")``; ``key=`` counts only as a keyword of ``login``/``auth``/``connect`` calls
  (``wandb.login(key="...")``): as a config field, parameter, dict key or other keyword (``f(key="img_size")``),
  ``key`` names a lookup key or a metric, so ``key = "val_loss"`` stays;
* dict displays ``{"password": "..."}``; ``login("...")``'s first argument; the default of
  ``os.environ.get/setdefault/pop("X_TOKEN", "...")`` and ``os.getenv("X_TOKEN", "...")``.

"The value" means the constants the expression evaluates to: literals joined by ``+``/``or``/conditionals or held
in lists/tuples/dicts, and arguments of transparent wrappers (``field(default=...)``, ``SecretStr(...)``); not call
arguments (``get_token("name")``), subscripts (``os.environ["K"]``) or comparison operands, so
``token = get_token()`` and ``api_key = os.environ["K"]`` are unchanged. Every other literal and comment goes
through :func:`~sptrack.track.redact.redact_value` (URL passwords, ``Password=...;`` pairs, bearer tokens);
f-strings keep their ``{...}`` fields. Sources that do not tokenize fall back to the line-based redactor.
"""

from __future__ import annotations

import ast
import io
import keyword
import re
import tokenize
from typing import Optional

from sptrack.track.redact import REDACTED, is_secret_key, redact_config_text, redact_line, redact_value

_FSTRING_START = getattr(tokenize, "FSTRING_START", None)  # Python >= 3.12 splits f-strings into several tokens
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)
_LAYOUT = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}
_STRING_PARTS = re.compile(r"(?P<prefix>[A-Za-z]*)(?P<quote>'''|\"\"\"|'|\")(?P<body>.*)(?P=quote)\Z", re.DOTALL)
_PAIR_CALLS = {"get", "getenv", "setdefault", "pop", "putenv", "setenv"}
_WRAPPERS = {"field", "Field", "SecretStr", "SecretBytes", "Secret", "str", "bytes"}
#: Calls whose ``key=`` keyword is a credential (``wandb.login(key=...)``); elsewhere ``key="img_size"`` names a key.
_KEY_CALLS = re.compile(r"(?:login|auth|authenticate|authorize|connect)$", re.IGNORECASE)
_COMPARISONS = {"==", "!=", "<", ">", "<=", ">=", "in", "is", "not"}


class _Tok:
    __slots__ = ("type", "string", "start", "end")

    def __init__(self, type_: int, string: str, start: int, end: int):
        self.type, self.string, self.start, self.end = type_, string, start, end


def _tokens(source: str) -> list[_Tok]:
    """Tokens with absolute character offsets; a 3.12+ f-string becomes one STRING token, as on 3.10/3.11."""
    starts = [0] + [m.end() for m in re.finditer("\n", source)]

    def offset(row: int, col: int) -> int:  # the NEWLINE/ENDMARKER tokenize adds may sit past the last line
        return starts[row - 1] + col if row <= len(starts) else len(source)

    out: list[_Tok] = []
    fstring_at, depth = 0, 0
    for t in tokenize.generate_tokens(io.StringIO(source).readline):
        start, end = offset(*t.start), offset(*t.end)
        if _FSTRING_START is not None and t.type == _FSTRING_START:
            fstring_at, depth = (start, 1) if depth == 0 else (fstring_at, depth + 1)
        elif depth:
            depth -= t.type == _FSTRING_END
            if depth == 0:
                out.append(_Tok(tokenize.STRING, source[fstring_at:end], fstring_at, end))
        else:
            out.append(_Tok(t.type, t.string, start, end))
    return out


def _literal_str(text: str) -> Optional[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


def _is(tok: Optional[_Tok], *ops: str) -> bool:
    return tok is not None and tok.type == tokenize.OP and tok.string in ops


def _bracket_kind(toks: list[_Tok], i: int) -> str:
    """``call``/``def``/``group`` for ``(``, ``sub``/``list`` for ``[``, ``dict`` for ``{``."""
    if toks[i].string == "{":
        return "dict"
    prev = toks[i - 1] if i else None
    after_value = prev is not None and (
        (prev.type == tokenize.NAME and not keyword.iskeyword(prev.string)) or prev.type == tokenize.STRING or _is(prev, ")", "]", "}"))
    if toks[i].string == "[":
        return "sub" if after_value else "list"
    if not after_value:
        return "group"
    return "def" if i >= 2 and toks[i - 2].type == tokenize.NAME and toks[i - 2].string == "def" else "call"


def _mark_value(toks: list[_Tok], j: int, in_brackets: bool, found: set[int]) -> None:
    """Mark the literals an expression starting at ``toks[j]`` evaluates to (see the module docstring)."""
    stack: list[str] = []
    for k in range(j, len(toks)):
        t = toks[k]
        if t.type == tokenize.NEWLINE:
            return
        if t.type == tokenize.OP:
            if t.string in ("(", "[", "{"):
                kind = _bracket_kind(toks, k)
                stack.append("group" if kind == "call" and toks[k - 1].string in _WRAPPERS else kind)
            elif t.string in (")", "]", "}"):
                if not stack:
                    return
                stack.pop()
            elif not stack and (t.string == ";" or (in_brackets and t.string == ",")):
                return
        elif t.type == tokenize.STRING and all(kind in ("group", "list", "dict") for kind in stack):
            prev, nxt = toks[k - 1], toks[k + 1] if k + 1 < len(toks) else None
            if nxt is not None and nxt.string in (".", "[", "(") and nxt.type == tokenize.OP:
                continue  # "sep".join(...): the literal is an operand, not the value
            if stack and stack[-1] == "dict" and _is(nxt, ":"):
                continue  # a dict key
            if prev.string in _COMPARISONS or (nxt is not None and nxt.string in _COMPARISONS):
                continue  # ``mode == "hf"``: compared with, not held
            found.add(k)


def _target(toks: list[_Tok], seg: int, i: int) -> Optional[str]:
    """The name assigned by the ``=`` at ``toks[i]`` whose target starts at ``toks[seg]``."""
    k = seg
    while k < i and _is(toks[k], "*", "**"):
        k += 1
    while k + 2 < i and toks[k].type == tokenize.NAME and _is(toks[k + 1], "."):
        k += 2
    if k + 1 < i and toks[k].type == tokenize.NAME and not keyword.iskeyword(toks[k].string) and _is(toks[k + 1], ":"):
        return toks[k].string  # annotated: ``token: str = ...``
    prev = toks[i - 1]
    if prev.type == tokenize.NAME and not keyword.iskeyword(prev.string):
        return prev.string
    if _is(prev, "]") and i - 3 >= seg and toks[i - 2].type == tokenize.STRING and _is(toks[i - 3], "["):
        return _literal_str(toks[i - 2].string)  # ``os.environ["WANDB_API_KEY"] = ...``
    return None


def _segment_start(toks: list[_Tok], i: int) -> int:
    """Index of the first token of the argument/parameter holding ``toks[i]``."""
    depth = 0
    for j in range(i - 1, -1, -1):
        if _is(toks[j], ")", "]", "}"):
            depth += 1
        elif _is(toks[j], "(", "[", "{"):
            if depth == 0:
                return j + 1
            depth -= 1
        elif depth == 0 and _is(toks[j], ","):
            return j + 1
    return 0


def _call_literals(toks: list[_Tok], i: int, found: set[int]) -> None:
    """Secrets passed positionally to the call opened at ``toks[i]``."""
    callee = toks[i - 1].string if toks[i - 1].type == tokenize.NAME else ""
    first = toks[i + 1] if i + 1 < len(toks) else None
    if first is None or first.type != tokenize.STRING:
        return
    if callee == "login":  # wandb.login("..."), huggingface_hub.login("hf_...")
        _mark_value(toks, i + 1, True, found)
    elif callee in _PAIR_CALLS and _is(toks[i + 2] if i + 2 < len(toks) else None, ","):
        name = _literal_str(first.string)
        if name and is_secret_key(name):
            _mark_value(toks, i + 3, True, found)


def _secret_literals(toks: list[_Tok]) -> set[int]:
    """Indices of the STRING tokens that are values given to secret names."""
    found: set[int] = set()
    stack: list[tuple[str, int]] = []  # open brackets: (kind, index)
    stmt = 0
    for i, t in enumerate(toks):
        if t.type == tokenize.NEWLINE:
            stmt = i + 1
            continue
        if t.type != tokenize.OP:
            continue
        s, top = t.string, (stack[-1][0] if stack else None)
        if s in ("(", "[", "{"):
            stack.append((_bracket_kind(toks, i), i))
            if stack[-1][0] == "call":
                _call_literals(toks, i, found)
        elif s in (")", "]", "}"):
            if stack:
                stack.pop()
        elif s == ";" and not stack:
            stmt = i + 1
        elif (s == "=" and top in (None, "call", "def")) or s == ":=" or (s in ("+=", "|=") and top is None):
            name = _target(toks, _segment_start(toks, i) if stack else stmt, i)
            callee = toks[stack[-1][1] - 1].string if s == "=" and top == "call" else ""
            if name is not None and (is_secret_key(name) or (name.lower() == "key" and _KEY_CALLS.search(callee))):
                _mark_value(toks, i + 1, bool(stack), found)
        elif s == ":" and top == "dict" and toks[i - 1].type == tokenize.STRING and _is(toks[i - 2], "{", ","):
            name = _literal_str(toks[i - 1].string)
            if name and is_secret_key(name):
                _mark_value(toks, i + 1, True, found)
    return found


def _fstring_parts(body: str) -> list[tuple[bool, str]]:
    """An f-string body as ``(is_literal, text)`` runs; ``{...}`` fields (nested braces included) are not literal."""
    parts: list[tuple[bool, str]] = []
    literal, i = "", 0
    while i < len(body):
        if body[i:i + 2] in ("{{", "}}"):
            literal, i = literal + body[i:i + 2], i + 2
        elif body[i] == "{":
            parts.append((True, literal))
            depth, j = 0, i
            while j < len(body):
                depth += {"{": 1, "}": -1}.get(body[j], 0)
                j += 1
                if depth == 0:
                    break
            parts.append((False, body[i:j]))
            literal, i = "", j
        else:
            literal, i = literal + body[i], i + 1
    parts.append((True, literal))
    return [p for p in parts if p[1]]


def _encode(value: str, quote: str) -> str:
    """``value`` as the body of a non-raw literal quoted with ``quote``."""
    out = []
    for c in value:
        if c == "\\" or c == quote[0]:
            out.append("\\" + c)
        elif c == "\n" and len(quote) == 3:
            out.append(c)
        elif c.isprintable() or ord(c) > 0xFF:
            out.append(c)
        else:
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c, f"\\x{ord(c):02x}"))
    return "".join(out)


def _redact_body(prefix: str, quote: str, body: str, doc: bool) -> str:
    """A literal's body with credentials in its value masked.

    Values (``write_text("api_key: ...")``) may hold whole config files, so they get the line-based config
    redactor; docstrings and f-string pieces only :func:`redact_value` (``api_key: the W&B key`` is prose there).
    """
    flags = prefix.lower()
    if "f" in flags:
        return "".join(redact_value(s) if lit else s for lit, s in _fstring_parts(body))
    clean = redact_value if doc else redact_config_text
    if "\\" not in body or "r" in flags:
        return clean(body)  # the source text is the value
    # Escapes can split what the value holds (a quote written as backslash-quote): redact the decoded value and
    # write it back only if that changed it.
    try:
        value = ast.literal_eval(prefix + quote + body + quote)
    except (ValueError, SyntaxError):  # e.g. an unknown \N{...} escape: the source text is the best guess
        return clean(body)
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    masked = clean(text)
    if masked == text:
        return body
    body = _encode(masked, quote)
    return body.encode("latin-1").decode("ascii", "backslashreplace") if isinstance(value, bytes) else body


def _rewrite_string(text: str, secret: bool, doc: bool) -> str:
    """A string token with its literal text masked (``secret``) or its credentials masked.

    A partial rewrite that would not be one literal of the same kind any more masks the whole body instead.
    """
    m = _STRING_PARTS.match(text)
    if not m or not m["body"]:
        return text
    prefix, quote, body = m["prefix"], m["quote"], m["body"]
    if secret:
        parts = _fstring_parts(body) if "f" in prefix.lower() else [(True, body)]
        new = "".join(REDACTED if lit else s for lit, s in parts)
    else:
        new = _redact_body(prefix, quote, body, doc)
    out = prefix + quote + new + quote
    if new != body and _types(out) != _types(text):
        out = prefix + quote + REDACTED + quote
    return out


def _rewrite(source: str, toks: list[_Tok]) -> str:
    significant = [t for t in toks if t.type not in _LAYOUT]
    secret = {id(significant[i]) for i in _secret_literals(significant)}
    # A string that is a whole statement (docstrings, commented-out blocks) is prose, not a value.
    statement_ends = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    doc = {id(t) for k, t in enumerate(significant) if t.type == tokenize.STRING and (k == 0 or significant[k - 1].type in statement_ends)
           and (k + 1 == len(significant) or significant[k + 1].type == tokenize.NEWLINE)}
    out, pos = [], 0
    for t in toks:
        if t.type == tokenize.STRING:
            new = _rewrite_string(t.string, id(t) in secret, id(t) in doc)
        elif t.type == tokenize.COMMENT:
            new = redact_line(t.string)  # a commented-out "token = 'abc'" is still a token
        else:
            continue
        if new != t.string:
            out += [source[pos:t.start], new]
            pos = t.end
    return "".join(out) + source[pos:]


def _types(source: str) -> Optional[list[int]]:
    """Token types, an f-string counting as one STRING (3.12+ splits its text at ``{{``, which masking merges)."""
    try:
        return [t.type for t in _tokens(source)]
    except (tokenize.TokenError, SyntaxError):
        return None


def redact_python(source: str) -> str:
    """``source`` with secret literals and credentials in literals/comments masked; every other byte unchanged.

    The result tokenizes to the same token types as ``source``: a literal whose partial rewrite would not stay
    one literal is masked whole. Sources that do not tokenize go through the line-based
    :func:`~sptrack.track.redact.redact_config_text`.
    """
    try:
        toks = _tokens(source)
    except (tokenize.TokenError, SyntaxError):
        return redact_config_text(source)
    expected = [t.type for t in toks]
    out = _rewrite(source, toks)
    if _types(out) != expected:  # cannot happen token by token; never upload a broken rewrite, nor the source
        return redact_config_text(source)
    return out
