"""`python -m tools.offline_plots`: the HTML template `dvc plots show` renders with,
with Vega, Vega-Lite and Vega-Embed inlined (from the pip package `vl-convert-python`), so
`dvc_plots/index.html` draws its plots offline. DVC's own page loads them from a CDN.

`.dvc/config` names the template (`[plots] html_template = plots/offline.html`, relative
to `.dvc/`); this module writes it, and rewrites it when the package changes.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE = Path(".dvc/plots/offline.html")  # under the repository root
VEGA_LITE = "v5.21"  # DVC's plot specs are Vega-Lite 5


def template_html(bundle: str) -> str:
    """The page: DVC puts its plots where `{plot_divs}` is, and no `{scripts}` placeholder,
    so DVC's CDN script tags are left out."""
    if "</script" in bundle:
        raise ValueError("the JavaScript bundle holds a closing script tag")
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n{refresh_tag}\n<meta charset="utf-8">\n'
        "<title>DVC plots</title>\n"
        f'<script type="text/javascript">\n{bundle}\n</script>\n'
        "<style>table { border-spacing: 15px; }</style>\n</head>\n"
        "<body>\n{plot_divs}\n</body>\n</html>\n"
    )


def main() -> None:
    import vl_convert

    from src.artifacts import atomic_write_bytes
    from src.config.layout import repo_root

    path = repo_root() / TEMPLATE
    path.parent.mkdir(parents=True, exist_ok=True)
    html = template_html(vl_convert.javascript_bundle(vl_version=VEGA_LITE))
    atomic_write_bytes(path, html.encode())
    print(f"wrote {TEMPLATE} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
