"""Secret redaction: nothing that leaves the process (tracker params, artifacts, the environment record) holds a credential.

Three layers, each used where its input comes from:

* :func:`is_secret_key` names credentials (``api_key``, ``WANDB_API_KEY``, ``hfToken``, ``auth``, ``cookie``);
* :func:`redact_value` masks credentials *inside* any string: URL user info of any scheme, secret
  ``name=value`` pairs (query strings, ``Password=...;`` connection strings, ``--token=...``), bearer tokens;
* structure-aware redactors mask the values of secret keys: :func:`redact_mapping` and
  :func:`mask_secret_values` (configs), :func:`redact_argv` (command lines), :func:`sptrack.track.redact_files.redact_text` (files:
  ``.py`` recipes through :func:`sptrack.track.redact_python.redact_python`, which keeps the code byte for byte
  and masks only literal values; YAML/TOML/JSON/INI line by line).

Masking errs towards hiding too much: an ambiguous URL loses more than its password rather than leak it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Iterable, Optional

from sptrack.track.values import plain, scalar

REDACTED = "***"

#: Words that name a credential when they end a key, alone or after ``_``/``-``/camelCase
#: (``api_key``, ``WANDB_API_KEY``, ``db-password``, ``hfToken``). ``key`` alone is not one (configs use it for
#: lookup keys and metric names); the Python redactor treats ``key=`` as secret only as a ``login()``/``connect()`` keyword.
_SECRET_WORDS = (
    r"api[_-]?key|apikey|(?:access|secret|account|ssh|private|signing|encryption)[_-]?key"
    r"|secrets?|password|passwd|pwd|pw|passphrase|token|bearer|auth|authorization|credentials?|cookies?|webhook(?:[_-]?url)?"
)
_SECRET_KEY = re.compile(rf"(?:^|[_\-])(?:{_SECRET_WORDS})$", re.IGNORECASE)
#: Model vocabulary, not credentials: ``cls_token``, ``mask_token``, ``pad_token``...
_MODEL_TOKEN = re.compile(
    r"(?:^|[_\-])(?:pad|bos|eos|unk|mask|cls|sep|sos|special|start|end|image|img|register|reg|dist|query)[_\-]?token$", re.IGNORECASE
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def is_secret_key(key: Any) -> bool:
    """Whether a (possibly dotted or ``/``-separated) parameter name names a credential.

    Only the last component counts (``db.password`` yes, ``password_length``/``num_tokens``/``tokenizer`` no);
    callers that walk a path check every component themselves.
    """
    last = _CAMEL.sub("_", re.split(r"[./]", str(key))[-1])
    return bool(_SECRET_KEY.search(last)) and not _MODEL_TOKEN.search(last)


# --- credentials inside strings -------------------------------------------------------------------------------

#: Values that stand for a secret without being one: ``...``, ``***``, ``<password>``, ``$VAR``/``${VAR}``, ``%s``.
_PLACEHOLDER = re.compile(r"\.\.\.|…|\*+|<[^<>]*>|\$\{?[A-Za-z_]\w*\}?|%(?:\(\w+\))?s")
#: ... and in URLs also ``{pw}`` (a ``str.format`` field: braces cannot appear unencoded in user info).
_URL_PLACEHOLDER = re.compile(rf"{_PLACEHOLDER.pattern}|\{{\w*\}}")
_SCHEME = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://")
#: A URL's authority, first without quotes/brackets (the usual case: a URL inside JSON, YAML or prose), then up to
#: whitespace only (a password holding a quote).
_RUNS = (re.compile(r"[^\s\"'<>`]*"), re.compile(r"\S*"))
#: What may follow the ``@`` that ends the user info: a host (name, IPv6 literal or empty), an optional port, then
#: anything that cannot continue a host.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]*\]|[A-Za-z0-9\-._~%]*)(?::\d*)?(?![A-Za-z0-9\-._~%:@\[])")
#: Schemes whose user name alone is a token in practice (``https://ghp_xxx@github.com``); for ``ssh://git@host`` or
#: ``postgresql://user@host`` the user name is kept unless it looks like a token.
_USER_IS_TOKEN_SCHEMES = {"http", "https", "ws", "wss", "ftp", "ftps"}
_TOKEN_LIKE = re.compile(r"^(?:gh[pousr]_|github_pat_|glpat-|hf_|xox[abprs]-|sk-|AKIA)|^(?=.*\d)[A-Za-z0-9_\-.~%]{20,}$")


def _userinfo(scheme: str, run: str) -> Optional[tuple[str, int]]:
    """``(user info to write, its length in run)`` when ``run`` (the text after ``scheme://``) starts with user info."""
    # The user info ends at the LAST "@" that a host follows: passwords may hold "@", "/", ":", "#", "?".
    at = next((i for i in range(len(run) - 1, -1, -1) if run[i] == "@" and _HOST.match(run, i + 1)), None)
    if at is None:
        return None
    user, colon, password = run[:at].partition(":")
    if any(c in user for c in "/?#"):  # the "@" belongs to the path or query (``https://host/@bob``)
        return None
    # Found user info; returned unchanged when it holds no credential, so no looser reading is tried.
    if colon:
        return (run[:at] if not password or _URL_PLACEHOLDER.fullmatch(password) else f"{user}:{REDACTED}"), at
    base = scheme[:-3].rsplit("+", 1)[-1].lower()
    if user and not _URL_PLACEHOLDER.fullmatch(user) and (base in _USER_IS_TOKEN_SCHEMES or _TOKEN_LIKE.search(user)):
        return REDACTED, at
    return run[:at], at


def _mask_urls(text: str) -> str:
    out, pos = [], 0
    for m in _SCHEME.finditer(text):
        if m.start() < pos:  # inside user info already masked
            continue
        found = next((f for f in (_userinfo(m.group(), r.match(text, m.end()).group()) for r in _RUNS) if f), None)
        if found:
            out += [text[pos:m.end()], found[0]]
            pos = m.end() + found[1]
    return "".join(out) + text[pos:]


#: ``name=value`` with a secret name: ``?token=...``, ``Password=...;`` / ``Pwd={...}``, ``--api-key=...``.
_KEY_VALUE = re.compile(
    r"(?<![\w.])(?P<key>[A-Za-z_][\w.\-]*)(?P<sep>[ \t]*=(?!=)[ \t]*)(?P<value>\{[^}]*\}|\"[^\"]*\"|'[^']*'|[^\s;&\"'`]+)"
)
#: Query parameters that carry signatures although their names are not secret words.
_QUERY_SECRET = re.compile(r"(?P<prefix>[?&;](?:key|sig|signature|x-amz-signature|x-amz-credential)=)[^&#\s]+", re.IGNORECASE)
_AUTH_HEADER = re.compile(r"(?P<prefix>\b(?:proxy-)?authorization\s*[:=]\s*(?:[A-Za-z]+\s+)?)[^\s\"',;`]+", re.IGNORECASE)
_BEARER = re.compile(r"(?P<prefix>\bbearer\s+)[A-Za-z0-9._~+/=\-]{12,}", re.IGNORECASE)
#: ``Basic``/``Token`` are English words: their value must hold a digit or ``=`` padding to count.
_BASIC = re.compile(r"(?P<prefix>\b(?:basic|token)\s+)(?=[A-Za-z._~+/\-]*[0-9=])[A-Za-z0-9._~+/=\-]{12,}", re.IGNORECASE)


_SPACED_PAIR = re.compile(r"password|passwd|pwd", re.IGNORECASE)


def _mask_pair(m: re.Match) -> str:
    value = m["value"]
    core = value.strip("\"'{}")
    if not is_secret_key(m["key"]) or _PLACEHOLDER.fullmatch(core) or _PLACEHOLDER.fullmatch(core.rstrip("),.")):
        return m.group()
    if m["sep"] != "=" and not (_SPACED_PAIR.fullmatch(m["key"]) and m.string[m.end():m.end() + 1] == ";"):
        return m.group()  # "token = get_token()" is prose or code; "Password = x;" is a connection string
    quote = value[0] if value[0] in "\"'{" else ""
    return f"{m['key']}{m['sep']}{quote}{REDACTED}{'}' if quote == '{' else quote}"


def redact_value(value: Any) -> Any:
    """Mask credentials inside a string; other types are returned as they are.

    URL user info of any scheme (``postgresql://user:p@ss/w0rd@db:5432/x`` -> ``postgresql://user:***@db:5432/x``,
    ``https://ghp_xxx@github.com/...`` -> ``https://***@github.com/...``), ``secret=value`` pairs (query strings,
    ``Password=...;`` connection strings, ``--token=...``), ``Authorization:`` values and bearer tokens.
    """
    if not isinstance(value, str):
        return value
    value = _mask_urls(value)
    value = _AUTH_HEADER.sub(lambda m: m["prefix"] + REDACTED, value)
    value = _BEARER.sub(lambda m: m["prefix"] + REDACTED, value)
    value = _BASIC.sub(lambda m: m["prefix"] + REDACTED, value)
    value = _KEY_VALUE.sub(_mask_pair, value)
    return _QUERY_SECRET.sub(lambda m: m["prefix"] + REDACTED, value)


# --- structured values ------------------------------------------------------------------------------------------

def _hides_something(value: Any) -> bool:
    """Whether a value under a secret key is masked: non-empty text, bytes or containers (numbers, bools, None stay)."""
    return isinstance(value, (str, bytes, bytearray, Mapping, list, tuple, set, frozenset)) and len(value) > 0


def redact(key: str, value: Any) -> Any:
    """The value to log for ``key``: :data:`REDACTED` for a secret key's text/bytes/container, else :func:`redact_value`."""
    if is_secret_key(key) and _hides_something(plain(value)):
        return REDACTED
    return redact_value(value)


def mask_secret_values(value: Any) -> Any:
    """``value`` (nested mappings/lists, dataclasses, Namespaces) with every secret key's text/container replaced.

    Secret keys are masked whole, so ``{"auth": {"user": "u", "pass": "p"}}`` becomes ``{"auth": "***"}``; other
    mappings and lists are walked. Used before flattening, so no part of a secret becomes a parameter.
    """
    value = plain(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            v = plain(v)
            out[k] = REDACTED if is_secret_key(k) and _hides_something(v) else mask_secret_values(v)
        return out
    if isinstance(value, list):
        return [mask_secret_values(v) for v in value]
    if isinstance(value, tuple):
        return tuple(mask_secret_values(v) for v in value)
    return value


def redact_mapping(params: Any) -> Any:
    """A JSON-ready deep copy of a nested config with secrets masked (for the resolved-config artifact)."""
    params = plain(params)
    if isinstance(params, Mapping):
        return {str(k): (REDACTED if is_secret_key(k) and _hides_something(plain(v)) else redact_mapping(v)) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [redact_mapping(v) for v in params]
    if isinstance(params, (str, int, float, bool)) or params is None:
        return redact_value(params)
    return redact_value(scalar(params))


def redact_argv(argv: Iterable[str]) -> list[str]:
    """Command-line arguments with credentials masked.

    ``--api-key X`` / ``--password X`` / ``--token=X`` values, ``key=value`` overrides with a secret component
    anywhere in ``key`` (``wandb.api_key=k``, ``auth.user=u``), secret pairs inside JSON override values, and
    credentials inside every other argument (``--storage URL``, ``tracker.uri=URL``) via :func:`redact_value`.
    """
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("-"):
            name, eq, _ = arg.lstrip("-").partition("=")
            if is_secret_key(name.replace("-", "_")):
                if eq:
                    out.append(arg.split("=", 1)[0] + "=" + REDACTED)
                else:
                    out.append(arg)
                    hide_next = True
                continue
        elif "=" in arg:  # key=value overrides
            name, _, value = arg.partition("=")
            if any(is_secret_key(p) for p in name.split(".")) and value:
                out.append(f"{name}={REDACTED}")
                continue
            out.append(f"{name}={redact_value(_mask_inline_pairs(value))}")
            continue
        out.append(redact_value(arg))
    return out


# --- configuration files (YAML, TOML, JSON, INI, .env), line by line ---------------------------------------------

#: ``key: value`` / ``key = value`` / ``"key": value`` at the start of a line, also as a YAML list item, after
#: ``export`` (.env files) and after ``#`` (commented-out credentials are still credentials).
_HEAD = re.compile(
    r"""^(?P<lead>\s*(?:\#+\s*)?(?:-\s+)?(?:export\s+)?)(?P<q>["']?)(?P<key>[A-Za-z0-9_.\-]+)(?P=q)(?P<sep>\s*(?::(?!:)|=(?!=))[ \t]*)"""
)
#: ``{"key": value`` / ``, key: value`` inside one-line JSON objects and YAML flow mappings.
_INLINE = re.compile(r"""(?P<pre>[{,]\s*)(?P<q>["']?)(?P<key>[A-Za-z0-9_.\-]+)(?P=q)\s*:\s*""")
_BLOCK_SCALAR = re.compile(r"[|>][-+0-9]*")
_LINE_END = re.compile(r"\s+#|$")
_FLOW_END = re.compile(r"[,}\]]|\s+#|$")


def _value_end(s: str, i: int, inline: bool) -> tuple[int, bool]:
    """End of the value that starts at ``s[i]`` and whether it ends on this line (``False``: an open ``[``/``{``)."""
    if i >= len(s) or s[i] == "#":
        return i, True
    if s[i] in "\"'":
        quote, j = s[i], i + 1
        while j < len(s):
            if s[j] == "\\" and quote == '"':
                j += 2
            elif s[j] == quote and not (quote == "'" and s[j + 1:j + 2] == "'"):  # YAML escapes ' as ''
                return j + 1, True
            else:
                j += 2 if s[j] == quote else 1
        return len(s), True
    if s[i] in "[{":
        depth, quote = 0, None
        for j in range(i, len(s)):
            if quote:
                quote = None if s[j] == quote else quote
            elif s[j] in "\"'":
                quote = s[j]
            elif s[j] in "[{":
                depth += 1
            elif s[j] in "]}":
                depth -= 1
                if depth == 0:
                    return j + 1, True
        return len(s), False
    end = (_FLOW_END if inline else _LINE_END).search(s, i).start()
    end = len(s[:end].rstrip())
    if not inline and end > i and s[end - 1] == ",":  # JSON: the comma after a bare value
        end = len(s[:end - 1].rstrip())
    return end, True


def _mask_literal(value: str, json_key: bool = False) -> str:
    """``"x"`` -> ``"***"``, anything else -> ``***``, or ``"***"`` after a JSON key (masked values stay)."""
    if value.strip("\"'") == REDACTED:
        return value
    if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
        return value[0] + REDACTED + value[0]
    return f'"{REDACTED}"' if json_key else REDACTED  # keeps a JSON file JSON


def _mask_assignment(body: str) -> tuple[str, bool]:
    """One line with a secret key's value masked, and whether the value continues on the next, more indented lines."""
    m = _HEAD.match(body)
    if not m or not is_secret_key(m["key"]):
        return body, False
    opens = "#" not in m["lead"]  # a commented-out key has no block below it
    rest = body[m.end():]
    end, closed = _value_end(rest, 0, inline=False)
    value = rest[:end]
    if not value or _BLOCK_SCALAR.fullmatch(value) or (not closed and value[:1] in "[{"):
        return body, opens  # nested block, YAML block scalar or JSON opener: mask the lines below
    return body[:m.end()] + _mask_literal(value, m["q"] == '"') + rest[end:], False


def _mask_inline_pairs(text: str) -> str:
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        if m.start() < pos or not is_secret_key(m["key"]):
            continue
        end, closed = _value_end(text, m.end(), inline=True)
        if end > m.end():
            out += [text[pos:m.end()], _mask_literal(text[m.end():end], m["q"] == '"') if closed else REDACTED]
            pos = end
    return "".join(out) + text[pos:]


def _mask_nested_line(body: str) -> str:
    """A line inside a secret key's block: every value masked, keys and brackets kept."""
    m = _HEAD.match(body)
    if m and "#" not in m["lead"]:
        rest = body[m.end():]
        end, closed = _value_end(rest, 0, inline=False)
        value = rest[:end]
        if not value or not closed or _BLOCK_SCALAR.fullmatch(value):
            return body
        return body[:m.end()] + _mask_literal(value, m["q"] == '"') + rest[end:]
    lead, value, tail = re.match(r"(\s*(?:-\s+)?)(.*?)(\s*,?\s*)$", body).groups()
    if not value.strip("[]{}, "):
        return body
    return lead + _mask_literal(value) + tail


def redact_line(line: str) -> str:
    """One line of a config file (or a comment) with secret assignments, inline pairs and credentials masked."""
    return redact_value(_mask_inline_pairs(_mask_assignment(line)[0]))


def redact_config_text(text: str) -> str:
    """Mask credentials in a YAML/TOML/JSON/INI/.env file while keeping its layout and comments.

    A secret key's value is masked on its line; when it continues below (a nested YAML mapping or list, a block
    scalar, a multi-line JSON object), every more indented line below is masked too.
    """
    lines = []
    block: Optional[int] = None  # indentation of the secret key whose value continues below
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        end = line[len(body):]
        stripped = body.lstrip()
        indent = len(body) - len(stripped)
        if block is not None and stripped and not stripped.startswith("#"):
            if indent > block or (indent == block and stripped.startswith("- ")):  # YAML lists may sit at the key's indent
                lines.append(_mask_nested_line(body) + end)
                continue
            block = None
        masked, opens = _mask_assignment(body)
        if opens:
            block = indent
        lines.append(redact_value(_mask_inline_pairs(masked)) + end)
    return "".join(lines)
