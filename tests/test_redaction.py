"""Secrets are never logged or uploaded: keys, values, config files, Python recipes, argv, git remotes.

Every expected string is written out by hand: a test must not compute its expectation with the code under test.
"""

from __future__ import annotations

import ast
import io
import tokenize
from argparse import Namespace
from dataclasses import dataclass, field

import pytest

from sptrack.track import environment
from sptrack.track.params import REDACTED, is_secret_key, prepare_params, redact_argv, redact_mapping, redact_text, redact_value
from sptrack.track.redact import redact_config_text
from sptrack.track.redact_python import redact_python


def _types(source: str) -> list[int]:
    return [t.type for t in tokenize.generate_tokens(io.StringIO(source).readline)]


# --- keys -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [
    "auth", "authorization", "Proxy-Authorization", "pw", "db_pw", "cookie", "cookies", "session_cookie", "ssh_key", "sshKey",
    "secrets", "hfToken", "X-Api-Key", "AWS_SECRET_ACCESS_KEY", "azure.account_key", "slack_webhook_url", "tracker/api_key",
])
def test_new_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", [
    "num_tokens", "max_tokens", "tokenizer", "token_dim", "tokenDim", "maxTokens", "cls_token", "use_cls_token", "mask_token",
    "pad_token", "key", "keys", "monkey", "author", "authors", "oauth_provider", "password_length", "secretary", "pwd_hint",
])
def test_model_words_are_not_secret(key):
    assert not is_secret_key(key)


# --- credentials inside strings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    # URL passwords: the user info ends at the LAST "@" before the host, whatever the password holds.
    ("postgresql://user:p@ss/w0rd@db.example:5432/optuna", "postgresql://user:***@db.example:5432/optuna"),
    ("mysql+pymysql://u:pa:ss@db.example/x", "mysql+pymysql://u:***@db.example/x"),
    ("postgresql://u:p#ss?w@db.example/x", "postgresql://u:***@db.example/x"),
    ("postgresql://u:a@b:c/d#e?f@[::1]:5432/x", "postgresql://u:***@[::1]:5432/x"),
    ("redis://:s3cr3t@cache.example:6379/0", "redis://:***@cache.example:6379/0"),
    ("https://bob@corp.example:pw@h.example/x", "https://bob@corp.example:***@h.example/x"),
    ("uri='postgresql://u:it's@db.example/x'", "uri='postgresql://u:***@db.example/x'"),
    ("see (https://u:pw@h.example) and https://v:pw2@g.example/x", "see (https://u:***@h.example) and https://v:***@g.example/x"),
    ('{"a":"https://u:p1@h1.example/x","b":"https://u2:p2@h2.example/y"}',
     '{"a":"https://u:***@h1.example/x","b":"https://u2:***@h2.example/y"}'),
    # Tokens as user names.
    ("https://ghp_abc123def@github.example/org/repo.git", "https://***@github.example/org/repo.git"),
    ("git+https://oauth2:glpat-xyz@gitlab.example/g/r.git", "git+https://oauth2:***@gitlab.example/g/r.git"),
    ("postgresql://ghp_abcdef0123456789@db.example/x", "postgresql://***@db.example/x"),
    # Query strings, connection strings, headers, flags.
    ("https://h.example/x?api_key=abc&page=2", "https://h.example/x?api_key=***&page=2"),
    ("https://b.example/o?X-Amz-Credential=AK%2F1&X-Amz-Signature=f00d&X-Amz-Security-Token=t0k",
     "https://b.example/o?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***"),
    ("Server=x;User Id=u;Password=hunter2;", "Server=x;User Id=u;Password=***;"),
    ("Driver={ODBC};Server=db;Uid=u;Pwd={p;w};", "Driver={ODBC};Server=db;Uid=u;Pwd={***};"),
    ("Host=db; Password = s3cret; Port=5432", "Host=db; Password = ***; Port=5432"),
    ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz", "Authorization: Bearer ***"),
    ("curl -H 'Authorization: Basic dXNlcjpwYXNzd29yZA=='", "curl -H 'Authorization: Basic ***'"),
    ("headers['x'] = 'Bearer abcdefghijklmnop'", "headers['x'] = 'Bearer ***'"),
    ("train --api-key=sk-123 --lr=0.1", "train --api-key=*** --lr=0.1"),
])
def test_redact_value_masks(value, expected):
    assert redact_value(value) == expected
    assert redact_value(expected) == expected  # idempotent


