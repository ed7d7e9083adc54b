"""Alembic migrations of the pengi-search schema, the only place where tables are created or changed.

`pengi_search.store.Store.open` upgrades every database it opens to the newest revision. To add a revision after
changing the models in `pengi_search/store.py`:

    from alembic import command
    from pengi_search.store import alembic_config
    command.revision(alembic_config("sqlite:////tmp/scratch.db"), message="what changed", autogenerate=True)

then review the generated file in `versions/` (keep the `NNNN_` numbering of revision ids).
"""
