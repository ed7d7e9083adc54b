#!/usr/bin/env bash
# Wheels for running the project on a lent GPU machine that has no network (Python 3.12, x86-64), in the versions
# installed here, split in two folders because one call may carry at most 64 MiB:
#
#     bash benchmarks/gpu_wheels.sh        # writes .whl/ and .whl2/ (ignored by git through .git/info/exclude)
#
# First call (carry .whl):   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
# Second call, within the 30 s the machine stays warm (carry .whl2):
#     python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl2/*.whl
#     export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1; bash benchmarks/gpu.sh $OUT/gpu.log
# What the machine's image lacks was found by trying: PyAV, FAISS, SQLAlchemy, Alembic, soundfile and its cffi,
# soxr, platformdirs, FastAPI and pydantic's newer parts; its transformers (5.17) is older than the project asks.
# .whl and the working tree together came to 63.7 of the 64 MiB a call may carry: if the tree grows, move a
# few small wheels from the first list to the second.
set -euo pipefail
cd "$(dirname "$0")/.."
for folder in .whl .whl2; do
    grep -qx "/$folder/" .git/info/exclude 2>/dev/null || echo "/$folder/" >>.git/info/exclude
done

version() { python3 -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }

fetch() {  # fetch FOLDER PACKAGE...
    local folder=$1
    shift
    local pins=()
    for name in "$@"; do
        local v
        v=$(version "$name")
        [[ -n $v ]] || { echo "not installed here: $name" >&2; exit 1; }
        pins+=("$name==$v")
    done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$folder" "${pins[@]}"
}

fetch .whl av faiss-cpu sqlalchemy alembic mako soundfile soxr platformdirs fastapi starlette pydantic \
    pydantic-core annotated-doc typing-inspection uvicorn httptools python-multipart opentelemetry-api
fetch .whl2 transformers cffi pycparser annotated-types
du -sh .whl .whl2