@pytest.mark.parametrize("value", [
    "ssh://git@github.example/org/repo.git",  # "git" is an account, not a token
    "git@github.example:org/repo.git",
    "postgresql://optuna@db.example/studies",
    "https://example.invalid/users/@bob",  # "@" in the path
    "https://example.invalid/a:b",
    "https://u:{pw}@h.example/x",  # a str.format field, not a password
    "postgresql://u:$PGPASSWORD@h.example/x",
    "user@example.invalid",
    "a basic configuration for token representations",
    "token = get_token()",
    "num_tokens=196",
    "Password=...;",
    "password=$DB_PASSWORD",
])
def test_redact_value_leaves_non_credentials(value):
    assert redact_value(value) == value


# --- Python recipes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    ('os.environ["WANDB_API_KEY"] = "wandb-0123"\n', 'os.environ["WANDB_API_KEY"] = "***"\n'),
    ("os.environ['X_TOKEN'] = 'x' * 40\n", "os.environ['X_TOKEN'] = '***' * 40\n"),
    ('os.environ.setdefault("X_TOKEN", "tok-1")\n', 'os.environ.setdefault("X_TOKEN", "***")\n'),
    ('hf = os.getenv("HF_TOKEN", "hf_default")\n', 'hf = os.getenv("HF_TOKEN", "***")\n'),
    ('wandb.login(key="k-123", relogin=True)\n', 'wandb.login(key="***", relogin=True)\n'),
    ('wandb.login("k-123")\n', 'wandb.login("***")\n'),
    ("client = Client(api_key='sk-1', timeout=3)\n", "client = Client(api_key='***', timeout=3)\n"),
    ("db_pw = b'hunter2'\n", "db_pw = b'***'\n"),
    ('cfg.tracker.password = r"p\\w"  # why not\n', 'cfg.tracker.password = r"***"  # why not\n'),
    ('auth = ("bob", "hunter2")\n', 'auth = ("***", "***")\n'),
    ('secret = "a" "b" if flag else """c"""\n', 'secret = "***" "***" if flag else """***"""\n'),
    ("token = os.environ.get('T') or 'fallback-1'\n", "token = os.environ.get('T') or '***'\n"),
    ('creds = {"password": "hunter2", "user": "bob"}\n', 'creds = {"password": "***", "user": "bob"}\n'),
    ('headers = {"Authorization": f"Bearer {tok}", "Accept": "json"}\n', 'headers = {"Authorization": f"***{tok}", "Accept": "json"}\n'),
    ('token = f"hf_{suffix}abc"\n', 'token = f"***{suffix}***"\n'),
    ("class C:\n    token: str = 'hf_abc'\n    cookie: bytes = field(default=b'c00kie')\n",
     "class C:\n    token: str = '***'\n    cookie: bytes = field(default=b'***')\n"),
    ('def connect(user, password: str = "hunter2", *, pw="x"):\n    return user\n',
     'def connect(user, password: str = "***", *, pw="***"):\n    return user\n'),
    ('STORAGE = "postgresql://user:p@ss/w0rd@db.example:5432/optuna"\n', 'STORAGE = "postgresql://user:***@db.example:5432/optuna"\n'),
    ("remote = 'https://ghp_abc@github.example/o/r.git'\n", "remote = 'https://***@github.example/o/r.git'\n"),
    ('conn = "Server=x;User Id=u;Password=hunter2;"\n', 'conn = "Server=x;User Id=u;Password=***;"\n'),
    ('cfg = "tracking:\\n  api_key: sk-9\\n"\n', 'cfg = "tracking:\\n  api_key: ***\\n"\n'),  # config text in a value
    ('cfg = "a: 1\\npassword: \\"p\\\\w\\"\\n"\n', 'cfg = "a: 1\\npassword: \\"***\\"\\n"\n'),  # escapes decoded, re-encoded
    ('# WANDB_API_KEY = "abc123"\nx = 1\n', '# WANDB_API_KEY = "***"\nx = 1\n'),
    ('x = 1  # see https://u:pw@h.example\n', 'x = 1  # see https://u:***@h.example\n'),
])
def test_python_masks_secret_literals_only(source, expected):
    assert redact_text(source, "recipe.py") == expected
    ast.parse(expected)
    assert _types(expected) == _types(source)


