"""Turning raw source files into clean English paragraphs (pure Python, no TF).

Every cleaner takes a `str` and returns a `str` whose paragraphs are separated
by one blank line ("\\n\\n") and whose lines are whitespace-normalized (see
`normalize_text`). Markup-specific cleaners: Project Gutenberg plain text
(`strip_gutenberg`), reStructuredText (`clean_rst`), HTML (`html_to_text`), and
a line filter that drops code/markup-heavy lines (`drop_code_lines`).
"""

from __future__ import annotations

import html.parser
import re
import unicodedata

# Characters Python or other tools may treat as line breaks: all become "\n".
_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# Remaining C0/C1 control characters (except \n and \t) and BOM / zero-width marks.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ufeff\u200b\u200c\u200d\u2060]")
_SPACES = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
  """NFC, unified newlines, no control chars, single spaces, stripped lines, <=1 blank line in a row."""
  text = unicodedata.normalize("NFC", text)
  text = _LINE_BREAKS.sub("\n", text)
  text = _CONTROL.sub("", text)
  lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
  return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def paragraphs(text: str) -> list[str]:
  """Splits normalized text into its non-empty blank-line-separated paragraphs."""
  return [p for p in normalize_text(text).split("\n\n") if p]


# ----------------------------------------------------------------------------- Gutenberg

_GUT_START = re.compile(
    r"^\s*(\*{3}\s*START OF (THE |THIS )?PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT.*)$",
    re.IGNORECASE | re.MULTILINE)
_GUT_END = re.compile(
    r"^\s*(\*{3}\s*END OF (THE |THIS )?PROJECT GUTENBERG.*|END OF (THE |THIS )?PROJECT GUTENBERG.*)$",
    re.IGNORECASE | re.MULTILINE)
_GUT_PARAGRAPH = re.compile(
    r"project gutenberg|gutenberg\.(org|net)|\be-?texts?\b|\be-?books?\b|^produced by\b|"
    r"small print|^\*{3}",
    re.IGNORECASE | re.MULTILINE)
_TRAILING_LINE_NUMBER = re.compile(r"[ \t]{2,}\d{1,4}[ \t]*$", re.MULTILINE)


def strip_gutenberg(text: str) -> str:
  """Drops Project Gutenberg header/footer/license boilerplate and verse line numbers.

  Keeps the text between the "*** START OF ..." and "*** END OF ..." markers when
  present, then drops any remaining paragraph that mentions Project Gutenberg,
  e-texts/e-books or "Produced by", and right-aligned verse line numbers.
  """
  text = _LINE_BREAKS.sub("\n", text)
  start = _GUT_START.search(text)
  if start:
    text = text[start.end():]
  end = _GUT_END.search(text)
  if end:
    text = text[:end.start()]
  text = _TRAILING_LINE_NUMBER.sub("", text)
  return "\n\n".join(p for p in paragraphs(text) if not _GUT_PARAGRAPH.search(p))


# ----------------------------------------------------------------------------- reST

_ADMONITIONS = frozenset({
    "note", "warning", "attention", "important", "tip", "hint", "caution", "danger", "error",
    "seealso", "admonition", "topic", "sidebar", "rubric", "epigraph", "highlights",
})
_DIRECTIVE = re.compile(r"^(\s*)\.\.(?:\s+([\w:.+-]+)::(.*)|\s+.*|)$")
_UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+_:.<>])\1{2,}\s*$")
_TABLE_LINE = re.compile(r"^\s*(\+[-=+]+\+?|\|.*\||[=\s]*={3,}[=\s]*)\s*$")
_INLINE_RULES = (  # bounded spans: an unbalanced backtick must not swallow paragraphs
    (re.compile(r":[\w:.+-]+:`([^`<]{0,200}?)\s*<[^`>]{0,200}>`"), r"\1"),  # :ref:`text <target>`
    (re.compile(r":[\w:.+-]+:`[~!]?([^`]{0,200})`"), r"\1"),  # :c:func:`name`
    (re.compile(r"``([^`]{1,200})``"), r"\1"),  # ``literal``
    (re.compile(r"`([^`<]{1,200}?)\s*<[^`>]{0,200}>`__?"), r"\1"),  # `text <url>`_
    (re.compile(r"`([^`]{1,200})`_{0,2}"), r"\1"),  # `text`_ / `interpreted`
    (re.compile(r"\*\*([^*]{1,200})\*\*"), r"\1"),  # **strong**
    (re.compile(r"(?<![\w*])\*([^*\s][^*\n]{0,200}?)\*(?![\w*])"), r"\1"),  # *emphasis*
    (re.compile(r"\|([\w .-]{1,60})\|(?!\w)"), r"\1"),  # |substitution|
)


