# Courier's one image: the API, the workers, beat, the recorder, Flower and the migrate job all run from it.
# The command differs per service (see docker-compose.tasks.yml and docker-compose.prod.yml); the default is the API.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Absolute, so it does not depend on where the installed package sits (app.config anchors relative paths).
    VAR_DIR=/app/var

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN mkdir app && touch app/__init__.py \
    && pip install . \
    && pip uninstall --yes courier \
    && rm -rf app build ./*.egg-info

# Then the project itself; alembic.ini and alembic/ stay in /app for `alembic upgrade head`.
COPY app ./app
COPY alembic ./alembic
COPY alembic.ini ./
RUN pip install --no-deps . && rm -rf build ./*.egg-info

RUN useradd --create-home --uid 10001 --user-group courier \
    && mkdir -p /app/var \
    && chown courier:courier /app/var
USER courier

EXPOSE 8000
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