@pytest.mark.parametrize("source", [
    "token = get_token()\n",
    'api_key = os.environ["K"]\n',
    'token = os.environ.get("HF_TOKEN")\n',
    'key = "val_loss"\n',  # "key" is secret only as a login()/connect() keyword
    'self._grid_for(h, w, key="img_size")\n',
    'def check(split, key: str = "split"):\n    return split\n',
    'use_token = mode == "hf"\n',
    'max_tokens = "196"\n',
    'cls_token = "[CLS]"\n',
    'hf_home = os.environ.get("HF_HOME", "/tmp/hf")\n',
    'token = "".join(parts)\n',
    'password = ""\n',
    'url = f"https://u:{pw}@h.example/x"\n',
    '"""Docstring: api_key: the W&B key; token = get_token(); Password=...;"""\n',
])
def test_python_leaves_code_unchanged(source):
    assert redact_text(source, "recipe.py") == source


RECIPE = '''"""A recipe with secrets mixed into code: api_key: the key below (prose, kept)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import wandb

from sptrack.recipe.config import RecipeConfig

os.environ["WANDB_API_KEY"] = "wandb-local-0123456789"
os.environ.setdefault("HF_TOKEN", 'hf_AbCdEf012345')
token = get_token()
api_key = os.environ["K"]
STORAGE = "postgresql://optuna:p@ss/w0:rd#1@db.example:5432/optuna"  # the sweep database
REMOTE = "https://ghp_R3m0teT0ken@github.example/org/repo.git"


@dataclass
class TrackerConfig:
    """Where runs go."""

    uri: str = "https://mlflow.example"
    token: str = "mlflow-token-42"
    password: str = field(default="hunter2")
    dsn: str = "Server=db;User Id=u;Password=c0nn-pw;"
    key: str = "val_loss"  # a metric name, kept
    num_tokens: int = 196


def login() -> None:
    wandb.login(key="wandb-login-key-77", relogin=True)
    headers = {"Authorization": "Bearer abcdefghijklmnop0123", "Accept": "application/json"}
    return headers


@dataclass
class Config(RecipeConfig):
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
'''
RECIPE_SECRETS = ("wandb-local-0123456789", "hf_AbCdEf012345", "p@ss/w0:rd#1", "ghp_R3m0teT0ken", "mlflow-token-42", "hunter2", "c0nn-pw",
                  "wandb-login-key-77", "abcdefghijklmnop0123")


def test_python_recipe_keeps_code_and_hides_every_secret():
    out = redact_text(RECIPE, "recipes/tracked.py")
    # (a) no secret survives
    for secret in RECIPE_SECRETS:
        assert secret not in out, secret
    # (b) the output is the input except at the masked literals (the replacements are written out by hand)
    expected = RECIPE
    for old, new in [
        ('"wandb-local-0123456789"', '"***"'),
        ("'hf_AbCdEf012345'", "'***'"),
        ("optuna:p@ss/w0:rd#1@db", "optuna:***@db"),
        ("https://ghp_R3m0teT0ken@", "https://***@"),
        ('"mlflow-token-42"', '"***"'),
        ('"hunter2"', '"***"'),
        ("Password=c0nn-pw;", "Password=***;"),
        ('"wandb-login-key-77"', '"***"'),
        ('"Bearer abcdefghijklmnop0123"', '"***"'),
    ]:
        assert expected.count(old) == 1, old
        expected = expected.replace(old, new)
    assert out == expected
    # (c) still Python, with the same tokens
    ast.parse(out)
    assert _types(out) == _types(RECIPE)
    # Without a file name a module with imports is taken for Python too (the recipe upload passes none).
    assert redact_text(RECIPE) == expected