def _clean_inline_rst(line: str) -> str:
  for pattern, repl in _INLINE_RULES:
    line = pattern.sub(repl, line)
  return line


def clean_rst(text: str) -> str:
  """Strips reST markup: directives (except admonitions) and their bodies, `::` literal
  blocks, comments/targets, heading underlines, tables; unwraps inline roles/literals."""
  out: list[str] = []
  skip_indent = None  # drop non-blank lines indented deeper than this
  for raw in _LINE_BREAKS.sub("\n", text).split("\n"):
    line = raw.expandtabs(8).rstrip()
    stripped = line.strip()
    indent = len(line) - len(line.lstrip())
    if skip_indent is not None:
      if not stripped:
        out.append("")  # keeps paragraphs around a dropped block apart
        continue
      if indent > skip_indent:
        continue
      skip_indent = None
    m = _DIRECTIVE.match(line)
    if m:
      name = (m.group(2) or "").lower()
      if name in _ADMONITIONS:
        out.append((m.group(3) or "").strip())
      else:
        skip_indent = indent
      continue
    if _UNDERLINE.match(line) or _TABLE_LINE.match(line):
      continue
    if stripped.endswith("::"):  # "Example::" introduces an indented literal block
      skip_indent = indent
      stripped = stripped[:-1] if len(stripped) > 2 and stripped[-3] != " " else stripped[:-2]
      line = stripped.rstrip()
    out.append(line)
  return normalize_text(_clean_inline_rst("\n".join(out)))  # roles may span lines


def clean_plain_text(text: str) -> str:
  """Plain text (e.g. makeinfo --plaintext output): drops heading underline lines, normalizes."""
  text = _LINE_BREAKS.sub("\n", text)
  return normalize_text("\n".join(l for l in text.split("\n") if not _UNDERLINE.match(l)))


# ----------------------------------------------------------------------------- code filter

_CODE_START = re.compile(
    r"^(#\s*(include|define|if|ifdef|ifndef|endif|else|undef|pragma)\b|\$ |# |% |>>>|\.\.\. |"
    r"//|/\*|\*/|\* @|@\w+:|[{}\[\]()<>]$)")
_CODE_END = re.compile(r"[;{}]\s*$|\)\s*:\s*$")
_CODE_TOKEN = re.compile(r"[_(){}\[\]=<>/\\|#;$&*]|^-{1,2}\w|[a-z][A-Z]|^\d+(\.\d+)*$|^0x")


def looks_like_code(line: str) -> bool:
  """True for lines that are probably code, shell sessions, hex dumps or markup, not prose."""
  s = line.strip()
  if not s:
    return False
  if _CODE_START.match(s) or _CODE_END.search(s):
    return True
  letters = sum(c.isalpha() for c in s)
  if letters < 0.6 * len(s.replace(" ", "")):
    return True
  words = s.split()
  if max(len(w) for w in words) > 60:
    return True
  codeish = sum(bool(_CODE_TOKEN.search(w)) for w in words)
  return codeish >= max(1, 0.5 * len(words)) if len(words) <= 8 else codeish > 0.4 * len(words)


def drop_code_lines(text: str) -> str:
  """Removes code-like lines (`looks_like_code`) and paragraphs left with < 3 words."""
  kept = []
  for para in paragraphs(text):
    lines = [line for line in para.split("\n") if not looks_like_code(line)]
    if len(" ".join(lines).split()) >= 3:
      kept.append("\n".join(lines))
  return "\n\n".join(kept)


# ----------------------------------------------------------------------------- HTML

_BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "br", "caption", "dd", "div", "dl", "dt",
    "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
    "main", "ol", "p", "section", "td", "th", "tr", "ul",
})
_VOID_TAGS = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
})
_SKIP_TAGS = frozenset({
    "button", "form", "head", "math", "nav", "noscript", "pre", "script", "select", "style", "svg",
    "table", "textarea", "title",
})
_SKIP_CLASSES = frozenset({
    "breadcrumbs", "footer", "headerlink", "highlight", "inline-search", "mobile-nav",
    "navfooter", "navheader", "programlisting", "related", "screen", "sig", "sphinxsidebar",
    "sphinxsidebarwrapper", "synopsis", "toc", "toctree-wrapper",
})


