"""Record how each generated text was made: `generated_texts.mode` is "exact" or the `--fast` mode that wrote it.

`--fast` answers are close to exact mode's but not identical (see pengi_search.fast_mode); a library indexed with it
says so, per text, so that `stats` can tell and a later run can find them. Texts written before this revision have
no mode (NULL: not recorded).
"""

from __future__ import annotations

import sqlalchemy as sa

from migrations.columns import nullable_column_added

revision = "0004"
down_revision = "0003"

upgrade, downgrade = nullable_column_added("generated_texts", "mode", sa.String(32))
