# Courier's one image: the API, the workers, beat, the recorder, Flower and the migrate job all run from it.
# The command differs per service (see docker-compose.tasks.yml and docker-compose.prod.yml); the default is the API.

# The front-end packages the API serves itself (/docs, /redoc; app/web_assets.py), installed from
# package-lock.json by npm, their install scripts not run. Only the served directories reach the image.
FROM node:22-slim AS web-assets
WORKDIR /web
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Absolute, so they do not depend on where the installed package sits (app.config anchors relative paths).
    VAR_DIR=/app/var \
    WEB_ASSETS_DIR=/app/node_modules

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN mkdir app && touch app/__init__.py \
    && pip install . \
    && pip uninstall --yes courier \
    && rm -rf app build ./*.egg-info

# The served front-end packages (one line per package of app/web_assets.PACKAGES), at WEB_ASSETS_DIR.
COPY --from=web-assets /web/node_modules/swagger-ui-dist ./node_modules/swagger-ui-dist
COPY --from=web-assets /web/node_modules/redoc/bundles ./node_modules/redoc/bundles
COPY --from=web-assets /web/node_modules/htmx.org/dist ./node_modules/htmx.org/dist
COPY --from=web-assets /web/node_modules/uplot/dist ./node_modules/uplot/dist

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
