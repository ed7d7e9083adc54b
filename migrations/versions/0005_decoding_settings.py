"""Record the settings each generated text was decoded with: `generated_texts.decoding`, e.g. "beam=3 max_len=30
stop=both" (`pengi_search.choices.decoding_settings`).

`--beam`, `--max-len` and `--stop` change the answers as much as the prompts do: a file indexed from an identical one
takes its captions only when they were decoded as the run would decode them. Texts written before this revision have
no record (NULL: not recorded), and are taken as decoded with the run's settings, as every run took them before.
"""

from __future__ import annotations

import sqlalchemy as sa

from migrations.columns import nullable_column_added

revision = "0005"
down_revision = "0004"

upgrade, downgrade = nullable_column_added("generated_texts", "decoding", sa.String(64))
