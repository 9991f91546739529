"""`dvc plots show` draws offline: the template .dvc/config names inlines Vega."""

from __future__ import annotations

import configparser
import re

from src.config.layout import PROJECT_ROOT
from tools.offline_plots import TEMPLATE, template_html


def test_dvc_config_names_the_committed_offline_template():
    config = configparser.ConfigParser()
    config.read(PROJECT_ROOT / ".dvc/config")
    assert config["plots"]["html_template"] == "plots/offline.html"
    assert PROJECT_ROOT / ".dvc" / "plots/offline.html" == PROJECT_ROOT / TEMPLATE
    html = (PROJECT_ROOT / TEMPLATE).read_text()
    assert "{plot_divs}" in html and "{scripts}" not in html  # no CDN script tags
    assert not re.search(r"<script[^>]+src=", html)
    assert "vegaEmbed" in html and len(html) > 500_000  # the libraries themselves


def test_the_template_leaves_out_dvcs_cdn_scripts():
    html = template_html("window.vegaEmbed = function () {};")
    assert html.count("<script") == 1 and "{plot_divs}" in html and "{refresh_tag}" in html
