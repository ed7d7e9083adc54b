"""Alembic migrations of the pengi-search schema, the only place where tables are created or changed.

`pengi_search.db.Store.open` upgrades every database it opens to the newest revision. To add a revision after
changing the tables in `pengi_search/db/schema.py`:

    from alembic import command
    from pengi_search.db.migrate import alembic_config
    command.revision(alembic_config("sqlite:////tmp/scratch.db"), message="what changed", autogenerate=True)

then review the generated file in `versions/` (keep the `NNNN_` numbering of revision ids; columns are dropped with
`migrations.columns.drop_columns`; a revision that only adds a nullable column is `nullable_column_added`).
"""
