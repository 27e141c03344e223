"""ivle-maint: automated upgrades of IVLE nodes (master and slaves)."""

__version__ = "0.1.0"