def test_shipped_recipes_are_uploaded_unchanged():
    for name in ("dino", "ijepa", "lejepa"):
        with open(f"recipes/{name}.py", encoding="utf-8") as f:
            source = f.read()
        assert redact_python(source) == source, name


def test_text_dispatch_by_file_name():
    text = "token = get_token()\npassword = 'hunter2'\n"
    assert redact_text(text, "recipe.py") == "token = get_token()\npassword = '***'\n"
    assert redact_text(text, "recipe.toml") == "token = ***\npassword = '***'\n"  # a config value, not code
    assert redact_text(text) == "token = ***\npassword = '***'\n"  # no imports/functions/classes: a config file
    broken = "def f(:\n  token = 'abc'\n"  # not Python: the line-based redactor still masks it
    assert redact_python(broken) == "def f(:\n  token = '***'\n"


# --- configuration files ----------------------------------------------------------------------------------------

def test_config_text_masks_keys_blocks_and_inline_pairs():
    text = (
        "tracker:\n"
        "  auth:\n"
        "    user: bob\n"
        "    pass: \"hunter2\"\n"
        "  password: abc#def  # a '#' inside a value is not a comment\n"
        "  key: val_loss\n"
        "  headers: {Authorization: Bearer abc, Accept: json}\n"
        "  cookies: [a1, b2]\n"
        "  ssh_key: |\n"
        "    -----BEGIN KEY-----\n"
        "    MIIEsecret\n"
        "  lr: 0.1\n"
        "secrets:\n"
        "- one\n"
        "- two\n"
        "export WANDB_API_KEY=abc123\n"
        "# password: commented-out\n"
        "pw = 's3'\n"
        "dsn: Server=x;User Id=u;Password=hunter3;\n"
        "num_tokens: 196\n"
        "tokenizer: bpe\n"
    )
    assert redact_config_text(text) == (
        "tracker:\n"
        "  auth:\n"
        "    user: ***\n"
        "    pass: \"***\"\n"
        "  password: ***  # a '#' inside a value is not a comment\n"
        "  key: val_loss\n"
        "  headers: {Authorization: ***, Accept: json}\n"
        "  cookies: ***\n"
        "  ssh_key: |\n"
        "    ***\n"
        "    ***\n"
        "  lr: 0.1\n"
        "secrets:\n"
        "- ***\n"
        "- ***\n"
        "export WANDB_API_KEY=***\n"
        "# password: ***\n"
        "pw = '***'\n"
        "dsn: Server=x;User Id=u;Password=***;\n"
        "num_tokens: 196\n"
        "tokenizer: bpe\n"
    )


def test_config_text_keeps_json_valid():
    text = '{\n  "auth": {\n    "user": "u",\n    "ids": [1, 2]\n  },\n  "pin": 1234,\n  "lr": 0.1,\n  "one": {"token": "t", "n": 1}\n}\n'
    assert redact_config_text(text) == (
        '{\n  "auth": {\n    "user": "***",\n    "ids": "***"\n  },\n  "pin": 1234,\n  "lr": 0.1,\n  "one": {"token": "***", "n": 1}\n}\n'
    )


# --- structured values ------------------------------------------------------------------------------------------

@dataclass
class _Auth:
    user: str = "bob"
    password: str = "hunter2"


def test_redact_mapping_masks_whole_values_under_secret_keys():
    config = {
        "auth": ("bob", "hunter2"),
        "cookie": b"c00kie",
        "secrets": {"a": 1, "b": "x"},
        "credentials": _Auth(),
        "tracker": {"api_key": ["k1", "k2"], "token": 5, "password": "", "uri": "postgresql://u:p@ss/w@db.example/x"},
        "login": _Auth(),
        "tokens": [1, 2],
        "blob": b"plain",
        "list": [{"pw": {"nested": True}}, "https://ghp_x1@github.example/r"],
    }
    assert redact_mapping(config) == {
        "auth": REDACTED,
        "cookie": REDACTED,
        "secrets": REDACTED,
        "credentials": REDACTED,
        "tracker": {"api_key": REDACTED, "token": 5, "password": "", "uri": "postgresql://u:***@db.example/x"},
        "login": {"user": "bob", "password": REDACTED},
        "tokens": [1, 2],
        "blob": "b'plain'",
        "list": [{"pw": REDACTED}, "https://***@github.example/r"],
    }


