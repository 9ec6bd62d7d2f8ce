# The platform's processes (schema, relay, projection workers, demo) and the sample service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code edits do not reinstall them.
COPY pyproject.toml README.md ./
COPY eventplatform/ eventplatform/
RUN pip install .

# The sample is loaded from the working directory (module:attribute), not installed.
COPY domain/ domain/
COPY projections/ projections/

RUN useradd --system --uid 10001 eventplatform
USER eventplatform

ENTRYPOINT ["eventplatform"]
CMD ["--help"]
