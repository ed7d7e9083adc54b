"""Every command's failure modes end with the exit code the README's table documents.

0 ok; 1 the command could not do its work (missing model or library, another index run, a library built by another
model, nothing to remove); 2 bad usage or a bad input file, nothing done (also a path that does not exist, a
contradictory filter, an empty query); 3 the command ran but some audio input could not be decoded, each one
reported, even when it was the only input; 130 interrupted (Ctrl-C), 143 the same on SIGTERM, 129 on SIGHUP; 141
the reader of the output went away (`| head`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.db import Store
from pengi_search.db.run_lock import indexing_lock
from pengi_search.errors import (
    EXIT_FAILED,
    EXIT_HANGUP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT_CLOSED,
    EXIT_PARTIAL,
    EXIT_TERMINATED,
    EXIT_USAGE,
    UsageError,
)

from .indexing import send_to_self, write_tone
from .search_library import caption_library

runner = CliRunner()
QUICK = ("--beam", "2", "--max-len", "3", "--device", "cpu")
README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass(frozen=True)
class Paths:
    db: Path  # a library (captions written directly, real audio vectors)
    model: Path
    other_model: Path  # not the model that built the library
    clip: Path  # a good recording, not in the library
    broken: Path  # a .wav file that is not audio
    sounds: Path  # a folder with good files and an empty one
    labels: Path
    truth: Path  # the labels of the files in `sounds`
    captions: Path  # a caption of a file in `sounds`
    bad_labels: Path  # a label given twice
    long_label: Path  # a label longer than the tiny model's language model can score
    missing: Path  # no such file or library
    linked: Path  # a folder with a good recording and a symbolic link to nothing (gone.wav)
    no_audio: Path  # a folder with a text file only


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_model_dir, tiny_no_text_model_dir) -> Paths:
    base = tmp_path_factory.mktemp("exit-codes")
    caption_library(str(base / "lib.db"), base / "library", tiny_model_dir)
    (base / "broken.wav").write_text("not audio at all\n" * 50)
    write_tone(base / "sounds" / "good.wav", 1.0)
    (base / "sounds" / "empty.wav").write_bytes(b"")
    (base / "labels.txt").write_text("dog\nrain\n")
    (base / "truth.csv").write_text("file,label\nsounds/good.wav,dog\n")
    (base / "captions.csv").write_text("file,caption\nsounds/good.wav,a steady tone\n")
    (base / "bad-labels.txt").write_text("dog\nrain\ndog\n")
    write_tone(base / "linked" / "good.wav", 1.0)
    (base / "linked" / "gone.wav").symlink_to(base / "linked" / "deleted.wav")
    (base / "long-label.txt").write_text("dog\n" + "rain " * 500 + "\n")
    (base / "notes").mkdir()
    (base / "notes" / "readme.txt").write_text("no audio here\n")
    return Paths(
        db=base / "lib.db",
        model=tiny_model_dir,
        other_model=tiny_no_text_model_dir,
        clip=write_tone(base / "clip.wav", 2.0, freq=330),
        broken=base / "broken.wav",
        sounds=base / "sounds",
        labels=base / "labels.txt",
        truth=base / "truth.csv",
        captions=base / "captions.csv",
        bad_labels=base / "bad-labels.txt",
        long_label=base / "long-label.txt",
        missing=base / "missing" / "none.wav",
        linked=base / "linked",
        no_audio=base / "notes",
    )


@contextlib.contextmanager
def another_index_run(p: Paths) -> Iterator[None]:
    with Store.open(p.db) as store, indexing_lock(store):
        yield


@contextlib.contextmanager
def ctrl_c(_p: Paths) -> Iterator[None]:
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pengi_search.search.query_text", interrupted)
        yield


@contextlib.contextmanager
def query_fails(failure: Callable[[], None]) -> Iterator[None]:
    def failing(*_args, **_kwargs):
        failure()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pengi_search.search.query_text", failing)
        yield


def sigterm(_p: Paths) -> contextlib.AbstractContextManager[None]:
    """`kill PID` while the command works."""
    return query_fails(lambda: send_to_self(signal.SIGTERM))


def hang_up(_p: Paths) -> contextlib.AbstractContextManager[None]:
    """The terminal closed (an ssh session dropped) while the command works."""
    return query_fails(lambda: send_to_self(signal.SIGHUP))


def out_of_memory(_p: Paths) -> contextlib.AbstractContextManager[None]:
    def exhausted() -> None:
        raise MemoryError

    return query_fails(exhausted)


def gpu_out_of_memory(_p: Paths) -> contextlib.AbstractContextManager[None]:
    def exhausted() -> None:
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nlong advice follows")

    return query_fails(exhausted)


def broken_pipe(_p: Paths) -> contextlib.AbstractContextManager[None]:
    """A pipe of the command's own breaks (to a decoding process that died, say), not its output's."""

    def broken() -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    return query_fails(broken)


@contextlib.contextmanager
def no_gpu(_p: Paths) -> Iterator[None]:
    """A machine where PyTorch sees no CUDA GPU, whatever this one has."""
    import torch

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        yield


@dataclass(frozen=True)
class Case:
    args: Callable[[Paths], tuple]
    code: int
    says: str  # a fragment of the one-line message (stdout and stderr together)
    during: Callable[[Paths], contextlib.AbstractContextManager[None]] | None = None


def lib(p: Paths) -> tuple:
    return ("--db", p.db, "--model", p.model)


SECRET = "Secret-PW"  # the password in the database URLs below: no message may show it


def closed_port() -> int:
    """A loopback port nothing listens on: a database server that does not answer."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CASES = {
    # 0: it worked
    "query": Case(lambda p: ("query", "a dog barks", *lib(p)), EXIT_OK, "a dog barks"),
    "similar": Case(lambda p: ("similar", p.clip, *lib(p), "--device", "cpu"), EXIT_OK, "score"),
    # 2: bad usage or a bad input file; nothing was done
    "query, empty text": Case(lambda p: ("query", " ", *lib(p)), EXIT_USAGE, "query text is empty"),
    "query --by foo": Case(lambda p: ("query", "x", "--by", "foo", *lib(p)), EXIT_USAGE, "Invalid value for '--by'"),
    "query -k 0": Case(lambda p: ("query", "x", "-k", "0", *lib(p)), EXIT_USAGE, "Invalid value for '--limit'"),
    "query --min-score nan": Case(lambda p: ("query", "x", "--min-score", "nan", *lib(p)), EXIT_USAGE, "finite"),
    "similar --max-duration inf": Case(
        lambda p: ("similar", p.clip, "--max-duration", "inf", *lib(p)), EXIT_USAGE, "--max-duration inf"
    ),
    "query --ext ,": Case(lambda p: ("query", "x", "--ext", ",", *lib(p)), EXIT_USAGE, "names no extension"),
    "query, min > max duration": Case(
        lambda p: ("query", "x", "--min-duration", "10", "--max-duration", "5", *lib(p)),
        EXIT_USAGE,
        "--min-duration 10 is more than --max-duration 5",
    ),
    "similar, no such file": Case(lambda p: ("similar", p.missing, *lib(p)), EXIT_USAGE, "no such file"),
    "similar, a folder with an empty file": Case(lambda p: ("similar", p.sounds, *lib(p)), EXIT_PARTIAL, "empty.wav"),
    "describe, a broken symbolic link": Case(
        lambda p: ("describe", p.linked / "gone.wav", "--model", p.model), EXIT_USAGE, "gone.wav: broken symbolic link"
    ),
    "describe, no such file": Case(lambda p: ("describe", p.missing, "--model", p.model), EXIT_USAGE, "no such file"),
    "describe, no such --model folder": Case(
        lambda p: ("describe", p.clip, "--model", p.missing.parent), EXIT_USAGE, "missing: no such folder"
    ),
    "describe, a folder without audio": Case(
        lambda p: ("describe", p.no_audio, "--model", p.model), EXIT_USAGE, "no audio file in this folder"
    ),
    "describe, a folder with an empty file": Case(
        lambda p: ("describe", p.sounds, "--model", p.model, *QUICK), EXIT_PARTIAL, "empty.wav"
    ),
    "describe, a folder with a broken link": Case(
        lambda p: ("describe", p.linked, "--model", p.model, *QUICK), EXIT_PARTIAL, "gone.wav"
    ),
    "ask, no such file": Case(lambda p: ("ask", p.missing, "what?", "--model", p.model), EXIT_USAGE, "no such file"),
    "ask, no question": Case(lambda p: ("ask", p.clip, "--model", p.model), EXIT_USAGE, "no question after"),
    "ask, no file": Case(
        lambda p: ("ask", "is there speech?", "--model", p.model), EXIT_USAGE, "no audio file before the question"
    ),
    "ask, the question first": Case(
        lambda p: ("ask", "is there speech?", p.clip, "--model", p.model),
        EXIT_USAGE,
        "'is there speech?' is no file or folder, and",
    ),
    "ask, the question between files": Case(
        lambda p: ("ask", p.clip, "is there speech?", p.clip, "--model", p.model),
        EXIT_USAGE,
        "'is there speech?' is no file or folder, and",
    ),
    "ask, nothing": Case(lambda p: ("ask", "--model", p.model), EXIT_USAGE, "give the audio files, then the question"),
    "ask, empty question": Case(
        lambda p: ("ask", p.clip, "  ", "--model", p.model, *QUICK), EXIT_USAGE, "the question is empty"
    ),
    "ask, refused long question": Case(
        lambda p: ("ask", p.clip, "is it " * 60, "--model", p.model, *QUICK, "--long-prompts", "refuse"),
        EXIT_USAGE,
        "prompt longer than",
    ),
    "describe --hop longer than a window": Case(
        lambda p: ("describe", p.clip, "--model", p.model, *QUICK, "--hop", "8"),
        EXIT_USAGE,
        "Invalid value for '--hop'",
    ),
    "describe --max-len past the model's positions": Case(
        lambda p: ("describe", p.clip, "--model", p.model, *QUICK, "--max-len", "1000"),
        EXIT_USAGE,
        "--max-len: 1000 tokens do not fit",
    ),
    "describe, an answer prefix longer than the model": Case(
        lambda p: ("describe", p.clip, "--model", p.model, *QUICK, "--answer-prefix", "a " * 1000),
        EXIT_USAGE,
        "--answer-prefix",
    ),
    "classify --method loglik, a label longer than the model": Case(
        lambda p: ("classify", p.clip, "--labels", p.long_label, "--method", "loglik", "--model", p.model),
        EXIT_USAGE,
        "tokens as an answer",
    ),
    "index --max-len past the model's positions": Case(
        lambda p: (
            "index",
            p.sounds,
            "--db",
            p.sounds.parent / "long.db",
            "--model",
            p.model,
            *QUICK,
            "--max-len",
            "1000",
        ),
        EXIT_USAGE,
        "--max-len: 1000 tokens do not fit",
    ),
    "classify, bad labels file": Case(
        lambda p: ("classify", p.clip, "--labels", p.bad_labels, "--model", p.model), EXIT_USAGE, "line 3"
    ),
    "classify, no labels file": Case(
        lambda p: ("classify", p.clip, "--labels", p.missing, "--model", p.model), EXIT_USAGE, "no such file"
    ),
    "classify, a folder without audio": Case(
        lambda p: ("classify", p.no_audio, "--labels", p.labels, "--model", p.model),
        EXIT_USAGE,
        "no audio file in this folder",
    ),
    "eval classify, a folder without audio": Case(
        lambda p: ("eval", "classify", p.no_audio, "--truth", p.truth, "--model", p.model, "-o", p.missing.parent),
        EXIT_USAGE,
        "no audio file in this folder",
    ),
    "classify, no such target": Case(
        lambda p: ("classify", p.missing, "--labels", p.labels, "--model", p.model), EXIT_USAGE, "no such file"
    ),
    "classify -o into a folder that does not exist": Case(
        lambda p: ("classify", p.sounds, "--labels", p.labels, "--model", p.model, "-o", p.missing / "out.csv"),
        EXIT_USAGE,
        "cannot write the CSV: no folder",
    ),
    "classify -o a folder": Case(
        lambda p: ("classify", p.sounds, "--labels", p.labels, "--model", p.model, "-o", p.sounds),
        EXIT_USAGE,
        "a folder; --output takes the CSV file's name",
    ),
    # A blank prompt (`-p "$UNSET"`) asks nothing, and would name its answers by an empty string
    **{
        f"{name}, a blank prompt": Case(
            lambda p, name=name, args=args: (*name.split(), *args(p)), EXIT_USAGE, "Invalid value for '--prompt'"
        )
        for name, args in {
            "describe": lambda p: (p.clip, "--model", p.model, "-p", ""),
            "index": lambda p: (p.sounds, "--db", p.missing.with_suffix(".db"), "--model", p.model, "--prompt", " "),
            "classify": lambda p: (p.clip, "--labels", p.labels, "--method", "loglik", "--prompt", ""),
            "eval caption": lambda p: (p.truth, "--model", p.model, "-o", p.missing.parent, "-p", ""),
        }.items()
    },
    "export -o a folder": Case(
        lambda p: ("export", "--db", p.db, "-o", p.sounds), EXIT_USAGE, "a folder; --output takes the JSON lines file's"
    ),
    "export -o into a folder that does not exist": Case(
        lambda p: ("export", "--db", p.db, "-o", p.missing), EXIT_USAGE, "cannot write the JSON lines: no folder"
    ),
    "export -o inside a file, named as the file it is": Case(
        lambda p: ("export", "--db", p.db, "-o", p.clip / "x.jsonl"), EXIT_USAGE, "is a file, not a folder"
    ),
    "eval compare -o into a folder that does not exist": Case(
        lambda p: ("eval", "compare", p.truth, p.truth, "-o", p.missing), EXIT_USAGE, "cannot write the Markdown"
    ),
    "eval classify -o a file": Case(  # refused before the files are classified, not after
        lambda p: ("eval", "classify", p.sounds, "--truth", p.truth, "--model", p.model, "-o", p.clip),
        EXIT_USAGE,
        "not a folder; --output takes a folder for the report and its figures",
    ),
    "eval retrieval -o inside a file": Case(
        lambda p: ("eval", "retrieval", p.truth, "--model", p.model, "-o", p.clip / "run"),
        EXIT_USAGE,
        "cannot make this folder: ",
    ),
    "classify, template without {label}": Case(
        lambda p: ("classify", p.clip, "--labels", p.labels, "--template", "a sound", "--model", p.model),
        EXIT_USAGE,
        "no {label} placeholder",
    ),
    "classify --method vote": Case(
        lambda p: ("classify", p.clip, "--labels", p.labels, "--method", "vote"),
        EXIT_USAGE,
        "Invalid value for '--method'",
    ),
    "classify --loglik-score max": Case(
        lambda p: ("classify", p.clip, "--labels", p.labels, "--loglik-score", "max"),
        EXIT_USAGE,
        "Invalid value for '--loglik-score'",
    ),
    "index, no such folder": Case(lambda p: ("index", p.missing, *lib(p)), EXIT_USAGE, "no such file or folder"),
    "index, bad shard": Case(lambda p: ("index", p.sounds, "--shard", "5/2", *lib(p)), EXIT_USAGE, "--shard"),
    "index --index-type lsh": Case(
        lambda p: ("index", p.sounds, "--index-type", "lsh", *lib(p)), EXIT_USAGE, "Invalid value for '--index-type'"
    ),
    "index --ext ,": Case(lambda p: ("index", p.sounds, "--ext", ",", *lib(p)), EXIT_USAGE, "names no extension"),
    "index --fast --recaption-fast": Case(
        lambda p: ("index", p.sounds, "--fast", "--recaption-fast", *lib(p)), EXIT_USAGE, "leave out --fast"
    ),
    "eval, no such captions file": Case(lambda p: ("eval", "retrieval", p.missing), EXIT_USAGE, "no such file"),
    "train, no such config": Case(lambda p: ("train", p.missing), EXIT_USAGE, "none.wav: no such file"),
    "train init, no such labels CSV": Case(
        lambda p: ("train", "init", p.missing, "--audio-root", p.sounds), EXIT_USAGE, "none.wav: no such file"
    ),
    # An empty path (an unset shell variable) is not the current folder: indexing, classifying or forgetting it all.
    **{
        f"{args[0]}, an empty path": Case(lambda p, args=args: (*args, "--model", p.model), EXIT_USAGE, "path is empty")
        for args in (("index", ""), ("similar", ""), ("describe", ""), ("ask", "", "what?"))
    },
    "remove, an empty path": Case(lambda p: ("remove", "", "--db", p.db), EXIT_USAGE, "the path is empty"),
    "classify, an empty path": Case(lambda p: ("classify", "", "--labels", p.labels), EXIT_USAGE, "the path is empty"),
    # `-` is no file here (nothing reads standard input): said so, not as a missing file named `-`.
    "describe, -": Case(
        lambda p: ("describe", "-", "--model", p.model), EXIT_USAGE, "- is no file here (standard input"
    ),
    "classify --labels -": Case(
        lambda p: ("classify", p.clip, "--labels", "-"), EXIT_USAGE, "give a file's path (/dev/stdin or /dev/stdout"
    ),
    "export -o -": Case(lambda p: ("export", "--db", p.db, "-o", "-"), EXIT_USAGE, "- is no file here: give a file"),
    # An empty --db is not the default library, which the script did not name: searched, indexed or emptied.
    **{
        f"{args[0]}, an empty --db": Case(lambda p, args=args: (*args, "--db", ""), EXIT_USAGE, "the library is empty")
        for args in (("query", "x"), ("index", "."), ("remove", "x.wav"), ("stats",), ("eval", "classify", "."))
    },
    "train export, no such checkpoint": Case(
        lambda p: ("train", "export", p.missing), EXIT_USAGE, "no such training checkpoint"
    ),
    "train export, a folder": Case(lambda p: ("train", "export", p.sounds), EXIT_USAGE, "name one of its checkpoint"),
    "unknown command": Case(lambda p: ("search", "x"), EXIT_USAGE, "No such command"),
    "query, a --db that is a folder": Case(  # no library "yet" either: `index` could not make one there
        lambda p: ("query", "x", "--db", p.sounds, "--model", p.model),
        EXIT_USAGE,
        "is a folder, not a database file: point --db or PENGI_SEARCH_DB at a database file",
    ),
    "index, a --db inside a file": Case(
        lambda p: ("index", p.sounds, "--db", p.clip / "lib.db", "--model", p.model),
        EXIT_USAGE,
        "is a file, not a folder: no database can be made at ",
    ),
    # A file that is no database (an audio file given as --db): a wrong argument, named, for every command but doctor
    **{
        f"{name}, a --db that is an audio file": Case(
            lambda p, name=name, args=args: (*name.split(), *args(p), "--db", p.clip),
            EXIT_USAGE,
            "clip.wav is not a SQLite database: point --db or PENGI_SEARCH_DB at a database file",
        )
        for name, args in {
            "query": lambda p: ("x", "--model", p.model),
            "similar": lambda p: (p.clip, "--model", p.model),
            "classify": lambda p: (p.clip, "--labels", p.labels, "--model", p.model),
            "index": lambda p: (p.sounds, "--model", p.model),
            "stats": lambda p: (),
            "export": lambda p: (),
            "remove": lambda p: (p.clip,),
            "rebuild-index": lambda p: (),
            "tune": lambda p: (),
            "serve": lambda p: ("--port", "0"),
            "eval retrieval": lambda p: (p.captions, "--model", p.model, "-o", p.missing.parent),
            "eval caption": lambda p: (p.captions, "--model", p.model, "-o", p.missing.parent),
            "eval classify": lambda p: (p.sounds, "--truth", p.truth, "--model", p.model, "-o", p.missing.parent),
        }.items()
    },
    "index, a folder without audio and no library yet": Case(  # a typo'd folder: no library made from it
        lambda p: ("index", p.no_audio, "--db", p.missing.with_suffix(".db"), "--model", p.model),
        EXIT_USAGE,
        "notes: no audio file in this folder",
    ),
    "serve, an upload limit of infinite MB": Case(
        lambda p: ("serve", "--db", p.db, "--port", "0", "--max-upload-mb", "inf"),
        EXIT_USAGE,
        "Invalid value for '--max-upload-mb': Input should be less than or equal to 1048576",
    ),
    "stats, a database URL whose port is not a number": Case(
        lambda p: ("stats", "--db", f"postgresql+psycopg://me:{SECRET}@127.0.0.1:five/lib"),
        EXIT_USAGE,
        "not a database URL (its port is not a number",
    ),
    "query, a database URL with a mistyped driver": Case(
        lambda p: ("query", "x", "--db", f"postgresql+pyscopg://me:{SECRET}@127.0.0.1/lib", "--model", p.model),
        EXIT_USAGE,
        "no database driver 'postgresql+pyscopg'",
    ),
    "index, a database URL without its colon": Case(  # not a file path: no folder named after it is made
        lambda p: ("index", p.sounds, "--db", f"postgresql+psycopg//me:{SECRET}@127.0.0.1/lib", "--model", p.model),
        EXIT_USAGE,
        "postgresql+psycopg//me:***@127.0.0.1/lib: not a database URL",
    ),
    "stats, a database URL with an unescaped @ in its password": Case(
        lambda p: ("stats", "--db", f"postgresql+psycopg://me:{SECRET}@x@127.0.0.1/lib"),
        EXIT_USAGE,
        "an '@' in the password must be written %40",
    ),
    # --device cuda where there is none: refused as the command line is read, before any work, by every command
    **{
        f"{name} --device cuda, no GPU": Case(
            lambda p, name=name, args=args: (*name.split(), *args(p), "--device", "cuda"),
            EXIT_USAGE,
            "Invalid value for '--device': PyTorch sees no CUDA GPU on this machine; use cpu or auto",
            no_gpu,
        )
        for name, args in {
            "describe": lambda p: (p.clip, "--model", p.model),
            "ask": lambda p: (p.clip, "what?", "--model", p.model),
            "query": lambda p: ("a dog barks", *lib(p)),
            "similar": lambda p: (p.clip, *lib(p)),
            "classify": lambda p: (p.clip, "--labels", p.labels, *lib(p)),
            "index": lambda p: (p.sounds, "--db", p.sounds.parent / "cuda.db", "--model", p.model),
            "serve": lambda p: ("--db", p.db, "--port", "0"),
            "eval retrieval": lambda p: (p.truth, "--model", p.model, "-o", p.missing.parent),
            "eval caption": lambda p: (p.truth, "--model", p.model, "-o", p.missing.parent),
            "eval classify": lambda p: (p.sounds, "--truth", p.truth, "--model", p.model, "-o", p.missing.parent),
        }.items()
    },
    # 1: the command could not do its work
    "query, no library": Case(lambda p: ("query", "x", "--db", p.missing), EXIT_FAILED, "no index here yet"),
    "similar, no library": Case(lambda p: ("similar", p.clip, "--db", p.missing), EXIT_FAILED, "no index here yet"),
    "stats, no library": Case(lambda p: ("stats", "--db", p.missing), EXIT_FAILED, "pengi-search index PATH"),
    "export, no library": Case(lambda p: ("export", "--db", p.missing), EXIT_FAILED, "no index here yet"),
    "remove, no library": Case(lambda p: ("remove", p.clip, "--db", p.missing), EXIT_FAILED, "no index here yet"),
    "rebuild-index, no library": Case(lambda p: ("rebuild-index", "--db", p.missing), EXIT_FAILED, "no index here"),
    "tune, no library": Case(lambda p: ("tune", "--ef-search", "5", "--db", p.missing), EXIT_FAILED, "no index here"),
    "serve, no library": Case(lambda p: ("serve", "--db", p.missing, "--port", "0"), EXIT_FAILED, "no index here"),
    "serve --workers, no library": Case(
        lambda p: ("serve", "--db", p.missing, "--port", "0", "--workers", "2"), EXIT_FAILED, "no index here"
    ),
    "classify, no library": Case(
        lambda p: ("classify", p.clip, "--labels", p.labels, "--db", p.missing, "--model", p.model),
        EXIT_FAILED,
        "no index here yet",
    ),
    "describe, no model": Case(
        lambda p: ("describe", p.clip, "--model", "mine"), EXIT_FAILED, "no Pengi model mine is installed"
    ),
    "index, no model": Case(
        lambda p: ("index", p.sounds, "--db", p.missing.with_suffix(".db"), "--model", "mine"),
        EXIT_FAILED,
        "no Pengi model mine is installed",
    ),
    "index, another run writing": Case(
        lambda p: ("index", p.sounds, *lib(p)),
        EXIT_FAILED,
        "another command is writing to this library",  # its lock held, no run recorded (as a `remove` holds it)
        another_index_run,
    ),
    "query, library of another model": Case(
        lambda p: ("query", "x", "--db", p.db, "--model", p.other_model),
        EXIT_FAILED,
        "give the library's model with --model",
    ),
    "stats, a database server that does not answer": Case(
        lambda p: ("stats", "--db", f"postgresql+psycopg://me:{SECRET}@127.0.0.1:{closed_port()}/lib"),
        EXIT_FAILED,
        "cannot open the database: connection failed",
    ),
    "remove, nothing there": Case(lambda p: ("remove", p.clip, "--db", p.db), EXIT_FAILED, "nothing in the index"),
    # 3: it ran, but audio could not be decoded, even the only input
    "similar, undecodable file": Case(
        lambda p: ("similar", p.broken, *lib(p), "--device", "cpu"), EXIT_PARTIAL, "not a readable audio file"
    ),
    "ask, undecodable file": Case(
        lambda p: ("ask", p.broken, "what?", "--model", p.model, *QUICK), EXIT_PARTIAL, "not a readable audio file"
    ),
    "describe, one undecodable of two": Case(
        lambda p: ("describe", p.clip, p.broken, "--model", p.model, *QUICK), EXIT_PARTIAL, "not a readable audio"
    ),
    "classify, undecodable file": Case(
        lambda p: ("classify", p.broken, "--labels", p.labels, "--model", p.model, *QUICK),
        EXIT_PARTIAL,
        "not a readable audio file",
    ),
    "classify, a folder with a broken link": Case(
        lambda p: ("classify", p.linked, "--labels", p.labels, "--model", p.model, *QUICK),
        EXIT_PARTIAL,
        "gone.wav: broken symbolic link",
    ),
    "index, an empty file": Case(
        lambda p: ("index", p.sounds, "--db", p.sounds.parent / "new.db", "--model", p.model, *QUICK, "--workers", "0"),
        EXIT_PARTIAL,
        "empty file",
    ),
    "query, a pipe of its own broken": Case(lambda p: ("query", "x", *lib(p)), EXIT_FAILED, "Broken pipe", broken_pipe),
    # Memory running out is no bug of the command's: one line, with what to do, not a traceback
    "query, memory runs out": Case(
        lambda p: ("query", "x", *lib(p)), EXIT_FAILED, "error: out of memory: a smaller batch", out_of_memory
    ),
    "query, the GPU's memory runs out": Case(
        lambda p: ("query", "x", *lib(p)),
        EXIT_FAILED,
        "error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB): a smaller batch needs less",
        gpu_out_of_memory,
    ),
    # 130: Ctrl-C; 143: SIGTERM and 129: SIGHUP, which stop a command the same way
    "query, interrupted": Case(lambda p: ("query", "x", *lib(p)), EXIT_INTERRUPTED, "interrupted", ctrl_c),
    "query, terminated": Case(lambda p: ("query", "x", *lib(p)), EXIT_TERMINATED, "interrupted", sigterm),
    "query, hung up": Case(lambda p: ("query", "x", *lib(p)), EXIT_HANGUP, "interrupted", hang_up),
}


