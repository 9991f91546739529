"""The report as one self-contained HTML page: the markdown of `reports/report.md` rendered
(markdown-it, CommonMark + tables), every figure inlined as a `data:` URI, the style in
the page. It makes no network request, so it opens the same offline as online.

Raw HTML in the markdown is never passed through (a student's `<img src="https://...">`
would fetch from the network): it is shown as text, and the report's own marker comments
(`<!-- ... -->`) are dropped. An image whose file is not one of `images` (a remote URL,
say) becomes a plain link: nothing is fetched when the page opens.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import PurePosixPath

from markdown_it import MarkdownIt
from markdown_it.token import Token

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 70rem;
       margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #1f2328; }
h1, h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
table { border-collapse: collapse; margin: 1rem 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; }
tr:nth-child(2n) { background: #f6f8fa; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
            background: #f6f8fa; border-radius: 4px; }
code { padding: .1rem .3rem; font-size: 90%; }
pre { padding: .8rem; overflow-x: auto; }
pre code { padding: 0; }
img { max-width: 100%; height: auto; }
blockquote { margin: 1rem 0; padding: 0 1rem; color: #59636e; border-left: .25rem solid #d0d7de; }
"""

COMMENT = re.compile(r"^<!--.*?-->[ \t]*\n?", re.MULTILINE | re.DOTALL)


def data_uri(name: str, content: bytes) -> str:
    mime = MIME.get(PurePosixPath(name).suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"


def _inline_images(tokens: list[Token], images: dict[str, bytes]) -> None:
    """Image tokens: `src` of a known file -> its data URI; anything else -> a link."""
    for token in tokens:
        if token.children:
            _inline_images(token.children, images)
        if token.type != "image":
            continue
        src = str(token.attrGet("src") or "")
        if src in images:
            token.attrSet("src", data_uri(src, images[src]))
            continue
        alt = "".join(child.content for child in token.children or []) or src
        token.type, token.tag, token.nesting, token.children = "text", "", 0, None
        token.content = f"[image not embedded: {alt} ({src})]"
        token.attrs = {}


def render_html(markdown: str, images: dict[str, bytes], title: str) -> str:
    """The page for `markdown`; `images` maps each image path the markdown links (as
    written there, e.g. "report/summary_accuracy.png") to the file's bytes."""
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(COMMENT.sub("", markdown))
    _inline_images(tokens, images)
    body = parser.renderer.render(tokens, parser.options, {})
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}</body>\n</html>\n"
    )