class _TextExtractor(html.parser.HTMLParser):
  """Collects visible prose; blocks become paragraphs; skips nav, code and tables."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.stack: list[tuple[str, bool]] = []  # (tag, starts a skipped region)
    self.skip_depth = 0
    self.blocks: list[str] = []
    self.current: list[str] = []

  def _flush(self):
    text = " ".join("".join(self.current).split())
    if text:
      self.blocks.append(text)
    self.current = []

  def handle_starttag(self, tag, attrs):
    if tag in _BLOCK_TAGS:
      self._flush()
    if tag in _VOID_TAGS:
      return
    classes = set()
    for key, value in attrs:
      if key == "class" and value:
        classes.update(value.split())
      if key == "role" and value == "navigation":
        classes.add("related")
    skip = tag in _SKIP_TAGS or bool(classes & _SKIP_CLASSES)
    self.stack.append((tag, skip))
    self.skip_depth += skip

  def handle_endtag(self, tag):
    if tag in _BLOCK_TAGS:
      self._flush()
    if not any(t == tag for t, _ in self.stack):
      return  # stray end tag
    while self.stack:
      t, skip = self.stack.pop()
      self.skip_depth -= skip
      if t == tag:
        break

  def handle_data(self, data):
    if not self.skip_depth:
      self.current.append(data)

  def close(self):
    super().close()
    self._flush()


def html_to_text(markup: str) -> str:
  """Visible prose of an HTML page, one paragraph per block element.

  Skips <head>, scripts/styles, <pre> code, tables, forms, navigation bars,
  Sphinx/DocBook sidebars, signatures and header links.
  """
  parser = _TextExtractor()
  parser.feed(markup)
  parser.close()
  return normalize_text("\n\n".join(parser.blocks))


# ----------------------------------------------------------------------------- dictd, POD

_DICTD_DIGITS = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_DICT_SOURCE_LINE = re.compile(r"^\s*\[[^\]\n]{1,60}\]\s*$", re.MULTILINE)  # "[1913 Webster]"
_DICT_PRONUNCIATION = re.compile(r"\\([^\\\n]{1,80})\\")  # \Ab*jure"\ -> Abjure
_DICT_BRACES = re.compile(r"\{([^{}\n]{0,200})\}")  # {cross reference} -> cross reference


def _dictd_number(digits: str) -> int:
  value = 0
  for c in digits:
    value = value * 64 + _DICTD_DIGITS[c]
  return value


def dict_entries(body: bytes, index: str) -> str:
  """A dictd dictionary (uncompressed .dict bytes + .index text) as one paragraph per entry.

  Entries are taken once each (by offset, in file order); "00-database-*" metadata entries
  are skipped. Pronunciation markup, {cross references} and source-tag lines such as
  "[1913 Webster]" are removed; blank lines inside an entry are collapsed.
  """
  spans = set()
  for line in index.split("\n"):
    parts = line.split("\t")
    if len(parts) < 3 or parts[0].startswith(("00-database", "00database")):
      continue
    try:
      spans.add((_dictd_number(parts[1]), _dictd_number(parts[2])))
    except KeyError:
      continue  # not an index line
  entries = []
  for offset, length in sorted(spans):
    text = body[offset:offset + length].decode("utf-8", errors="replace")
    text = _DICT_SOURCE_LINE.sub("", text)
    text = _DICT_PRONUNCIATION.sub(lambda m: m.group(1).replace("*", "").replace('"', ""), text)
    text = _DICT_BRACES.sub(r"\1", text)
    text = normalize_text(text).replace("\n\n", "\n")
    if text:
      entries.append(text)
  return "\n\n".join(entries)


_POD_CODE = re.compile(r"[A-Z]<(?:<+\s)?([^<>]*?)(?:\s>+)?>")
_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def _pod_inline(text: str) -> str:
  """Resolves POD formatting codes (innermost first): B<x> -> x, L<text|link> -> text, X<> -> ''."""
  def repl(m):
    code, inner = m.group(0)[0], m.group(1)
    if code in "XZ":
      return ""
    if code == "E":
      return _POD_ESCAPES.get(inner, "")
    if code == "L":
      return inner.split("|", 1)[0] if "|" in inner else inner.split("/")[-1].strip('"')
    return inner
  for _ in range(5):  # nested codes
    new = _POD_CODE.sub(repl, text)
    if new == text:
      break
    text = new
  return text


def clean_pod(text: str) -> str:
  """Perl POD -> prose: headings and items kept as text, other commands and verbatim
  (indented) paragraphs dropped, formatting codes resolved, code-like lines dropped."""
  kept = []
  for para in _LINE_BREAKS.sub("\n", text).split("\n\n"):
    if not para.strip() or para[:1] in (" ", "\t"):
      continue
    if para.startswith("="):
      command, _, rest = para.partition(" ")
      if command in ("=head1", "=head2", "=head3", "=head4", "=item"):
        rest = rest.strip()
        if rest not in ("", "*") and not rest.isdigit():
          kept.append(rest.lstrip("* "))
      continue
    kept.append(para)
  return drop_code_lines(_pod_inline("\n\n".join(kept)))
