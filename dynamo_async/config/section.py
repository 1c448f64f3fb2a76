"""Base of every config section (docs/design.md section 9): immutable, keyword-only, unknown keys
rejected. Its own module so that the objective's components can define their sections without
importing the run schema."""

from __future__ import annotations

import msgspec


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every config section: immutable, keyword-only, unknown keys rejected."""
