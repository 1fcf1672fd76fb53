"""Escaping of free text for the formats reports are written in."""

from __future__ import annotations

_MD_SPECIAL = "\\`*_{}[]()#+-.!|<>"
_MD_INLINE = "\\`*_[]|~"
_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "\n": " ",
    "\r": " ",
    "[": "{[}",
    "]": "{]}",  # a "[" after a row's \\ would be read as its optional argument
    # the few non-ASCII symbols reports use, so pdflatex needs no Unicode set-up
    "Δ": r"$\Delta$",
    "ρ": r"$\rho$",
    "±": r"$\pm$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "–": "--",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "×": r"$\times$",
}


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


def markdown_inline(text: str) -> str:
    """Escape text placed inside a line (a table cell, a sentence): emphasis, code, links,
    strike-through, table pipes and HTML; lighter than :func:`markdown`, so prose stays readable."""
    out = []
    for ch in str(text).replace("\r", " ").replace("\n", " "):
        if ch in "<>&":
            out.append({"<": "&lt;", ">": "&gt;", "&": "&amp;"}[ch])
        elif ch in _MD_INLINE:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def latex(text: str) -> str:
    """Escape text for LaTeX: & % $ # _ { } ~ ^ \\ and < > | (which the default font
    encoding would print wrongly); newlines become spaces (a blank line breaks a tabular)."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def markdown_code(text: str) -> str:
    """``text`` as an inline code span, fenced so that nothing in it is interpreted: inside a code
    span backslash escapes and HTML entities show literally (so :func:`markdown_inline` would print
    ``results\\_dir``), and only a run of backticks as long as the fence can end it. The fence is one
    backtick longer than the longest run in ``text``; a space pads a text that starts or ends with a
    backtick. Newlines become spaces. For prose, not table cells (a pipe would still split a cell)."""
    body = str(text).replace("\r", " ").replace("\n", " ")
    longest, run = 0, 0
    for ch in body:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"