@pytest.mark.parametrize("name", CASES)
def test_each_failure_mode_has_its_documented_exit_code(paths, name):
    case = CASES[name]
    with case.during(paths) if case.during else contextlib.nullcontext():
        result = runner.invoke(app, [str(arg) for arg in case.args(paths)])
    output = " ".join(result.output.split())  # Rich wraps long lines
    assert result.exit_code == case.code, f"{name}: {result.output}"
    assert " ".join(case.says.split()) in output, f"{name}: {result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), name  # no traceback
    assert SECRET not in result.output and "(psycopg." not in result.output, name


def test_serve_on_a_port_already_in_use_is_bad_usage(paths):
    """Another program listens on the port: `serve` says so in one line and exits 2, before it loads anything."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", "--db", str(paths.db), "--port", str(port)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"error: 127.0.0.1:{port}: cannot listen there (" in result.output


def _commands_taking(option: str, group: Any, prefix: str = "") -> set[str]:
    """The command lines ("eval classify") of every command under the Click `group` that has `option` (Typer runs
    its own copy of Click: groups are told by their commands)."""
    found = set()
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found |= _commands_taking(option, command, f"{prefix}{name} ")
        elif any(option in param.opts for param in command.params):
            found.add(prefix + name)
    return found


def test_every_command_that_takes_device_is_checked_without_a_gpu():
    checked = {name.removesuffix(" --device cuda, no GPU") for name in CASES if name.endswith("--device cuda, no GPU")}
    assert checked == _commands_taking("--device", typer.main.get_command(app))


def test_every_command_that_takes_db_refuses_a_file_that_is_no_database():
    checked = {name.removesuffix(", a --db that is an audio file") for name in CASES if "a --db that is an" in name}
    # doctor reports it as a problem (its exit code says healthy or not): tests/test_doctor.py
    assert checked | {"doctor"} == _commands_taking("--db", typer.main.get_command(app))


def test_the_engine_refuses_cuda_without_a_gpu_as_the_command_line_does(paths):
    """From Python too (no command line to check it first): bad usage, with the same reason."""
    from pengi_search.inference import Engine

    with no_gpu(paths), pytest.raises(UsageError, match="--device cuda: PyTorch sees no CUDA GPU on this machine"):
        Engine.load(paths.model, "cuda")


def test_the_readme_table_lists_the_codes_the_cases_use():
    section = README.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, flags=re.MULTILINE)}
    # A closed output needs a real pipe: test_a_reader_of_the_output_gone_ends_a_command_quietly_with_141
    assert documented == {case.code for case in CASES.values()} | {EXIT_OUTPUT_CLOSED}


def with_output_closed(*args: object, stream: str = "stdout") -> subprocess.CompletedProcess[bytes]:
    """`pengi-search ARGS | head -1` once head has its line: the command writes to a pipe nobody reads (its stdout,
    or with `stream="stderr"` its stderr, `2>&1 >/dev/null | head -1`); the other stream is kept."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    kept = "stderr" if stream == "stdout" else "stdout"
    try:
        command = [sys.executable, "-m", "pengi_search", *map(str, args)]
        return subprocess.run(command, **{stream: write_end, kept: subprocess.PIPE}, timeout=300)
    finally:
        os.close(write_end)


