"""ivle-maint settings: show the effective settings or their documented spec."""

from __future__ import annotations

import argparse
from typing import Any

from . import Context

ORDER = 90


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "settings",
        help="show the effective settings (or --spec: every setting documented)",
        description="Show ivle-maint's effective settings and where ivle.conf is.",
    )
    parser.add_argument("--spec", action="store_true", help="print every setting, documented")
    parser.set_defaults(func=show_settings)


def show_settings(ctx: Context) -> int:
    """Print the settings file in effect, or the documented spec."""
    from ..config import SETTINGS_SPEC

    args: argparse.Namespace = ctx.args
    if args.spec:
        print(SETTINGS_SPEC, end="")
        return 0
    settings = ctx.settings
    print(f"# settings file: {settings.path}")
    print(f"# ivle.conf: {settings.ivle_conf_dir / 'ivle.conf'}")
    for section, values in settings.conf.items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {value}")
    return 0
