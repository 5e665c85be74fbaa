"""MkDocs hook: render the Sphinx cross-reference roles of aimc's docstrings as plain code.

The docstrings use ``:func:`name``` / ``:class:`Name <target>``` (readable in ``help()`` and in
editors); mkdocstrings shows the role prefix literally. This strips the prefix and an explicit
``<target>`` so the API pages read ``name`` / ``Name``.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):(<code>)")
_TARGET = re.compile(r"(<code>[^<]*?)\s*&lt;[\w.]+&gt;(</code>)")


def on_page_content(html: str, **_: object) -> str:
    """Strip role prefixes and explicit targets from the rendered page."""
    return _TARGET.sub(r"\1\2", _ROLE.sub(r"\1", html))
