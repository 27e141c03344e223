"""The media versions chosen for the slaves (ivle_maint_media) are the
database's, which anyone with IVLE's database login may write: a slave
takes the value chosen for its version into its ivle.conf, and IVLE puts
it into the URLs of every page.  The gate (table.media_values) passes only
a value as ivle-maint makes one (letters, digits, `.+~_-`, at most
media.version.VALUE_MAX); any other row is left out, as if never chosen.
Before, `1.1"><script>...` went into every slave's ivle.conf."""

from __future__ import annotations

import re
import secrets
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.cluster import media, table
from ivle_maint.cluster.presence import Presence
from ivle_maint.config import Settings
from ivle_maint.media.version import MEDIA_RECORD, change_media_version
from support.migration_site import Site

SAFE = re.compile(r"[A-Za-z0-9.+~_-]{1,128}")
VALUES = st.sampled_from(['1.1"><script>alert(1)</script>', "../../etc", "1.1\n[database]",
                          "a b", "1.1,2", "#x", "x" * 200, "1.1.r7", "2026a", "_x", "x.",
                          "\u00e9", "1.1'", "1.1\x1b[2J"]) | st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1, max_size=12)


def _fresh(site: Site, value: str) -> Settings:
    settings_ = site.settings()
    conf = site.root / "etc" / "ivle.conf"
    conf.write_text(conf.read_text() + "\n[media]\nversion = 1.0\n")
    (settings_.path_of("state") / MEDIA_RECORD).unlink(missing_ok=True)
    conn = site.connect()
    try:
        table.ensure(conn)
        with conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM {table.MEDIA}")
            cur.execute(f"INSERT INTO {table.MEDIA} (value, version, chosen_by) "
                        "VALUES (%s, '1.1', 'someone')", [value])
    finally:
        conn.close()
    return settings_


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES)
def test_a_media_row_ivle_maint_would_not_write_never_reaches_ivle_conf(
        site: Site, value: str) -> None:
    settings_ = _fresh(site, value)
    upgrade = secrets.token_hex(8)
    presence = Presence(settings_, site.reporter)
    ctx = SimpleNamespace(cluster=presence, settings=settings_, old="1.0", new="1.1",
                          upgrade_id=upgrade, reporter=site.reporter)
    try:
        media.agree(ctx)  # as the media-version step does, then its write
        written = change_media_version(settings_, "1.1", upgrade=upgrade).new
    finally:
        presence.close()
    assert written is not None and SAFE.fullmatch(written), written
    made_here = SAFE.fullmatch(value) and value.strip("._") == value
    assert written == (value if made_here else "1.1"), (value, written)
