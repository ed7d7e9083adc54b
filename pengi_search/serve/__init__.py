"""`pengi-search serve`: a web page and a JSON API over an indexed library.

- `app`: the FastAPI application (`create_app`, `close_app`), its error answers and security layer;
- `api` and `pages`: the JSON routes under /api/ and the server-rendered pages (templates/, static/);
- `service`: what both do (search, similar, files, describe, classify, stats) over a read-only store;
- `live`: FAISS indexes that follow the database while another process indexes;
- `media`: waveform peaks, spectrograms, cut windows and transcodes, made side by side, a bounded share of the
  server's threads held at once, each for a bounded time (`conversions`: past it, 503 to ask again);
- `uploads`: bounded, checked clips;
- `kept_clips`: uploads' embeddings, kept in a folder the workers share for the next pages of their results;
- `security`: the token rule and which files may be served; `catalog`: read-only queries `Store` lacks;
- `batching`: concurrent queries embedded in one pass; `http_cache`: ETags and Range answers;
- `settings`: what a server is started with; `errors`: a request's failures as HTTP statuses;
- `workers`: several server processes on one socket (`serve --workers`).
"""

from .app import close_app, create_app
from .security import LOOPBACK_NAMES, is_loopback, required_token
from .settings import ServeSettings

__all__ = ["LOOPBACK_NAMES", "ServeSettings", "close_app", "create_app", "is_loopback", "required_token"]
