"""A sentence-transformers text embedder or a tokenizer named by its hub name: read from the Hugging Face cache without
a word to the hub, downloaded from a hub that answers, and, from one that cannot be reached, refused at once in one
line that says what to do (not a minute and a half of retries, or a wait with no end, before an error)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.utils import close_session

from pengi_search.download import DownloadError
from pengi_search.embedders import HubUnreachableError, SentenceTransformerEmbedder
from pengi_search.errors import EXIT_FAILED
from pengi_search.hub import unanswered
from pengi_search.models import fetch_tokenizer
from pengi_search.testing import tiny_gpt2_tokenizer

from .fake_hub import COMMIT, FakeHub, refusing_hub, silent_hub
from .indexing import make_tiny_sentence_transformer, write_tone

CPU = torch.device("cpu")
OFFLINE_SWITCHES = ["PENGI_SEARCH_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
PROXY_SETTINGS = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"]
SLACK_S = 2.0  # what a loaded two-core machine adds to a request's own timeout
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def hub_at(monkeypatch) -> Iterator[object]:
    """`hub_at(url)` points this process's huggingface_hub at `url` (as HF_ENDPOINT does at its import), with a
    session made afresh, so that proxy settings made in the test apply."""
    close_session()
    yield lambda url: monkeypatch.setattr(constants, "ENDPOINT", url)
    close_session()


def test_a_hub_that_takes_the_connection_and_never_answers_is_given_up_after_the_metadata_timeout(
    hub_at, monkeypatch, no_internet
):
    """huggingface_hub's first request has no timeout at all: the command waited for ever. The check waits
    HF_HUB_ETAG_TIMEOUT, the hub's own bound for a metadata request, and does not retry."""
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    with silent_hub() as url:
        hub_at(url)
        started = time.monotonic()
        reason = unanswered("someone/mini")
    assert time.monotonic() - started < 1 + SLACK_S
    assert reason == f"the hub ({url}) did not answer within 1 s"


def test_a_refused_connection_is_reported_at_once(hub_at, no_internet):
    with refusing_hub() as url:
        hub_at(url)
        started = time.monotonic()
        reason = unanswered("someone/mini", timeout=30)
    assert time.monotonic() - started < SLACK_S
    assert reason is not None and reason.startswith(f"the hub ({url}) could not be reached (") and "refused" in reason


def test_a_name_lookup_that_never_ends_is_given_up_after_the_metadata_timeout(hub_at, monkeypatch, no_internet):
    """The HTTP timeouts do not cover looking up the hub's name: a resolver that never answers held the command for
    ever. Here the lookup is held for 30 s (so that a check without a bound fails rather than hangs)."""
    for name in PROXY_SETTINGS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    released = threading.Event()

    def never_answers(*args: object, **kwargs: object) -> list[object]:
        released.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", never_answers)
    hub_at("http://hub.example.org")
    started = time.monotonic()
    try:
        reason = unanswered("someone/mini", timeout=1)
    finally:
        released.set()  # the check's thread, left waiting, ends now
    assert time.monotonic() - started < 1 + SLACK_S
    assert reason == "the hub (http://hub.example.org) did not answer within 1 s"


