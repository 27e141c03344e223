"""A node's role in the IVLE cluster: a leaf module, so that the settings
(config.py) know the roles without loading context.py's step and upgrade
types (`db status` needs none of them)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a node is in the IVLE cluster ([node] role), and what a step
    needs of the node that runs it.  A StrEnum: journals, the cluster table
    and the settings keep the plain strings, and a Role equals its string."""

    MASTER = "master"  # PostgreSQL, the user management server, the jail template
    SLAVE = "slave"    # Apache, students' code in their jails
    BOTH = "both"      # one machine is the whole site: runs every step

    @property
    def runs_web(self) -> bool:
        """Does this node serve IVLE's web site (a slave's duties)?"""
        return self in (Role.SLAVE, Role.BOTH)

    @property
    def runs_database(self) -> bool:
        """Does this node keep the database and jail template (a master's duties)?"""
        return self in (Role.MASTER, Role.BOTH)

    def runs(self, step_role: Role | str) -> bool:
        """Does a node of this role run a step declared for STEP_ROLE?"""
        return self is Role.BOTH or self == step_role