def test_prepare_params_masks_whole_values_under_secret_keys():
    params = Namespace(
        auth=("bob", "hunter2"),
        cookie=b"c00kie",
        model={"secrets": {"a": 1}, "token_dim": 8, "layers": [{"ssh_key": ["a", "b"], "width": 4}]},
        creds=_Auth(),
        db="postgresql://u:p@ss/w0rd@db.example:5432/optuna",
        empty_token="",
    )
    assert prepare_params(params) == {
        "auth": REDACTED,
        "cookie": REDACTED,
        "model.secrets": REDACTED,
        "model.token_dim": 8,
        "model.layers.0.ssh_key": REDACTED,
        "model.layers.0.width": 4,
        "creds.user": "bob",
        "creds.password": REDACTED,
        "db": "postgresql://u:***@db.example:5432/optuna",
        "empty_token": "",
    }


def test_prepare_params_masks_flattened_values_below_a_secret_key():
    # TrackerLogger sends params flattened already: numbers below a secret component are masked too.
    flat = {"auth.user": "bob", "auth.pin": 1234, "auth.enabled": None, "model.token": 5, "model.api_key": "k", "lr": 0.1}
    assert prepare_params(flat) == {
        "auth.user": REDACTED, "auth.pin": REDACTED, "auth.enabled": None, "model.token": 5, "model.api_key": REDACTED, "lr": 0.1,
    }


def test_redact_argv_masks_flags_overrides_and_urls():
    argv = [
        "sptrack.run", "recipes/dino.py", "--storage", "postgresql://u:p@ss/w0rd@db.example:5432/optuna",
        "tracker.uri=https://u:p#w@mlflow.example/x", "--password", "hunter2", "--db-pw=s3", "auth.user=bob",
        'wandb={"api_key": "k", "project": "p"}', "--token-file", "t.txt", "optim.head.lr=0.1",
        "--remote", "https://ghp_abc@github.example/o/r.git",
    ]
    assert redact_argv(argv) == [
        "sptrack.run", "recipes/dino.py", "--storage", "postgresql://u:***@db.example:5432/optuna",
        "tracker.uri=https://u:***@mlflow.example/x", "--password", "***", "--db-pw=***", "auth.user=***",
        'wandb={"api_key": "***", "project": "p"}', "--token-file", "t.txt", "optim.head.lr=0.1",
        "--remote", "https://***@github.example/o/r.git",
    ]


# --- environment record -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("remote, expected", [
    ("https://ghp_T0kenAsUser@github.example/org/repo.git", "https://***@github.example/org/repo.git"),
    ("https://x-access-token:ghs_abc@github.example/org/repo.git", "https://x-access-token:***@github.example/org/repo.git"),
    ("https://oauth2:glpat-p@ss/w@gitlab.example/g/r.git", "https://oauth2:***@gitlab.example/g/r.git"),
    ("git@github.example:org/repo.git", "git@github.example:org/repo.git"),
])
def test_git_remote_in_the_environment_is_redacted(monkeypatch, tmp_path, remote, expected):
    answers = {
        ("rev-parse", "HEAD"): "abc123",
        ("status", "--porcelain", "--untracked-files=no"): "",
        ("rev-parse", "--abbrev-ref", "HEAD"): "main",
        ("rev-parse", "--show-toplevel"): str(tmp_path),
        ("config", "--get", "remote.origin.url"): remote,
    }
    monkeypatch.setattr(environment, "_git", lambda args, cwd: answers[tuple(args)])
    info = environment.git_info(str(tmp_path))
    assert info["remote"] == expected and info["commit"] == "abc123"


@dataclass
class _WithFactory:
    secrets: dict = field(default_factory=lambda: {"a": "x"})


def test_secret_keys_of_dataclass_configs():
    assert redact_mapping(_WithFactory()) == {"secrets": REDACTED}
    assert prepare_params(_WithFactory()) == {"secrets": REDACTED}