PIPED = {
    "stats --json": lambda p: ("stats", "--db", p.db, "--json"),
    "export": lambda p: ("export", "--db", p.db),
    "query": lambda p: ("query", "a dog barks", *lib(p)),
    "describe": lambda p: ("describe", p.clip, "--model", p.model, *QUICK),
    "classify, a CSV": lambda p: ("classify", p.db.parent / "library", "-l", p.labels, "-m", p.model, *QUICK),
}


@pytest.mark.parametrize("name", PIPED)
def test_a_reader_of_the_output_gone_ends_a_command_quietly_with_141(paths, name):
    """As `cat`, `grep` and `git` end (so `set -o pipefail` sees it): no message, no traceback."""
    done = with_output_closed(*PIPED[name](paths))
    assert (done.returncode, done.stderr.decode()) == (EXIT_OUTPUT_CLOSED, "")


def test_a_reader_gone_mid_write_ends_a_command_with_141_under_pythonunbuffered(tmp_path, tiny_model_dir):
    """`query ... | head -1` where one write of the output is larger than a pipe holds, and Python's output is
    unbuffered (PYTHONUNBUFFERED=1, as many containers set it): the reader leaves while that write is under way, and
    the rest of it is not silently dropped with exit code 0."""
    long_caption = "a dog barks " * 20_000  # one hit's JSON: far more than a pipe holds (64 KiB)
    library = caption_library(
        str(tmp_path / "lib.db"), tmp_path / "sounds", tiny_model_dir, {"dog.wav": (2.0, [long_caption])}
    )
    args = ("query", "a dog", "--json", "--db", library.db, "--model", tiny_model_dir)
    command = [sys.executable, "-m", "pengi_search", *map(str, args)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as reader:
        assert reader.stdout.readline() == b"[\n"  # the write has begun, and fills the pipe
        reader.stdout.close()
        assert (reader.wait(timeout=300), reader.stderr.read().decode()) == (EXIT_OUTPUT_CLOSED, "")


# A command's output blocked mid-flush in a full pipe, stopped once part of its buffer went out.
_STOPPED_MID_FLUSH = """
import fcntl, os, signal, sys
from pengi_search.cli.closed_output import whole_writes

def stop(*_):
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, stop)
with whole_writes():
    os.write(1, b"f" * fcntl.fcntl(1, fcntl.F_GETPIPE_SZ))  # the pipe is full: the next write waits for the reader
    sys.stdout.write("y" * 6000)  # held by the buffer (8 KiB) until the flush
    print("ready", file=sys.stderr, flush=True)
    try:
        sys.stdout.flush()
    except KeyboardInterrupt:
        pass
"""


def test_output_stopped_mid_write_is_not_written_twice():
    """A stop signal (SIGTERM, Ctrl-C) raised just after the output's descriptor took part of the buffer: those
    bytes count as written, and the buffer's last flush sends only the rest (`index --watch --json` stopped as its
    run's line went out printed that line twice)."""
    command = [sys.executable, "-c", _STOPPED_MID_FLUSH]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        assert child.stderr.readline() == b"ready\n"
        time.sleep(0.5)  # the flush's write waits for room in the pipe
        taken = os.read(child.stdout.fileno(), 4096)  # room for part of it: more than a pipe writes in one piece
        time.sleep(0.5)  # that part is written, the rest waits
        child.send_signal(signal.SIGTERM)
        rest = child.stdout.read()
        assert child.wait(timeout=60) == 0
    output = taken + rest
    assert output.count(b"y") == 6000 and output.rstrip(b"y") == output[: output.index(b"y")]


@pytest.mark.parametrize(
    ("args", "stream"),
    [
        (("query", "--help"), "stdout"),  # a command's help
        (("model", "fetch", "--help"), "stdout"),  # two levels down
        ((), "stdout"),  # no command at all: the help, exit code 2 otherwise
        (("model",), "stdout"),  # a group without its command
        (("query", "x", "--bogus"), "stderr"),  # a mistake the option parser catches
        (("describe", "x.wav", "--beam"), "stderr"),  # one the parser's own error (no context) reports
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else value,
)
def test_help_and_usage_errors_into_a_pipe_nobody_reads_end_quietly_with_141(args, stream):
    """The option parser writes them before any command runs, Typer's help through a console of its own, which
    exited with 1 there."""
    done = with_output_closed(*args, stream=stream)
    kept = done.stderr if stream == "stdout" else done.stdout
    assert (done.returncode, kept.decode()) == (EXIT_OUTPUT_CLOSED, "")


FULL_OUTPUT = {
    **PIPED,
    "a command's help": lambda p: ("query", "--help"),
    "no command at all": lambda p: (),
}


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
@pytest.mark.parametrize("name", FULL_OUTPUT)
def test_an_output_that_cannot_be_written_is_one_line_and_exit_code_1(paths, name, unbuffered):
    """`pengi-search ... > /dev/full` (a full disk): as `cat` says `write error: No space left on device`, no
    traceback, no "Exception ignored" as the interpreter exits (its exit code 120), no `[Errno 28]`."""
    command = [sys.executable, "-m", "pengi_search", *map(str, FULL_OUTPUT[name](paths))]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            command, stdout=full, stderr=subprocess.PIPE, env={**env, "PYTHONUNBUFFERED": unbuffered}, timeout=300
        )
    assert (done.returncode, done.stderr.decode()) == (
        EXIT_FAILED,
        "error: cannot write the output: no space left on device\n",
    )


def test_an_index_run_whose_output_reader_is_gone_is_recorded_as_the_work_it_did(paths, tmp_path):
    """Its summary comes last: the run has indexed everything and recorded itself finished when it finds that
    nobody reads it."""
    db = tmp_path / "new.db"
    done = with_output_closed("index", paths.clip, "--db", db, "--model", paths.model, *QUICK, "--workers", "0")
    assert (done.returncode, done.stderr.decode()) == (EXIT_OUTPUT_CLOSED, "")
    with Store.open(db) as store:
        assert [run.status for run in store.runs()] == ["finished"]
        assert [record.status for record in store.files_under(str(paths.clip))] == ["indexed"]


@pytest.mark.parametrize(
    "args",
    [
        ("query", "x", "--bogus"),  # an unknown option
        ("querz", "x"),  # an unknown command
        ("query", "x", "--by", "nope"),  # a value not among the choices
        ("query", "x", "-k", "0"),  # a value out of range
        ("query",),  # a missing argument
        ("--bogus",),  # an unknown option of the root command
        ("train", "init"),  # a missing argument two levels down
        ("describe", "x.wav", "--beam"),  # an option without its value (the parser's error has no context)
    ],
    ids=" ".join,
)
def test_a_mistake_the_option_parser_catches_is_one_line(args):
    """Like every other error: one line on stderr, saying where the usage is, exit code 2 (Typer would draw a box
    under the usage)."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and line.endswith("--help')") and "Value error" not in line, line


@pytest.mark.parametrize("command", [("describe",), ("similar", "-k", "2"), ("remove",), ("index",)])
def test_a_file_named_like_an_option_is_said_with_how_to_give_it(command, tmp_path, monkeypatch):
    """`describe -take1.wav` reads as the options -t, -a, ...: the error names the file, and the two ways to give it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-take1.wav").touch()
    result = runner.invoke(app, [*command, "-take1.wav"])
    assert result.exit_code == EXIT_USAGE
    [line] = result.stderr.splitlines()
    assert line.startswith("error: No such option: -t; -take1.wav is a file here: give it as ./-take1.wav, or after --")
    (tmp_path / "-take1.wav").unlink()  # an unknown option that names no file: said as before
    assert "is a file here" not in runner.invoke(app, [*command, "-take1.wav"]).stderr


def test_no_command_at_all_shows_the_help():
    result = runner.invoke(app, [])
    assert result.exit_code == EXIT_USAGE and "Usage: pengi-search" in result.output and "error" not in result.output
