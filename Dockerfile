# The platform's processes (schema, relay, projection workers, demo) and the sample service.
# Base image pinned by digest (deploy/pin-images.sh renews it); dependencies from the hashed lock.
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code edits do not reinstall them: exactly the locked files, by hash.
COPY requirements/main.lock requirements/main.lock
RUN pip install --require-hashes --no-deps -r requirements/main.lock

# The project itself, built with the locked build backend (nothing else is fetched).
COPY pyproject.toml README.md ./
COPY eventplatform/ eventplatform/
RUN pip install --no-deps --no-build-isolation .

# The sample is loaded from the working directory (module:attribute), not installed.
COPY domain/ domain/
COPY projections/ projections/

RUN useradd --system --uid 10001 eventplatform
USER eventplatform

ENTRYPOINT ["eventplatform"]
CMD ["--help"]
