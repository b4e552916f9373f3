"""Redacting a whole file: Python sources through the tokenizer, every other format line by line.

Its own module because it stands on both :mod:`~sptrack.track.redact` and
:mod:`~sptrack.track.redact_python` (which uses the former), so neither imports the other back.
"""

from __future__ import annotations

import ast
import os
import warnings
from typing import Optional

from sptrack.track.redact import redact_config_text
from sptrack.track.redact_python import redact_python

_PYTHON_SUFFIXES = (".py", ".pyw", ".pyi")


def _looks_like_python(text: str) -> bool:
    # YAML such as "password: hunter2" parses as Python too (an annotation), so parsing alone is not enough:
    # only modules with imports, functions or classes are taken for code.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in tree.body)


def redact_text(text: str, filename: Optional[str] = None) -> str:
    """Mask credentials in a file's text; ``.py`` sources keep their code byte for byte (only literals change).

    ``filename`` picks the format by its suffix: ``.py`` -> :func:`sptrack.track.redact_python.redact_python`, anything
    else -> :func:`redact_config_text`. Without a name, text that parses as Python and has imports, functions or
    classes is taken for Python source.
    """
    if filename is not None:
        python = os.path.splitext(str(filename))[1].lower() in _PYTHON_SUFFIXES
    else:
        python = _looks_like_python(text)
    return redact_python(text) if python else redact_config_text(text)
