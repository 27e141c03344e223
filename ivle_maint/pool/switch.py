"""Out of the pool and back: the answer changed, then HAProxy watched.

What `ivle-maint pool drain|ready` does, and what a rolling upgrade will
do around each slave's upgrade: the answer file changes first (Apache
answers from it at once), then, with [pool] balancer = haproxy, the wait
until HAProxy reports the change ([pool] drain_timeout).  Before 'ready'
changes anything, IVLE itself must serve a real page carrying this node's
media version (readiness.py): a slave that fails it stays out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..errors import MaintError, UsageError
from ..gates import schema_hold
from ..media.version import current_media_version
from ..roles import Role
from . import answer, haproxy, readiness, watch


@dataclass(frozen=True)
class Switched:
    """What changed: the answer now, its file, and what HAProxy reported when."""

    answer: answer.Answer
    path: Path
    seen: watch.Seen | None  # None: no balancer to ask ([pool] balancer = none)
    ready: readiness.Ready | None = None  # ready: the page that passed; drain: None

    def balancer(self) -> str:
        """What the balancer reported, and when, for a person."""
        if self.seen is None:
            return "no balancer asked ([pool] balancer = none)"
        state = self.seen.state
        return (f"HAProxy reports {state.backend}/{state.server} {state.state} after "
                f"{self.seen.seconds:.1f}s")


def check_role(settings: Settings, action: str) -> None:
    """A master-only node serves no web site: it is in no pool (exit 2)."""
    if settings.role == Role.MASTER:
        raise UsageError(f"pool {action}: this node's [node] role is master: it serves no "
                         "web site, so no balancer sends it anything; run it on a slave")


def timeout(settings: Settings) -> float:
    return float(settings["pool"]["drain_timeout"])


def drain(settings: Settings) -> Switched:
    """Answer 'drain' (404), then wait until HAProxy takes no new sessions here."""
    check_role(settings, "drain")
    at = haproxy.target(settings)  # [pool] checked before anything changes
    answer.write_conf(settings)
    answer.remove(settings)
    seen = watch.drained(at, timeout(settings)) if at is not None else None
    return Switched(answer.Answer(None), answer.answer_path(settings), seen)


def ready(settings: Settings, version: str) -> Switched:
    """Once IVLE serves a real page here (readiness.check), answer 'ready
    VERSION' (200), then wait until HAProxy reports it UP."""
    check_role(settings, "ready")
    at = haproxy.target(settings)
    readiness.ready_url(settings)  # [pool] checked before anything is asked
    hold = schema_hold.holding(settings)
    if hold is not None:  # its web server serves nothing of IVLE's meanwhile
        raise MaintError(f"pool ready: refused: {hold.describe()}; this slave goes back in "
                         "the pool once its upgrade is done", resume=hold.resume)
    media = current_media_version(settings.ivle_conf_dir / "ivle.conf")
    try:
        passed = readiness.check(settings, media)
    except MaintError as exc:
        raise MaintError(f"pool ready: {exc}; this slave stays out of the pool (its "
                         "answer unchanged)") from None
    answer.write_conf(settings)
    path = answer.write_ready(settings, version)
    seen = None
    if at is not None:
        try:
            seen = watch.up(at, timeout(settings))
        except MaintError as exc:
            if answer.conf_enabled(settings):
                raise
            raise MaintError(f"{exc}; Apache does not serve {answer.URL} yet "
                             f"(a2enconf {answer.CONF_NAME}, then reload Apache)") from None
    return Switched(answer.Answer(version), path, seen, passed)