def test_the_check_goes_through_the_proxy_and_names_it_without_its_password(hub_at, monkeypatch, no_internet):
    """On a cluster node the hub is reached through a proxy, which is what hangs; the hub's own host is never
    looked up (the no_internet fixture would fail the test)."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with silent_hub() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.replace("://", "://me:secret@"))
        hub_at("http://hub.example.org")
        started = time.monotonic()
        reason = unanswered("someone/mini", timeout=1)
    assert time.monotonic() - started < 1 + SLACK_S
    assert reason == f"the hub (http://hub.example.org, through the proxy {proxy}) did not answer within 1 s"


def test_a_hub_or_proxy_that_answers_it_is_down_counts_as_unreachable(hub_at, no_internet):
    """A 502 or 503 is what huggingface_hub retries with back-off for a minute and a half."""
    with FakeHub(status=502) as hub:
        hub_at(hub.url)
        assert unanswered("someone/mini") == f"the hub ({hub.url}) answered HTTP 502 Bad Gateway"
    assert hub.requests == ["GET /api/models/someone/mini"]  # once: no retry


def test_any_other_answer_means_the_hub_is_there(hub_at, no_internet, tmp_path):
    """A 404 too: the download that follows says what is wrong with the name."""
    with FakeHub({"someone/mini": tmp_path}) as hub:
        hub_at(hub.url)
        assert unanswered("someone/mini") is None and unanswered("someone/other") is None
    assert hub.requests == ["GET /api/models/someone/mini", "GET /api/models/someone/other"]


@pytest.mark.parametrize("switch", OFFLINE_SWITCHES)
def test_offline_mode_refuses_a_model_that_is_not_cached_without_asking_the_hub(monkeypatch, no_internet, switch):
    """Any of the switches: transformers and huggingface_hub take TRANSFORMERS_OFFLINE alone as offline too."""
    for name in OFFLINE_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(switch, "1")
    with pytest.raises(HubUnreachableError) as caught:
        SentenceTransformerEmbedder("someone/not-cached-anywhere", CPU)
    assert str(caught.value) == (
        f"sentence-transformers:someone/not-cached-anywhere: not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
        f" and {switch}=1 forbids downloading it: run 'hf download someone/not-cached-anywhere' where"
        " there is network and copy that cache here, or give the model's folder"
    )


def test_a_tokenizer_fetch_meets_a_hub_that_refuses_with_one_line_at_once(hub_at, tmp_path, no_internet):
    """`model fetch` fetched its tokenizers with a minute and a half of retries (or, from a hub that never answers,
    no end) before an error; it asks the hub once, as a text embedder does."""
    from transformers import AutoTokenizer  # noqa: F401 (imported before the clock starts, as a command has it)

    dest = tmp_path / "tokenizers" / "gpt2"
    with refusing_hub() as url:
        hub_at(url)
        started = time.monotonic()
        with pytest.raises(DownloadError) as caught:
            fetch_tokenizer("someone/tok", dest)
    assert time.monotonic() - started < SLACK_S
    assert caught.value.unreachable and not dest.exists() and not dest.with_name("gpt2.part").exists()
    assert str(caught.value).startswith(
        f"cannot fetch someone/tok to {dest}: cannot fetch tokenizer: it is not in the Hugging Face cache"
        f" ({constants.HF_HUB_CACHE}) and the hub ({url}) could not be reached ("
    )
    assert str(caught.value).endswith(") (--tokenizer-dir gpt2=PATH)")


def hub_env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    """A process's environment with its own Hugging Face cache and home (the agent registry huggingface_hub keeps
    there is never a fresh copy) and hub."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hub"), **extra}
    env |= {"HF_ENDPOINT": endpoint, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])}
    for name in [*OFFLINE_SWITCHES, *PROXY_SETTINGS[:3]]:
        env.pop(name, None)
    return env


def run_python(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=300)


def test_a_command_meets_an_unreachable_hub_with_one_line_and_no_wait(tmp_path, tiny_model_dir):
    """Before: no end at all (a hub that takes the connection and never answers), or, refused, a minute and a half
    of 'Retrying in 8s [Retry 4/5]' warnings before `error: We couldn't connect to ...`."""
    clip = write_tone(tmp_path / "clip.wav", 1.0)
    (labels := tmp_path / "labels.txt").write_text("dog\nrain\n")
    command = [sys.executable, "-m", "pengi_search", "classify", str(clip), "-l", str(labels)]
    command += ["--model", str(tiny_model_dir), "--text-embedder", "sentence-transformers:someone/mini"]
    with silent_hub() as url:
        env = hub_env(tmp_path, url, HF_HUB_ETAG_TIMEOUT="1")
        started = time.monotonic()
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert time.monotonic() - started < 60  # starting Python and torch included
    assert run.returncode == EXIT_FAILED
    assert run.stderr.splitlines() == [
        f"error: sentence-transformers:someone/mini: not in the Hugging Face cache ({tmp_path / 'hub'}) and the hub"
        f" ({url}) did not answer within 1 s: run 'hf download someone/mini' where there is network and copy that"
        " cache here, or give the model's folder; PENGI_SEARCH_OFFLINE=1 skips asking the hub"
    ]


