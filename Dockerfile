# One image for every wsm service (api, workers, trainer). It installs the project the way the
# README does: torch first (a CPU or CUDA build, chosen at build time), then wsm itself.
#   CPU:  docker build -t wsm .
#   GPU:  docker build -t wsm:cuda --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" .
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 wsm
WORKDIR /app

RUN pip install ${TORCH_SPEC}
COPY pyproject.toml README.md ./
COPY theory ./theory
COPY trainer ./trainer
COPY merger ./merger
COPY anneal ./anneal
COPY api ./api
COPY wsm ./wsm
COPY configs ./configs
RUN pip install ".[eval]"

USER wsm
EXPOSE 8000
CMD ["wsm", "--help"]
