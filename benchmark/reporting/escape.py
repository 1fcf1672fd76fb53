"""Escaping of free text for the formats reports are written in."""

from __future__ import annotations

_MD_SPECIAL = "\\`*_{}[]()#+-.!|<>"
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def markdown(text: str) -> str:
    """Escape Markdown/HTML-significant characters (table pipes included); newlines become spaces."""
    out = []
    for ch in str(text).replace("\r", " ").replace("\n", " "):
        if ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif ch == "&":
            out.append("&amp;")
        elif ch in _MD_SPECIAL:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def latex(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))