def test_a_hub_that_answers_serves_the_model_and_says_plainly_which_it_does_not_have(tmp_path):
    """The check costs one request; the downloads then run as huggingface_hub does them, its libraries' warnings
    kept off stderr: here sentence-transformers' that it loads without pinning a revision, which a hub (a mirror)
    that leaves the commit out of its API page gets."""
    served = make_tiny_sentence_transformer(tmp_path / "st")
    script = "import torch\nfrom pengi_search.embedders import SentenceTransformerEmbedder as S\n"
    script += "print(S('someone/mini', torch.device('cpu')).embed(['a dog barks']).shape)\n"
    script += "try:\n    S('someone/other', torch.device('cpu'))\n"
    script += "except Exception as err:\n    print(type(err).__name__, err, sep=': ')\n"
    with FakeHub({"someone/mini": served}, pinned=False) as hub:
        run = run_python(script, hub_env(tmp_path, hub.url))
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert run.stdout.splitlines() == [
        "(1, 16)",
        f"TextEmbedderError: sentence-transformers:someone/other: the hub ({hub.url}) has no such model (or it is"
        " private or gated: 'hf auth login' first)",
    ]
    assert hub.requests[0] == "GET /api/models/someone/mini"  # the check, then sentence-transformers' own
    assert (tmp_path / "hub" / "models--someone--mini" / "snapshots" / COMMIT / "model.safetensors").is_file()


def test_a_sentence_transformer_in_the_hugging_face_cache_loads_without_asking_the_hub(tmp_path):
    """Every query asked the hub whether the model changed (seconds per query, a minute of retries offline) and
    drew transformers' progress bar of its weights; and huggingface_hub, building a user agent even for a load from
    the cache, fetched its registry of agents (3 s on each run while the hub does not answer)."""
    snapshot = tmp_path / "hub" / "models--someone--mini" / "snapshots" / "0123abcd"
    shutil.copytree(make_tiny_sentence_transformer(tmp_path / "st"), snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abcd")
    script = "import torch\nfrom pengi_search.embedders import SentenceTransformerEmbedder as S\n"
    script += "print(S('someone/mini', torch.device('cpu')).dim)"
    with FakeHub() as hub:
        run = run_python(script, hub_env(tmp_path, hub.url))
    assert run.returncode == 0 and run.stdout.split() == ["16"], run.stderr
    assert hub.requests == []
    assert "Loading weights" not in run.stderr  # transformers' progress bar, on every query


def test_model_fetch_meets_a_hub_that_never_answers_with_one_line_and_no_wait(tmp_path):
    """Its tokenizers are fetched after the checkpoint (a local file here, which the fetch does not check)."""
    (checkpoint := tmp_path / "base_no_text_enc.pth").write_bytes(b"weights")
    home = tmp_path / "home"
    command = [sys.executable, "-m", "pengi_search", "model", "fetch", "base_no_text_enc", "--url", str(checkpoint)]
    with silent_hub() as url:
        env = hub_env(tmp_path, url, HF_HUB_ETAG_TIMEOUT="1", PENGI_SEARCH_HOME=str(home))
        started = time.monotonic()
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert time.monotonic() - started < 60  # starting Python included
    assert run.returncode == EXIT_FAILED
    dest = home / "models" / "downloads" / "base_no_text_enc" / "tokenizers" / "gpt2"
    assert run.stderr.splitlines() == [
        f"error: cannot fetch gpt2 to {dest}: cannot fetch tokenizer: it is not in the Hugging Face cache"
        f" ({tmp_path / 'hub'}) and the hub ({url}) did not answer within 1 s (--tokenizer-dir gpt2=PATH)"
    ]


def test_a_tokenizer_is_downloaded_from_a_hub_that_answers_then_read_from_the_cache_without_asking_it(tmp_path):
    """A fetch of a tokenizer in the Hugging Face cache asked the hub whether it had changed."""
    tiny_gpt2_tokenizer().save_pretrained(served := tmp_path / "served")
    script = "import sys\nfrom pengi_search.models import fetch_tokenizer\n"
    script += "print(sorted(p.name for p in fetch_tokenizer('someone/tok', sys.argv[1]).iterdir()))\n"
    with FakeHub({"someone/tok": served}) as hub:
        env = hub_env(tmp_path, hub.url)
        first = run_python(script, env, str(tmp_path / "a"))
        downloaded = list(hub.requests)
        hub.requests.clear()
        second = run_python(script, env, str(tmp_path / "b"))
    assert first.returncode == second.returncode == 0 and first.stderr == second.stderr == "", (
        first.stderr + second.stderr
    )
    assert first.stdout == second.stdout and "tokenizer.json" in first.stdout
    assert downloaded[0] == "GET /api/models/someone/tok"  # the check, then transformers' own requests
    assert hub.requests == []
