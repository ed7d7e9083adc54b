"""What a server is started with: the library, the model, who may connect, and the limits it keeps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
# The defaults of `serve --max-results` and `--max-offset`: a search answers at most this many results at once, and
# its deepest page starts past this many (a later page costs an exact search of its depth: `search.search_pages`)
MAX_RESULTS = 200
MAX_OFFSET = 1000


@dataclass(frozen=True)
class ServeSettings:
    """Settings of one server (see `pengi-search serve --help` for the user-facing side)."""

    db: str | None = None  # database URL or SQLite file; None: $PENGI_SEARCH_DB or the default
    model: str | None = None  # model name or directory; None: the installed default
    device: str = "auto"
    token: str | None = None  # every request must carry it when set
    allowed_hosts: tuple[str, ...] | None = None  # Host header names accepted (loopback binds); None: any
    roots: tuple[Path, ...] = ()  # real folders audio may be served from; empty: the folder that held each file
    max_upload_bytes: int = 64 * MIB
    max_upload_s: float = 600.0  # longest clip accepted for describe, similar and classify
    max_transcode_s: float = 3600.0  # longest file transcoded whole for the player (windows are always cut)
    transcode_cache_bytes: int = 512 * MIB
    spectrogram_s: float = 600.0  # the spectrogram covers at most the first this many seconds
    check_s: float = 0.5  # how often a search checks the database for new windows
    max_k: int = MAX_RESULTS  # `--max-results`: the largest `k`
    max_offset: int = MAX_OFFSET  # `--max-offset`: the largest `offset`
    batch_size: int | None = None  # windows per batch, as --batch-size; None: the device's default, as there
    beam: int = 3
    max_len: int = 30
    # Where uploads' embeddings are kept for their next pages (`kept_clips`): a folder every worker of the server
    # shares, made by the parent process; None: a temporary folder of the one process's own
    kept_dir: Path | None = None
