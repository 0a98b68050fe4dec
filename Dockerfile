# lbbench in a container, for `lbbench k8s render` manifests on a real cluster.
#   docker build -t REGISTRY/lbbench:0.1.0 . && docker push REGISTRY/lbbench:0.1.0
#   lbbench k8s render configs/quickstart.toml -o k8s --image REGISTRY/lbbench:0.1.0
# The entry point is the CLI: `serve pod ...`, `serve proxy ...`, `load ...` (the load Job runs `sh -c`
# around `lbbench load` and `lbbench k8s pack`, so the image keeps the slim base's /bin/sh).
# The build stage has a C compiler: the hand-written C hot paths (setup.py's NATIVE: the forwarder's
# relay, the load client's response scan) are built into the wheel; the runtime image has no compiler.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY lbbench ./lbbench
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
# every dependency ships manylinux wheels for CPython 3.11 (amd64 and arm64): no compiler needed
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin lbbench

WORKDIR /tmp
USER 10001
EXPOSE 8080
ENTRYPOINT ["lbbench"]
CMD ["--help"]
