"""e4sync.state.rows: a listed item's columns in the ``sessions`` table.

One place turns a source's generic ``Item`` into row values, for the pass (new items and
changed metadata) and for ``reindex`` (rows rebuilt from sidecars).

Must not import: e4sync.sources.e4connect, e4sync.archive, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from e4sync.state.models import NEW
from e4sync.state.models import Session as SessionRow

if TYPE_CHECKING:
    from e4sync.sources import Item


def new_row(account_id: int, item: Item, now: float) -> SessionRow:
    return SessionRow(**new_values(account_id, item, now))


def new_values(account_id: int, item: Item, now: float) -> dict:
    """The columns of an item seen for the first time: due for download now."""
    values = dict(
        account_id=account_id,
        remote_id=item.id,
        state=NEW,
        first_seen_at=now,
        last_seen_at=now,
        attempts=0,
        next_attempt_at=now,
    )
    values.update(metadata_values(item))
    return values


def metadata_values(item: Item) -> dict:
    """The columns that follow the listing: a change of ``version`` is a changed item."""
    return dict(
        recorded_at=item.recorded_at,
        duration=item.duration,
        kind=item.kind[:40],
        remote_json=json.dumps(dict(item.raw), sort_keys=True),
        version=item.version[:200],
    )


def apply_metadata(row: SessionRow, item: Item) -> None:
    for key, value in metadata_values(item).items():
        setattr(row, key, value)
